// A response's status line and headers as the server sent them, parsed strictly and checked
// before any body byte is used: every number a server sends (Content-Length, Content-Range) is
// parsed without overflow and compared with what was asked. Knows nothing of curl: the fetch
// engine feeds it the header lines curl hands over, one at a time.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "mount/error.h"
#include "mount/object_pin.h"

namespace o3mount {

// A decimal number as HTTP sends it: digits only, at most 2^63 - 1 (the largest length libcurl and
// the kernel handle), else nullopt.
std::optional<uint64_t> parseLength(std::string_view s);

// An ETag as a bare value: no surrounding whitespace, no W/ marker, no quotes (lib/o3/etag.ts).
std::string normaliseEtag(std::string_view etag);

struct ContentRange {
  uint64_t first = 0;
  uint64_t last = 0;              // inclusive
  std::optional<uint64_t> total;  // nullopt for "/*"
};

// An HTTP date in IMF-fixdate form, the one HTTP/1.1 servers send ("Sun, 06 Nov 1994 08:49:37
// GMT"), as seconds since the epoch; nullopt for anything else.
std::optional<int64_t> parseHttpDate(std::string_view s);

// "bytes a-b/total" or "bytes a-b/*" with a <= b < total; nullopt for anything else (including the
// "bytes */total" of a 416, which carries no range).
std::optional<ContentRange> parseContentRange(std::string_view s);

// The head of one HTTP response. Header names are matched without case; a header that should appear
// once and appears twice with another value makes the head malformed.
class ResponseHead {
 public:
  // Largest head accepted, status line and headers together (S3 sends well under 2 KiB).
  static constexpr size_t kMaxBytes = 64 * 1024;

  // Adds one line as received, CRLF included. A status line starts the head, or a new one after an
  // interim (1xx) head has ended (curl hands those over too); anywhere else it is an error. Returns
  // false once the head is malformed or over kMaxBytes; `error()` says why.
  bool addLine(std::string_view line);
  // The empty line that ends the head has been seen.
  bool complete() const { return complete_; }
  const std::string& error() const { return error_; }

  int status() const { return status_; }
  const std::optional<uint64_t>& contentLength() const { return contentLength_; }
  const std::optional<ContentRange>& contentRange() const { return contentRange_; }
  bool hasContentRange() const { return hasContentRange_; }
  bool chunked() const { return transferEncoding_; }
  const std::optional<std::string>& etag() const { return etag_; }
  const std::optional<std::string>& versionId() const { return versionId_; }
  // The server's clock (its Date header, the first one that parses), seconds since the epoch.
  const std::optional<int64_t>& date() const { return date_; }

 private:
  bool fail(std::string why);
  bool once(std::optional<std::string>& slot, std::string_view name, std::string_view value);

  size_t bytes_ = 0;
  bool complete_ = false;
  std::string error_;
  int status_ = 0;
  std::optional<uint64_t> contentLength_;
  std::optional<ContentRange> contentRange_;
  bool hasContentRange_ = false;
  bool transferEncoding_ = false;
  std::optional<std::string> etag_;
  std::optional<std::string> versionId_;
  std::optional<int64_t> date_;
  std::optional<std::string> rawLength_, rawRange_;
};

// How the body of a successful response maps onto the range asked for.
struct BodyPlan {
  uint64_t skip = 0;    // body bytes before the first byte asked for (a 200 carries the whole object)
  uint64_t length = 0;  // body bytes to deliver after those
};

// Accepts a 2xx head for bytes [first, last] of the object `pin` names, or says why not:
//  - another ETag or version id than the pin's: Integrity (the object changed; never retried);
//  - anything but a 206 with exactly "bytes first-last/size" and a matching Content-Length, or a 200
//    whose Content-Length is the whole object (the pin's size when known): Stream (retried);
//  - a body without a Content-Length (chunked): Stream.
// On success a version id the pin lacked is recorded in it, and an ETag when the pin had none.
Status acceptRange(const ResponseHead& head, uint64_t first, uint64_t last, ObjectPin& pin, BodyPlan& plan);

// What an error response means (status and the <Code> of its body, "" when none), as
// lib/o3/retry.ts decides it: the kind it fails with and whether another attempt could help.
struct HttpFailure {
  ErrorKind kind;
  bool retry;
};
HttpFailure classifyHttpError(int status, std::string_view code);

// The text of the first <tag>...</tag> in an error body (S3's <Code> and <Message>), "" if none.
std::string xmlElement(std::string_view body, std::string_view tag);

}  // namespace o3mount
