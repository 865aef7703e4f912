#include "mount/s3_request.h"

#include <algorithm>

namespace o3mount {

namespace {

bool urlSafe(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) {
    const auto u = static_cast<unsigned char>(c);
    return u > 0x20 && u < 0x7f && c != '"' && c != '<' && c != '>' && c != '\\' && c != '^' && c != '`' && c != '{' &&
           c != '|' && c != '}';
  });
}

// An ETag goes into If-Match only when a quoted header value can hold it as is.
bool quotable(std::string_view etag) {
  return !etag.empty() && std::all_of(etag.begin(), etag.end(), [](char c) {
    const auto u = static_cast<unsigned char>(c);
    return u > 0x20 && u < 0x7f && c != '"';
  });
}

S3Request signedRequest(const Endpoint& endpoint, std::string_view method, std::string path, std::string query,
                        std::vector<Header> headers, const SigV4Signer& signer, std::chrono::system_clock::time_point now) {
  headers.insert(headers.begin(), Header{"host", endpoint.hostHeader});
  signer.sign(method, path, query, headers, now);
  std::string url = endpoint.scheme + "://" + endpoint.authority + path;
  if (!query.empty()) url += "?" + query;
  return S3Request{std::move(url), std::move(headers)};
}

}  // namespace

std::optional<Endpoint> parseEndpoint(std::string_view url, std::string& why) {
  Endpoint e;
  size_t defaultPort = 0;
  if (url.substr(0, 7) == "http://") {
    e.scheme = "http";
    url.remove_prefix(7);
    defaultPort = 80;
  } else if (url.substr(0, 8) == "https://") {
    e.scheme = "https";
    url.remove_prefix(8);
    defaultPort = 443;
  } else {
    why = "the endpoint must start with http:// or https://";
    return std::nullopt;
  }
  if (!urlSafe(url) || url.find_first_of("?#@") != std::string_view::npos) {
    why = "the endpoint must be scheme://host[:port][/path], without user, query or fragment";
    return std::nullopt;
  }
  const size_t slash = url.find('/');
  e.authority = std::string(url.substr(0, slash));
  if (slash != std::string_view::npos) e.pathPrefix = std::string(url.substr(slash));
  while (!e.pathPrefix.empty() && e.pathPrefix.back() == '/') e.pathPrefix.pop_back();
  e.hostHeader = e.authority;
  // The port is what follows the last ':' outside an IPv6 literal's brackets.
  const size_t colon = e.authority.rfind(':');
  const size_t bracket = e.authority.rfind(']');
  const bool hasPort = colon != std::string::npos && (bracket == std::string::npos || colon > bracket);
  e.host = e.authority.substr(0, hasPort ? colon : std::string::npos);
  if (e.host.size() >= 2 && e.host.front() == '[' && e.host.back() == ']') e.host = e.host.substr(1, e.host.size() - 2);
  if (e.host.empty()) {
    why = "the endpoint has no host";
    return std::nullopt;
  }
  if (hasPort) {
    const std::string port = e.authority.substr(colon + 1);
    if (port.empty() || port.size() > 5 || !std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; }) ||
        std::stoul(port) == 0 || std::stoul(port) > 65535) {
      why = "the endpoint's port is not a number from 1 to 65535";
      return std::nullopt;
    }
    if (std::stoul(port) == defaultPort) e.hostHeader = e.authority.substr(0, colon);
  }
  return e;
}

S3Request rangeGet(const Endpoint& endpoint, std::string_view bucket, const ObjectPin& pin, uint64_t first, uint64_t last,
                   const SigV4Signer& signer, std::chrono::system_clock::time_point now) {
  std::vector<Header> headers{{"range", "bytes=" + std::to_string(first) + "-" + std::to_string(last)}};
  if (quotable(pin.etag)) headers.emplace_back("if-match", "\"" + pin.etag + "\"");
  std::string query;
  if (!pin.versionId.empty()) query = "versionId=" + uriEncode(pin.versionId, false);
  return signedRequest(endpoint, "GET", endpoint.pathPrefix + "/" + uriEncode(bucket, false) + "/" + uriEncode(pin.key, true),
                       std::move(query), std::move(headers), signer, now);
}

S3Request headBucket(const Endpoint& endpoint, std::string_view bucket, const SigV4Signer& signer,
                     std::chrono::system_clock::time_point now) {
  return signedRequest(endpoint, "HEAD", endpoint.pathPrefix + "/" + uriEncode(bucket, false), "", {}, signer, now);
}

}  // namespace o3mount
