// The response-head parser and the range acceptance rules on what honest and lying servers send:
// lengths past 2^63, signs and spaces in numbers, ranges other than the one asked, a 200 that is or
// is not the whole object, duplicated headers, control bytes, oversized heads, and random bytes
// (under ASan + UBSan: none may read out of bounds or overflow).
#include <random>

#include "mount/response_head.h"
#include "mount/tests/check.h"

using namespace o3mount;

namespace {

ResponseHead parse(std::initializer_list<std::string_view> lines, bool* ok = nullptr) {
  ResponseHead h;
  bool good = true;
  for (auto l : lines) good = h.addLine(l) && good;
  if (ok) *ok = good;
  return h;
}

ObjectPin pin(uint64_t size, std::string etag = "abc", std::string version = "") {
  return ObjectPin{"k", std::move(etag), std::move(version), size};
}

void lengths() {
  O3_CHECK_EQ(parseLength("0").value(), 0u);
  O3_CHECK_EQ(parseLength("9223372036854775807").value(), 9223372036854775807u);
  O3_CHECK(!parseLength("9223372036854775808"));  // 2^63
  O3_CHECK(!parseLength("18446744073709551617"));
  O3_CHECK(!parseLength("99999999999999999999999"));
  O3_CHECK(!parseLength(""));
  O3_CHECK(!parseLength("-1"));
  O3_CHECK(!parseLength("+5"));
  O3_CHECK(!parseLength("1 2"));
  O3_CHECK(!parseLength("0x10"));
  O3_CHECK(!parseLength("12a"));
}

void contentRanges() {
  auto r = parseContentRange("bytes 0-9/100");
  O3_CHECK(r && r->first == 0 && r->last == 9 && r->total == 100u);
  r = parseContentRange("bytes 5-5/*");
  O3_CHECK(r && r->first == 5 && r->last == 5 && !r->total);
  O3_CHECK(!parseContentRange("bytes 9-0/100"));
  O3_CHECK(!parseContentRange("bytes 0-100/100"));
  O3_CHECK(!parseContentRange("bytes */100"));
  O3_CHECK(!parseContentRange("items 0-9/100"));
  O3_CHECK(!parseContentRange("bytes 0-9/"));
  O3_CHECK(!parseContentRange("bytes 0-9/9223372036854775808"));
  O3_CHECK(!parseContentRange("bytes -1-9/100"));
  O3_CHECK(!parseContentRange("bytes 0--9/100"));
  O3_CHECK(!parseContentRange("bytes 0/9-100"));
}

void httpDates() {
  O3_CHECK_EQ(parseHttpDate("Sun, 06 Nov 1994 08:49:37 GMT").value(), int64_t{784111777});  // RFC 9110's example
  O3_CHECK_EQ(parseHttpDate("Thu, 01 Jan 1970 00:00:00 GMT").value(), int64_t{0});
  O3_CHECK_EQ(parseHttpDate(" Sun, 06 Dec 2026 06:10:00 GMT\r\n").value(), int64_t{1796537400});
  O3_CHECK_EQ(parseHttpDate("Wed, 31 Dec 1969 23:59:59 GMT").value(), int64_t{-1});
  for (std::string_view bad : {"", "Sun, 06 Nov 1994 08:49:37 UTC", "Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994",
                               "Sun, 31 Feb 2026 08:49:37 GMT", "Sun, 06 Nox 1994 08:49:37 GMT", "Sun, 06 ovD 1994 08:49:37 GMT",
                               "Sun, 06 Nov 1994 24:00:00 GMT", "Sun, 06 Nov 1994 08:60:00 GMT", "Sun, +6 Nov 1994 08:49:37 GMT",
                               "Sun, 06 Nov 1994 08:49:37 GMTX", "Sun, 06 Nov 199a 08:49:37 GMT"}) {
    O3_CHECK(!parseHttpDate(bad));
  }
  // The first Date that parses is the head's; a malformed one is not an error of the head.
  bool ok = false;
  const ResponseHead h = parse({"HTTP/1.1 403 Forbidden\r\n", "Date: yesterday\r\n", "Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n",
                                "Date: Mon, 07 Nov 1994 08:49:37 GMT\r\n", "\r\n"},
                               &ok);
  O3_CHECK(ok);
  O3_CHECK_EQ(h.date().value(), int64_t{784111777});
}

void etags() {
  O3_CHECK_EQ(normaliseEtag("\"abc\""), std::string("abc"));
  O3_CHECK_EQ(normaliseEtag("W/\"abc\""), std::string("abc"));
  O3_CHECK_EQ(normaliseEtag(" abc "), std::string("abc"));
  O3_CHECK_EQ(normaliseEtag("\""), std::string("\""));
  O3_CHECK_EQ(normaliseEtag(""), std::string(""));
}

void honest206() {
  auto h = parse({"HTTP/1.1 206 Partial Content\r\n", "Content-Length: 10\r\n", "Content-Range: bytes 10-19/100\r\n",
                  "ETag: \"abc\"\r\n", "x-amz-version-id: v1\r\n", "\r\n"});
  O3_CHECK(h.complete());
  ObjectPin p = pin(100);
  BodyPlan plan;
  Status s = acceptRange(h, 10, 19, p, plan);
  O3_CHECK(s);
  O3_CHECK_EQ(plan.skip, 0u);
  O3_CHECK_EQ(plan.length, 10u);
  O3_CHECK_EQ(p.versionId, std::string("v1"));  // learnt
}

void interimHeadForgotten() {
  auto h = parse({"HTTP/1.1 100 Continue\r\n", "\r\n", "HTTP/1.1 206 Partial Content\r\n", "Content-Length: 1\r\n",
                  "Content-Range: bytes 0-0/5\r\n", "ETag: abc\r\n", "\r\n"});
  ObjectPin p = pin(5);
  BodyPlan plan;
  O3_CHECK(acceptRange(h, 0, 0, p, plan));
}

// A status line starts a head only first or after an interim (1xx) head has ended: anywhere else
// it would make the parser forget headers libcurl (which takes it for a header line) has seen.
void statusLineOnlyBetweenHeads() {
  bool ok = true;
  auto inside = parse({"HTTP/1.1 206 x\r\n", "ETag: abd\r\n", "HTTP/1.1 206 x\r\n", "Content-Length: 1\r\n",
                       "Content-Range: bytes 0-0/5\r\n", "ETag: abc\r\n", "\r\n"},
                      &ok);
  O3_CHECK(!ok);
  O3_CHECK_EQ(inside.error(), std::string("a status line inside a head"));
  parse({"HTTP/1.1 206 x\r\n", "Content-Length: 1\r\n", "Content-Range: bytes 0-0/5\r\n", "ETag: abc\r\n", "\r\n",
         "HTTP/1.1 206 x\r\n"},
        &ok);
  O3_CHECK(!ok);  // after the final head
  parse({"HTTP/1.1 100 Continue\r\n", "HTTP/1.1 206 x\r\n"}, &ok);
  O3_CHECK(!ok);  // inside an interim head
}

void lying206() {
  ObjectPin p = pin(100);
  BodyPlan plan;
  auto other =
      parse({"HTTP/1.1 206 x\r\n", "Content-Length: 10\r\n", "Content-Range: bytes 0-9/100\r\n", "ETag: abc\r\n", "\r\n"});
  O3_CHECK_EQ(acceptRange(other, 10, 19, p, plan).kind, ErrorKind::Stream);
  auto badLength =
      parse({"HTTP/1.1 206 x\r\n", "Content-Length: 11\r\n", "Content-Range: bytes 10-19/100\r\n", "ETag: abc\r\n", "\r\n"});
  O3_CHECK_EQ(acceptRange(badLength, 10, 19, p, plan).kind, ErrorKind::Stream);
  auto otherSize =
      parse({"HTTP/1.1 206 x\r\n", "Content-Length: 10\r\n", "Content-Range: bytes 10-19/200\r\n", "ETag: abc\r\n", "\r\n"});
  O3_CHECK_EQ(acceptRange(otherSize, 10, 19, p, plan).kind, ErrorKind::Stream);
  auto star =
      parse({"HTTP/1.1 206 x\r\n", "Content-Length: 10\r\n", "Content-Range: bytes 10-19/*\r\n", "ETag: abc\r\n", "\r\n"});
  O3_CHECK_EQ(acceptRange(star, 10, 19, p, plan).kind, ErrorKind::Stream);
  auto noRange = parse({"HTTP/1.1 206 x\r\n", "Content-Length: 10\r\n", "ETag: abc\r\n", "\r\n"});
  O3_CHECK_EQ(acceptRange(noRange, 10, 19, p, plan).kind, ErrorKind::Stream);
  auto chunked = parse(
      {"HTTP/1.1 206 x\r\n", "Transfer-Encoding: chunked\r\n", "Content-Range: bytes 10-19/100\r\n", "ETag: abc\r\n", "\r\n"});
  O3_CHECK_EQ(acceptRange(chunked, 10, 19, p, plan).kind, ErrorKind::Stream);
  auto noLength = parse({"HTTP/1.1 206 x\r\n", "Content-Range: bytes 10-19/100\r\n", "ETag: abc\r\n", "\r\n"});
  O3_CHECK_EQ(acceptRange(noLength, 10, 19, p, plan).kind, ErrorKind::Stream);
  auto created = parse({"HTTP/1.1 201 x\r\n", "Content-Length: 10\r\n", "ETag: abc\r\n", "\r\n"});
  O3_CHECK_EQ(acceptRange(created, 10, 19, p, plan).kind, ErrorKind::Stream);
}

void whole200() {
  BodyPlan plan;
  ObjectPin p = pin(100);
  auto whole = parse({"HTTP/1.1 200 OK\r\n", "Content-Length: 100\r\n", "ETag: \"abc\"\r\n", "\r\n"});
  O3_CHECK(acceptRange(whole, 10, 19, p, plan));
  O3_CHECK_EQ(plan.skip, 10u);
  O3_CHECK_EQ(plan.length, 10u);
  auto shorter = parse({"HTTP/1.1 200 OK\r\n", "Content-Length: 50\r\n", "ETag: abc\r\n", "\r\n"});
  O3_CHECK_EQ(acceptRange(shorter, 10, 19, p, plan).kind, ErrorKind::Stream);
  auto longer = parse({"HTTP/1.1 200 OK\r\n", "Content-Length: 101\r\n", "ETag: abc\r\n", "\r\n"});
  O3_CHECK_EQ(acceptRange(longer, 10, 19, p, plan).kind, ErrorKind::Stream);
  // Size unknown: a 200 must at least reach the end of the range.
  ObjectPin unknown = pin(0);
  auto reaches = parse({"HTTP/1.1 200 OK\r\n", "Content-Length: 20\r\n", "ETag: abc\r\n", "\r\n"});
  O3_CHECK(acceptRange(reaches, 10, 19, unknown, plan));
  auto falls = parse({"HTTP/1.1 200 OK\r\n", "Content-Length: 19\r\n", "ETag: abc\r\n", "\r\n"});
  O3_CHECK_EQ(acceptRange(falls, 10, 19, unknown, plan).kind, ErrorKind::Stream);
}

void pinChecked() {
  BodyPlan plan;
  ObjectPin p = pin(100, "abc", "v1");
  auto otherEtag =
      parse({"HTTP/1.1 206 x\r\n", "Content-Length: 10\r\n", "Content-Range: bytes 0-9/100\r\n", "ETag: \"abd\"\r\n", "\r\n"});
  O3_CHECK_EQ(acceptRange(otherEtag, 0, 9, p, plan).kind, ErrorKind::Integrity);
  auto noEtag = parse({"HTTP/1.1 206 x\r\n", "Content-Length: 10\r\n", "Content-Range: bytes 0-9/100\r\n", "\r\n"});
  O3_CHECK_EQ(acceptRange(noEtag, 0, 9, p, plan).kind, ErrorKind::Integrity);
  auto otherVersion = parse({"HTTP/1.1 206 x\r\n", "Content-Length: 10\r\n", "Content-Range: bytes 0-9/100\r\n",
                             "ETag: W/\"abc\"\r\n", "x-amz-version-id: v2\r\n", "\r\n"});
  O3_CHECK_EQ(acceptRange(otherVersion, 0, 9, p, plan).kind, ErrorKind::Integrity);
  auto sameVersion = parse({"HTTP/1.1 206 x\r\n", "Content-Length: 10\r\n", "Content-Range: bytes 0-9/100\r\n",
                            "ETag: W/\"abc\"\r\n", "x-amz-version-id: v1\r\n", "\r\n"});
  O3_CHECK(acceptRange(sameVersion, 0, 9, p, plan));
  ObjectPin learn = pin(100, "", "");
  O3_CHECK(acceptRange(sameVersion, 0, 9, learn, plan));
  O3_CHECK_EQ(learn.etag, std::string("abc"));
  O3_CHECK_EQ(learn.versionId, std::string("v1"));
}

void malformedHeads() {
  bool ok = true;
  auto huge = parse({"HTTP/1.1 206 x\r\n", "Content-Length: 9223372036854775808\r\n", "\r\n"}, &ok);
  O3_CHECK(!ok);
  O3_CHECK(!huge.error().empty());
  parse({"HTTP/1.1 206 x\r\n", "Content-Length: 10\r\n", "Content-Length: 11\r\n", "\r\n"}, &ok);
  O3_CHECK(!ok);
  parse({"HTTP/1.1 206 x\r\n", "Content-Length: 10\r\n", "Content-Length: 10\r\n", "\r\n"}, &ok);
  O3_CHECK(ok);  // repeated with the same value is allowed (RFC 9110 8.6)
  parse({"HTTP/1.1 206 x\r\n", "Content-Range: bytes 0-9/100\r\n", "Content-Range: bytes 0-8/100\r\n", "\r\n"}, &ok);
  O3_CHECK(!ok);
  parse({"HTTP/1.1 206 x\r\n", "no colon here\r\n", "\r\n"}, &ok);
  O3_CHECK(!ok);
  parse({"HTTP/1.1 206 x\r\n", "Bad Name: v\r\n", "\r\n"}, &ok);
  O3_CHECK(!ok);
  parse({"HTTP/1.1 206 x\r\n",
         "ETag: a\x01"
         "b\r\n",
         "\r\n"},
        &ok);
  O3_CHECK(!ok);
  parse({"HTTP/1.1 2x6 x\r\n"}, &ok);
  O3_CHECK(!ok);
  parse({"HTTP/1.1\r\n"}, &ok);
  O3_CHECK(!ok);
  parse({"Content-Length: 1\r\n"}, &ok);
  O3_CHECK(!ok);
  parse({"HTTP/1.1 200 x\r\n", " folded\r\n"}, &ok);
  O3_CHECK(!ok);
  ResponseHead big;
  big.addLine("HTTP/1.1 200 OK\r\n");
  const std::string filler = "X-Filler: " + std::string(1000, 'a') + "\r\n";
  bool stillOk = true;
  for (int i = 0; i < 100 && stillOk; i++) stillOk = big.addLine(filler);
  O3_CHECK(!stillOk);
  O3_CHECK(big.error().find("64 KiB") != std::string::npos);
}

void errorClassification() {
  O3_CHECK_EQ(classifyHttpError(404, "NoSuchKey").kind, ErrorKind::NotFound);
  O3_CHECK(!classifyHttpError(404, "").retry);
  O3_CHECK_EQ(classifyHttpError(403, "SignatureDoesNotMatch").kind, ErrorKind::Auth);
  O3_CHECK_EQ(classifyHttpError(400, "AuthorizationHeaderMalformed").kind, ErrorKind::Auth);
  O3_CHECK(!classifyHttpError(403, "AccessDenied").retry);
  O3_CHECK_EQ(classifyHttpError(412, "PreconditionFailed").kind, ErrorKind::Integrity);
  O3_CHECK(!classifyHttpError(412, "").retry);
  O3_CHECK(classifyHttpError(500, "InternalError").retry);
  O3_CHECK(classifyHttpError(503, "").retry);
  O3_CHECK(!classifyHttpError(501, "NotImplemented").retry);
  O3_CHECK(classifyHttpError(429, "").retry);
  O3_CHECK(classifyHttpError(400, "RequestTimeout").retry);
  O3_CHECK(!classifyHttpError(400, "InvalidArgument").retry);
  O3_CHECK_EQ(classifyHttpError(500, "").kind, ErrorKind::Stream);
  O3_CHECK_EQ(xmlElement("<Error><Code>NoSuchKey</Code></Error>", "Code"), std::string("NoSuchKey"));
  O3_CHECK_EQ(xmlElement("<Error><Code>NoSuch", "Code"), std::string(""));
  O3_CHECK_EQ(xmlElement("<Code>a\nb</Code>", "Code"), std::string("a?b"));
}

void randomBytes() {
  // Whatever arrives, the parser answers without touching memory it does not own.
  std::mt19937_64 rng(42);
  const std::string alphabet = "HTTP/1.1 206 Content-Length:Range bytes-/0123456789*\r\n\t \x01\xff";
  for (int round = 0; round < 20000; round++) {
    ResponseHead h;
    const int lines = 1 + static_cast<int>(rng() % 8);
    for (int i = 0; i < lines; i++) {
      std::string line = i == 0 && rng() % 2 ? "HTTP/1.1 " : "";
      const size_t n = rng() % 40;
      for (size_t j = 0; j < n; j++) line += alphabet[rng() % alphabet.size()];
      h.addLine(line);
    }
    ObjectPin p = pin(rng() % 3 ? 100 : 0, "");
    BodyPlan plan;
    if (h.complete() && h.error().empty() && acceptRange(h, 10, 19, p, plan)) {
      O3_CHECK(plan.length == 10);
      O3_CHECK(plan.skip == 0 || plan.skip == 10);
    }
  }
}

}  // namespace

int main() {
  lengths();
  contentRanges();
  httpDates();
  etags();
  honest206();
  interimHeadForgotten();
  statusLineOnlyBetweenHeads();
  lying206();
  whole200();
  pinChecked();
  malformedHeads();
  errorClassification();
  randomBytes();
  return test::finish("response_head_test");
}
