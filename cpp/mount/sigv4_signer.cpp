#include "mount/sigv4_signer.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <algorithm>
#include <ctime>
#include <stdexcept>

namespace o3mount {

namespace {

constexpr char kHex[] = "0123456789abcdef";
constexpr char kHexUpper[] = "0123456789ABCDEF";

std::string toHex(const unsigned char* p, size_t n) {
  std::string out(n * 2, '\0');
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = kHex[p[i] >> 4];
    out[2 * i + 1] = kHex[p[i] & 15];
  }
  return out;
}

std::string hmac(std::string_view key, std::string_view data) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (!HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(data.data()),
            data.size(), out, &len)) {
    throw std::runtime_error("HMAC-SHA256 failed in libcrypto");
  }
  return std::string(reinterpret_cast<char*>(out), len);
}

bool unreserved(unsigned char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' ||
         c == '~';
}

// Header values as the SDK canonicalises them: trimmed, every run of whitespace one space.
std::string canonicalValue(std::string_view v) {
  std::string out;
  bool space = false;
  for (char c : v) {
    if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
      space = true;
      continue;
    }
    if (space && !out.empty()) out += ' ';
    space = false;
    out += c;
  }
  return out;
}

}  // namespace

std::string uriEncode(std::string_view s, bool keepSlash) {
  std::string out;
  out.reserve(s.size() * 3);
  for (unsigned char c : s) {
    if (unreserved(c) || (keepSlash && c == '/')) {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHexUpper[c >> 4];
      out += kHexUpper[c & 15];
    }
  }
  return out;
}

std::string sha256Hex(std::string_view data) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (!EVP_Digest(data.data(), data.size(), out, &len, EVP_sha256(), nullptr)) {
    throw std::runtime_error("SHA-256 failed in libcrypto");
  }
  return toHex(out, len);
}

SigV4Signer::SigV4Signer(Credentials credentials, std::string region, std::string service)
    : credentials_(std::move(credentials)), region_(std::move(region)), service_(std::move(service)) {}

SigV4Signer::Keys SigV4Signer::keysFor(const std::string& date) const {
  std::lock_guard lock(mutex_);
  if (keyDate_ != date) {
    std::string k = hmac("AWS4" + credentials_.secretAccessKey, date);
    k = hmac(k, region_);
    k = hmac(k, service_);
    key_ = hmac(k, "aws4_request");
    keyDate_ = date;
  }
  return {credentials_.accessKeyId, credentials_.sessionToken, key_};
}

void SigV4Signer::setCredentials(Credentials credentials) {
  std::lock_guard lock(mutex_);
  credentials_ = std::move(credentials);
  keyDate_.clear();
}

void SigV4Signer::sign(std::string_view method, std::string_view path, std::string_view query, std::vector<Header>& headers,
                       std::chrono::system_clock::time_point now) const {
  const std::time_t t = std::chrono::system_clock::to_time_t(now);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char stamp[17];
  std::strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%SZ", &tm);
  const std::string amzDate(stamp);
  const std::string date = amzDate.substr(0, 8);
  const Keys keys = keysFor(date);

  headers.emplace_back("x-amz-content-sha256", std::string(kEmptyBodySha256));
  headers.emplace_back("x-amz-date", amzDate);
  if (!keys.sessionToken.empty()) headers.emplace_back("x-amz-security-token", keys.sessionToken);

  std::vector<const Header*> sorted;
  sorted.reserve(headers.size());
  for (const Header& h : headers) sorted.push_back(&h);
  std::sort(sorted.begin(), sorted.end(), [](const Header* a, const Header* b) { return a->first < b->first; });

  std::string canonical;
  canonical.reserve(512);
  canonical.append(method).append("\n").append(path).append("\n").append(query).append("\n");
  std::string signedHeaders;
  for (const Header* h : sorted) {
    canonical.append(h->first).append(":").append(canonicalValue(h->second)).append("\n");
    if (!signedHeaders.empty()) signedHeaders += ';';
    signedHeaders += h->first;
  }
  canonical.append("\n").append(signedHeaders).append("\n").append(kEmptyBodySha256);

  const std::string scope = date + "/" + region_ + "/" + service_ + "/aws4_request";
  const std::string toSign = "AWS4-HMAC-SHA256\n" + amzDate + "\n" + scope + "\n" + sha256Hex(canonical);
  const std::string sig = hmac(keys.signingKey, toSign);
  headers.emplace_back("authorization",
                       "AWS4-HMAC-SHA256 Credential=" + keys.accessKeyId + "/" + scope + ", SignedHeaders=" + signedHeaders +
                           ", Signature=" + toHex(reinterpret_cast<const unsigned char*>(sig.data()), sig.size()));
}

}  // namespace o3mount
