// The check of an HTTPS server's certificate chain, against one trust list parsed once for the
// engine. libcurl's GnuTLS backend (7.88) has no CA cache: with its own check on, it parses every
// trusted CA again for each connection and keeps them for the connection's life (Debian's 144 CAs
// cost about 3 MiB a connection, 100 MiB for a mount's 32). So the engine turns libcurl's chain
// check off and checks each transfer's TLS session here, before any request is sent on it, failing
// closed: no session, no certificate or an unverifiable one, and the request does not go.
//
// A chain once verified for a host is remembered by its digest for a few minutes, so kept-alive
// connections do not pay for a chain verification on every request; the remembered verdict is
// never older than the certificates' own validity.
#pragma once

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <string>

namespace o3mount {

class PeerVerifier {
 public:
  // Trusts the CAs of the PEM file `caFile`, or the system's trust store where it is empty. Throws
  // std::runtime_error naming the file when no CA could be read from it.
  explicit PeerVerifier(const std::string& caFile);
  ~PeerVerifier();
  PeerVerifier(const PeerVerifier&) = delete;
  PeerVerifier& operator=(const PeerVerifier&) = delete;

  // Why the peer of `session` is not to be trusted as `host` (a DNS name or an IP address), or
  // nullopt when it is. Called from the engine's thread only.
  std::optional<std::string> check(gnutls_session_t session, const std::string& host);

 private:
  using Clock = std::chrono::steady_clock;

  gnutls_x509_trust_list_t trust_ = nullptr;
  // Verified chains: host, then the SHA-256 of each certificate as the server sent it, to when the
  // verdict lapses.
  std::map<std::string, Clock::time_point> verified_;
};

}  // namespace o3mount
