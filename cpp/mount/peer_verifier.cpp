#include "mount/peer_verifier.h"

#include <algorithm>
#include <ctime>
#include <limits>
#include <stdexcept>
#include <vector>

namespace o3mount {

namespace {

// A server's chain longer than this is refused unread: real chains are two to four certificates.
constexpr unsigned kMaxChain = 16;
// How long a verified chain is taken on trust before it is verified again.
constexpr std::chrono::minutes kVerdictLife{5};
// Verdicts remembered at most: an engine talks to one endpoint, so this only bounds a server that
// changes its certificate on every connection.
constexpr size_t kMaxVerdicts = 64;

std::string gnutlsError(int rc) { return gnutls_strerror(rc); }

// The certificates of a chain, freed together.
struct Chain {
  std::vector<gnutls_x509_crt_t> certs;
  ~Chain() {
    for (auto c : certs) gnutls_x509_crt_deinit(c);
  }
};

}  // namespace

PeerVerifier::PeerVerifier(const std::string& caFile) {
  if (int rc = gnutls_x509_trust_list_init(&trust_, 0); rc < 0) throw std::runtime_error("gnutls: " + gnutlsError(rc));
  const int added = caFile.empty()
                        ? gnutls_x509_trust_list_add_system_trust(trust_, 0, 0)
                        : gnutls_x509_trust_list_add_trust_file(trust_, caFile.c_str(), nullptr, GNUTLS_X509_FMT_PEM, 0, 0);
  if (added <= 0) {
    gnutls_x509_trust_list_deinit(trust_, 1);
    trust_ = nullptr;
    const std::string what = caFile.empty() ? "the system's trust store" : caFile;
    throw std::runtime_error(what + (added < 0 ? ": " + gnutlsError(added) : ": no CA certificate in it"));
  }
}

PeerVerifier::~PeerVerifier() {
  if (trust_) gnutls_x509_trust_list_deinit(trust_, 1);
}

std::optional<std::string> PeerVerifier::check(gnutls_session_t session, const std::string& host) {
  if (!session) return "no TLS session";
  if (gnutls_certificate_type_get(session) != GNUTLS_CRT_X509) return "the server's certificate is not X.509";
  unsigned n = 0;
  const gnutls_datum_t* sent = gnutls_certificate_get_peers(session, &n);
  if (!sent || n == 0) return "the server sent no certificate";
  if (n > kMaxChain)
    return "the server sent " + std::to_string(n) + " certificates, more than the " + std::to_string(kMaxChain) +
           " a chain may have";

  std::string key = host;
  key.push_back('\0');
  for (unsigned i = 0; i < n; ++i) {
    unsigned char digest[32];
    size_t length = sizeof digest;
    if (int rc = gnutls_fingerprint(GNUTLS_DIG_SHA256, &sent[i], digest, &length); rc < 0)
      return "cannot digest the server's certificate (" + gnutlsError(rc) + ")";
    if (length != sizeof digest)
      return "cannot digest the server's certificate (a digest of " + std::to_string(length) + " bytes)";
    key.append(reinterpret_cast<const char*>(digest), length);
  }
  const auto now = Clock::now();
  if (auto it = verified_.find(key); it != verified_.end()) {
    if (now < it->second) return std::nullopt;
    verified_.erase(it);
  }

  Chain chain;
  chain.certs.reserve(n);
  time_t expires = std::numeric_limits<time_t>::max();
  for (unsigned i = 0; i < n; ++i) {
    gnutls_x509_crt_t c = nullptr;
    if (int rc = gnutls_x509_crt_init(&c); rc < 0) return "gnutls: " + gnutlsError(rc);
    chain.certs.push_back(c);
    if (int rc = gnutls_x509_crt_import(c, &sent[i], GNUTLS_X509_FMT_DER); rc < 0)
      return "the server's certificate " + std::to_string(i) + " cannot be parsed (" + gnutlsError(rc) + ")";
    expires = std::min(expires, gnutls_x509_crt_get_expiration_time(c));
  }
  gnutls_typed_vdata_st want[2] = {};
  want[0].type = GNUTLS_DT_DNS_HOSTNAME;  // an IP address is matched against the IP addresses it names
  want[0].data = reinterpret_cast<unsigned char*>(const_cast<char*>(host.c_str()));
  want[1].type = GNUTLS_DT_KEY_PURPOSE_OID;
  want[1].data = reinterpret_cast<unsigned char*>(const_cast<char*>(GNUTLS_KP_TLS_WWW_SERVER));
  unsigned status = 0;
  if (int rc = gnutls_x509_trust_list_verify_crt2(trust_, chain.certs.data(), n, want, 2, 0, &status, nullptr); rc < 0)
    return "cannot verify the server's certificate (" + gnutlsError(rc) + ")";
  if (status != 0) {
    gnutls_datum_t text{};
    std::string why = "the server's certificate failed verification";
    if (gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509, &text, 0) == 0) {
      why.assign(reinterpret_cast<const char*>(text.data), text.size);
      gnutls_free(text.data);
      while (!why.empty() && (why.back() == ' ' || why.back() == '.')) why.pop_back();
    }
    return why + " (host " + host + ")";
  }

  const time_t left = expires - std::time(nullptr);
  if (left > 0) {
    if (verified_.size() >= kMaxVerdicts) verified_.clear();
    verified_[std::move(key)] = now + std::min<std::chrono::seconds>(kVerdictLife, std::chrono::seconds(left));
  }
  return std::nullopt;
}

}  // namespace o3mount
