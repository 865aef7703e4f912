// The requests the fetch engine sends, built and signed in one place: path-style URLs
// (<endpoint path>/<bucket>/<key>, every byte of bucket and key but the unreserved ones and the
// key's '/' percent-encoded, as S3 signs them), the Host header the signature covers, Range,
// If-Match and versionId from the object's pin. Kept apart from the engine so that the SigV4 test
// tool signs exactly what the engine sends.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "mount/object_pin.h"
#include "mount/sigv4_signer.h"

namespace o3mount {

struct Endpoint {
  std::string scheme;      // "http" or "https"
  std::string authority;   // host[:port] as written in the URL
  std::string host;        // the host alone: no port, an IPv6 literal without its brackets
  std::string hostHeader;  // the Host header: the authority without a default port (80, 443)
  std::string pathPrefix;  // "" or "/some/prefix", without a trailing slash
};

// "http://127.0.0.1:8080", "https://o3-rc2.akave.xyz", "https://host/prefix/". nullopt for
// anything else (another scheme, user info, a query, bytes a URL cannot hold), with `why` set.
std::optional<Endpoint> parseEndpoint(std::string_view url, std::string& why);

struct S3Request {
  std::string url;
  std::vector<Header> headers;  // names in lower case; authorization included
};

// A signed GET of bytes [first, last] of the object `pin` names in `bucket`, with If-Match (the
// quoted ETag, when the pin has one that a header can carry) and ?versionId= (when known).
S3Request rangeGet(const Endpoint& endpoint, std::string_view bucket, const ObjectPin& pin, uint64_t first, uint64_t last,
                   const SigV4Signer& signer, std::chrono::system_clock::time_point now);

// A signed HEAD of the bucket: the smallest request that leaves a warm keep-alive connection.
S3Request headBucket(const Endpoint& endpoint, std::string_view bucket, const SigV4Signer& signer,
                     std::chrono::system_clock::time_point now);

}  // namespace o3mount
