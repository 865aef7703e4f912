#include "mount/response_head.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <chrono>

namespace o3mount {

namespace {

constexpr uint64_t kMaxLength = (uint64_t{1} << 63) - 1;

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '\n')) s.remove_suffix(1);
  return s;
}

bool equalsNoCase(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
         });
}

bool isTokenChar(unsigned char c) {
  // RFC 9110 tchar
  return std::isalnum(c) || std::string_view("!#$%&'*+-.^_`|~").find(static_cast<char>(c)) != std::string_view::npos;
}

// Printable ASCII and tabs only: no control bytes, nothing past 0x7e in a header we act on.
bool isPlainValue(std::string_view v) {
  return std::all_of(v.begin(), v.end(), [](char c) {
    const auto u = static_cast<unsigned char>(c);
    return u == '\t' || (u >= 0x20 && u < 0x7f);
  });
}

const std::array<std::string_view, 9> kAuthCodes = {
    "InvalidAccessKeyId",           "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken",
    "AuthorizationHeaderMalformed", "InvalidClientTokenId",  "Forbidden",    "Unauthorized"};
const std::array<std::string_view, 4> kNotFoundCodes = {"NoSuchKey", "NoSuchBucket", "NotFound", "NoSuchUpload"};

template <size_t N>
bool among(const std::array<std::string_view, N>& set, std::string_view code) {
  return std::find(set.begin(), set.end(), code) != set.end();
}

}  // namespace

std::optional<uint64_t> parseLength(std::string_view s) {
  if (s.empty() || s.size() > 19) return std::nullopt;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    const auto d = static_cast<uint64_t>(c - '0');
    if (v > (kMaxLength - d) / 10) return std::nullopt;
    v = v * 10 + d;
  }
  return v;
}

std::string normaliseEtag(std::string_view etag) {
  std::string_view s = trim(etag);
  if (s.size() >= 2 && (s[0] == 'W' || s[0] == 'w') && s[1] == '/') s.remove_prefix(2);
  if (s.size() >= 2 && s.front() == '"' && s.back() == '"') s = s.substr(1, s.size() - 2);
  return std::string(s);
}

std::optional<int64_t> parseHttpDate(std::string_view s) {
  s = trim(s);
  if (s.size() != 29 || s.substr(3, 2) != ", " || s[7] != ' ' || s[11] != ' ' || s[16] != ' ' || s[19] != ':' || s[22] != ':' ||
      s.substr(25) != " GMT") {
    return std::nullopt;
  }
  const auto number = [&s](size_t at, size_t n) { return parseLength(s.substr(at, n)); };
  static constexpr std::string_view kMonths = "JanFebMarAprMayJunJulAugSepOctNovDec";
  const size_t month = kMonths.find(s.substr(8, 3));
  const auto day = number(5, 2), year = number(12, 4), hour = number(17, 2), minute = number(20, 2), second = number(23, 2);
  if (month == std::string_view::npos || month % 3 != 0 || !day || !year || !hour || !minute || !second || *hour > 23 ||
      *minute > 59 || *second > 60) {
    return std::nullopt;
  }
  const std::chrono::year_month_day date{std::chrono::year{static_cast<int>(*year)},
                                         std::chrono::month{static_cast<unsigned>(month / 3 + 1)},
                                         std::chrono::day{static_cast<unsigned>(*day)}};
  if (!date.ok()) return std::nullopt;
  const int64_t days = std::chrono::sys_days{date}.time_since_epoch().count();
  return days * 86'400 + static_cast<int64_t>(*hour * 3'600 + *minute * 60 + *second);
}

std::optional<ContentRange> parseContentRange(std::string_view s) {
  s = trim(s);
  if (s.substr(0, 6) != "bytes ") return std::nullopt;
  s.remove_prefix(6);
  const size_t dash = s.find('-');
  const size_t slash = s.find('/');
  if (dash == std::string_view::npos || slash == std::string_view::npos || dash > slash) return std::nullopt;
  const auto first = parseLength(s.substr(0, dash));
  const auto last = parseLength(s.substr(dash + 1, slash - dash - 1));
  if (!first || !last || *first > *last) return std::nullopt;
  ContentRange r{*first, *last, std::nullopt};
  const std::string_view total = s.substr(slash + 1);
  if (total != "*") {
    r.total = parseLength(total);
    if (!r.total || *last >= *r.total) return std::nullopt;
  }
  return r;
}

bool ResponseHead::fail(std::string why) {
  if (error_.empty()) error_ = std::move(why);
  return false;
}

bool ResponseHead::once(std::optional<std::string>& slot, std::string_view name, std::string_view value) {
  if (slot && *slot != value) return fail("two different " + std::string(name) + " headers");
  slot = std::string(value);
  return true;
}

bool ResponseHead::addLine(std::string_view line) {
  if (!error_.empty()) return false;
  if (line.substr(0, 5) == "HTTP/") {
    if (status_ != 0 && !(complete_ && status_ < 200)) return fail("a status line inside a head");
    // A new head: an interim 1xx before it is forgotten, its size still counts.
    const size_t counted = bytes_ + line.size();
    *this = ResponseHead();
    bytes_ = counted;
    if (bytes_ > kMaxBytes) return fail("response head over 64 KiB");
    const size_t sp = line.find(' ');
    if (sp == std::string_view::npos || line.size() < sp + 4) return fail("malformed status line");
    const std::string_view code = line.substr(sp + 1, 3);
    if (!std::all_of(code.begin(), code.end(), [](char c) { return c >= '0' && c <= '9'; }) ||
        (line.size() > sp + 4 && line[sp + 4] != ' ' && line[sp + 4] != '\r' && line[sp + 4] != '\n')) {
      return fail("malformed status line");
    }
    status_ = (code[0] - '0') * 100 + (code[1] - '0') * 10 + (code[2] - '0');
    if (status_ < 100) return fail("malformed status line");
    return true;
  }
  bytes_ += line.size();
  if (bytes_ > kMaxBytes) return fail("response head over 64 KiB");
  if (status_ == 0) return fail("header before the status line");
  if (complete_) return fail("header after the end of the head");
  const std::string_view body = trim(line);
  if (body.empty()) {
    complete_ = true;
    if (rawLength_) {
      contentLength_ = parseLength(*rawLength_);
      if (!contentLength_) return fail("Content-Length \"" + rawLength_->substr(0, 40) + "\" is not a length");
    }
    if (rawRange_) {
      hasContentRange_ = true;
      contentRange_ = parseContentRange(*rawRange_);
    }
    return true;
  }
  if (line.front() == ' ' || line.front() == '\t') return fail("folded header line");
  const size_t colon = body.find(':');
  if (colon == std::string_view::npos || colon == 0) return fail("header line without a name");
  const std::string_view name = body.substr(0, colon);
  if (!std::all_of(name.begin(), name.end(), [](char c) { return isTokenChar(static_cast<unsigned char>(c)); })) {
    return fail("header name with bytes a name cannot hold");
  }
  const std::string_view value = trim(body.substr(colon + 1));
  const bool plain = isPlainValue(value);
  if (equalsNoCase(name, "content-length")) {
    if (!plain) return fail("Content-Length with control bytes");
    return once(rawLength_, "Content-Length", value);
  }
  if (equalsNoCase(name, "content-range")) {
    if (!plain) return fail("Content-Range with control bytes");
    return once(rawRange_, "Content-Range", value);
  }
  if (equalsNoCase(name, "transfer-encoding")) {
    transferEncoding_ = true;
    return true;
  }
  if (equalsNoCase(name, "etag")) {
    if (!plain) return fail("ETag with control bytes");
    return once(etag_, "ETag", value);
  }
  if (equalsNoCase(name, "date")) {
    if (!date_) date_ = parseHttpDate(value);
    return true;
  }
  if (equalsNoCase(name, "x-amz-version-id")) {
    if (!plain) return fail("x-amz-version-id with control bytes");
    return once(versionId_, "x-amz-version-id", value);
  }
  return true;
}

Status acceptRange(const ResponseHead& head, uint64_t first, uint64_t last, ObjectPin& pin, BodyPlan& plan) {
  const std::string etag = head.etag() ? normaliseEtag(*head.etag()) : std::string();
  if (!pin.etag.empty() && etag != pin.etag) {
    return Status::error(ErrorKind::Integrity, "the object changed while it was being read (ETag " +
                                                   (etag.empty() ? "none" : etag) + ", expected " + pin.etag + ")");
  }
  const std::string version = head.versionId().value_or("");
  if (!pin.versionId.empty() && !version.empty() && version != pin.versionId) {
    return Status::error(ErrorKind::Integrity,
                         "the object changed while it was being read (version " + version + ", expected " + pin.versionId + ")");
  }
  if (head.chunked()) return Status::error(ErrorKind::Stream, "a chunked body where a Content-Length was expected");
  if (!head.contentLength()) return Status::error(ErrorKind::Stream, "a body without a Content-Length");
  const uint64_t length = *head.contentLength();
  const uint64_t asked = last - first + 1;
  if (head.status() == 206) {
    const auto& range = head.contentRange();
    if (!range || range->first != first || range->last != last || !range->total) {
      return Status::error(ErrorKind::Stream,
                           "a 206 for another range than bytes=" + std::to_string(first) + "-" + std::to_string(last));
    }
    if (pin.size != 0 && *range->total != pin.size) {
      return Status::error(ErrorKind::Stream,
                           "a 206 for an object of " + std::to_string(*range->total) + " bytes, not " + std::to_string(pin.size));
    }
    if (length != asked) {
      return Status::error(ErrorKind::Stream, "a 206 whose Content-Length " + std::to_string(length) + " is not its range's " +
                                                  std::to_string(asked) + " bytes");
    }
    plan = {0, asked};
  } else if (head.status() == 200) {
    // The whole object: its length must be the pin's size, or at least reach the range when unknown.
    if (head.hasContentRange() || (pin.size != 0 ? length != pin.size : length <= last)) {
      return Status::error(ErrorKind::Stream, "a 200 whose body of " + std::to_string(length) + " bytes is not the whole object");
    }
    plan = {first, asked};
  } else {
    return Status::error(ErrorKind::Stream, "an unexpected HTTP " + std::to_string(head.status()) + " to a ranged GET");
  }
  if (pin.etag.empty()) pin.etag = etag;
  if (pin.versionId.empty()) pin.versionId = version;
  return Status::ok();
}

HttpFailure classifyHttpError(int status, std::string_view code) {
  // As lib/o3/retry.ts: a server that answered has said what it meant; only throttling, 5xx other
  // than 501 (a feature it lacks) and request timeouts are worth another attempt.
  const bool retry = status == 429 || (status >= 500 && status != 501) || code == "RequestTimeout" || code == "SlowDown";
  if (among(kAuthCodes, code) || status == 401 || status == 403) return {ErrorKind::Auth, retry};
  if (among(kNotFoundCodes, code) || status == 404) return {ErrorKind::NotFound, retry};
  // 416: the pinned object is shorter than the range; 412: If-Match failed. Either way the object is
  // not the one pinned.
  if (code == "InvalidRange" || status == 416 || code == "PreconditionFailed" || status == 412)
    return {ErrorKind::Integrity, retry};
  return {ErrorKind::Stream, retry};
}

std::string xmlElement(std::string_view body, std::string_view tag) {
  std::string open = "<", close = "</";
  open.append(tag).append(">");
  close.append(tag).append(">");
  const size_t a = body.find(open);
  if (a == std::string_view::npos) return "";
  const size_t from = a + open.size();
  const size_t b = body.find(close, from);
  if (b == std::string_view::npos) return "";
  std::string out(body.substr(from, std::min<size_t>(b - from, 256)));
  // Only what a log line can carry.
  for (char& c : out)
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) c = '?';
  return out;
}

}  // namespace o3mount
