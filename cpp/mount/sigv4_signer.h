// AWS Signature Version 4 for S3 requests, computed here rather than by libcurl: Debian's curl 7.88
// --aws-sigv4 is refused by Swift's s3api (no x-amz-content-sha256; a signature mismatch with it).
// The result matches @smithy/signature-v4 configured for S3 (uriEscapePath off:
// S3 signs the path exactly as sent); test/native-sigv4.test.ts checks that on fixed inputs.
#pragma once

#include <chrono>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mount/credentials.h"

namespace o3mount {

// One request header: the name in lower case, the value as sent.
using Header = std::pair<std::string, std::string>;

// x-amz-content-sha256 of a request without a body (every GET and HEAD).
inline constexpr std::string_view kEmptyBodySha256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

// S3's UriEncode: every byte except A-Z a-z 0-9 - . _ ~ (and '/' when keepSlash) as %XX, upper-case
// hex. Applied to bucket and key it gives both the path sent and the canonical URI signed.
std::string uriEncode(std::string_view s, bool keepSlash);

// Lower-case hex of the SHA-256 of `data`.
std::string sha256Hex(std::string_view data);

class SigV4Signer {
 public:
  SigV4Signer(Credentials credentials, std::string region, std::string service = "s3");

  // Signs a request without a body. `path` is the URI-encoded path as sent (the canonical URI),
  // `query` the canonical query string (names and values URI-encoded, sorted by name; "" for
  // none), `headers` the headers to sign, names in lower case, host among them. Appends
  // x-amz-content-sha256, x-amz-date, x-amz-security-token (with a session token) and
  // authorization to `headers`. Thread-safe.
  void sign(std::string_view method, std::string_view path, std::string_view query, std::vector<Header>& headers,
            std::chrono::system_clock::time_point now) const;
  // Requests signed from now on use `credentials` (temporary ones, refreshed before they expire).
  // Thread-safe: a request is signed wholly with the old keys or wholly with the new.
  void setCredentials(Credentials credentials);

 private:
  // What one signature needs, taken together under the lock.
  struct Keys {
    std::string accessKeyId;
    std::string sessionToken;
    std::string signingKey;
  };
  // The HMAC chain of the secret over date/region/service is the same all day: derived once per
  // date (and per credentials).
  Keys keysFor(const std::string& date) const;

  Credentials credentials_;
  std::string region_;
  std::string service_;
  mutable std::mutex mutex_;
  mutable std::string keyDate_;
  mutable std::string key_;
};

}  // namespace o3mount
