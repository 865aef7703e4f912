// The mount's byte path to O3: ranged GETs over HTTP/1.1 and HTTPS (libcurl multi on one thread
// of its own, a keep-alive connection pool), SigV4 signed here, each response checked against the
// object's pinned version and the exact range asked, retried with backoff and resumed from the last
// byte received. Knows nothing of FUSE, Node or the block cache: callers hand it a sink.
//
// This header is the contract between the fetch engine and the rest of cpp/mount/ (block cache,
// readahead, filesystem); change it only together with both sides.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "mount/credentials.h"
#include "mount/error.h"
#include "mount/object_pin.h"

namespace o3mount {

struct RetryPolicy {
  // As lib/o3/retry.ts DEFAULT_RETRY: 5 attempts, waits drawn from [b*2^i, 2*b*2^i], b = 700 ms,
  // at least 10.5 s in all, so that a server gone for 5 s fails nothing. A body that breaks resumes
  // with the whole budget again after each attempt that moved it forward, up to four budgets of
  // attempts in all (20).
  int maxAttempts = 5;
  int baseDelayMs = 700;
  int maxDelayMs = 20'000;
};

struct FetchConfig {
  std::string endpoint;  // "http://127.0.0.1:8080" or "https://o3-rc2.akave.xyz" (a path prefix allowed)
  std::string region;    // "akave-network"
  std::string bucket;
  Credentials credentials;
  std::string caBundle;  // PEM file for HTTPS; empty: the system store
  // Added to this machine's clock in signatures: the server's clock minus ours, as the control
  // plane's SDK measured it; corrected here too when a request is refused as skewed.
  int64_t clockOffsetMs = 0;
  // http://[user:password@]host:port of the proxy to go through (a CONNECT tunnel for https), as the
  // control plane decided from HTTPS_PROXY / NO_PROXY; empty: direct, whatever the environment says.
  std::string proxy;
  int maxConnections = 16;
  int connectTimeoutMs = 5'000;
  int requestTimeoutMs = 30'000;  // longest silence on a connection before the attempt fails
  RetryPolicy retry;
};

// How one fetch went. Times in microseconds.
struct FetchTiming {
  uint64_t queuedUs = 0;     // from fetch() to the start of the first attempt (waiting for a connection)
  uint64_t firstByteUs = 0;  // last attempt: request sent to the first response byte (a round trip + the server)
  uint64_t connectUs = 0;    // last attempt: TCP and TLS set-up; 0 on a kept-alive connection
  uint64_t transferUs = 0;   // last attempt: first to last response byte
  uint64_t totalUs = 0;      // from fetch() to finished()
  uint64_t bytes = 0;        // body bytes written to the sink, all attempts
  int attempts = 0;
};

// Where one GET's body goes. Called on the engine thread only; must not block.
class RangeSink {
 public:
  virtual ~RangeSink() = default;
  // Writable memory for the body bytes starting at object offset `at` (never empty while bytes
  // are expected). After a broken body the engine resumes at the first byte not yet written.
  virtual std::span<std::byte> space(uint64_t at) = 0;
  // `n` bytes were written at the start of the last space(at).
  virtual void wrote(uint64_t at, size_t n) = 0;
  // Exactly once: Ok with every byte of the range written, or the error that ended it (after
  // retries). `pin` is the pin as updated by the responses (a version id learnt on the way).
  virtual void finished(const Status& status, const ObjectPin& pin) = 0;
  // Called once just before finished(), with how the fetch went (for a readahead policy that sizes
  // its window from the bandwidth-delay product). Ignored unless overridden.
  virtual void timing(const FetchTiming& timing) { (void)timing; }
};

struct FetchStats {
  uint64_t requests = 0;  // attempts sent (warm-up requests not included)
  uint64_t retries = 0;
  uint64_t errors = 0;  // requests that failed for good
  uint64_t bytesReceived = 0;
  uint64_t connectionsOpened = 0;
  // Now: fetches waiting (for a connection or a retry's backoff) and requests on the wire.
  uint64_t queued = 0;
  uint64_t inFlight = 0;
  // Moving averages over about the last ten requests, 0 until measured: the time from request to
  // first response byte (latency), and the body rate of one connection, from responses of at least
  // 256 KiB. Their product times the connections is the bandwidth-delay product to keep in flight.
  uint64_t firstByteUsAverage = 0;
  uint64_t bytesPerSecondPerConnection = 0;
  // What signatures add to this machine's clock (FetchConfig::clockOffsetMs, as corrected since).
  int64_t clockOffsetMs = 0;
};

// A fetch finishes with one of:
//  Ok           every byte of the range is in the sink;
//  NotFound     404 / NoSuchKey, or an empty key (never retried);
//  Auth         401, 403 or an S3 credentials error code (never retried);
//  Integrity    another ETag or version id than the pin's, 412 (If-Match failed), 416, or a range
//               past the pin's size (never retried);
//  Stream       after retries: 5xx, 429, resets, silence past requestTimeoutMs, responses that lie
//               about the range or their lengths; at once: 3xx and other 4xx;
//  Unreachable  after retries: connection refused, DNS; at once: an untrusted TLS certificate or
//               an unusable caBundle;
//  Cancelled    close() came first;
//  NoMemory     the sink's space() was empty while bytes were expected.
// It never gives Timeout: the deadline of a whole operation is the caller's.
class FetchEngine {
 public:
  // Starts the engine's thread. Throws std::invalid_argument for an unusable endpoint (the control
  // plane has checked it before).
  static std::unique_ptr<FetchEngine> create(const FetchConfig& config);
  virtual ~FetchEngine() = default;
  // Queues a GET of [offset, offset + length) of `pin.key` (a key relative to the bucket). The sink
  // must stay alive until its finished() has returned. Thread-safe. Fetches start in the order
  // queued, at most maxConnections at a time; a retry goes before fetches not yet started.
  virtual void fetch(const ObjectPin& pin, uint64_t offset, uint64_t length, std::shared_ptr<RangeSink> sink) = 0;
  virtual FetchStats stats() const = 0;
  // Opens connections ahead of need, so that the first reads pay no TCP or TLS handshake (two round
  // trips to a distant server): makes sure about `n` (at most maxConnections) are open, with cheap
  // signed HEADs of the bucket. Returns at once; failures only show in the stats.
  virtual void warm(int n) { (void)n; }
  // Requests signed from now on use `credentials`: temporary ones, refreshed by the control plane
  // before they expire. Thread-safe; an engine that signs nothing (a test's fake) ignores them.
  virtual void setCredentials(const Credentials& credentials) { (void)credentials; }
  // Fails every queued and running fetch with Cancelled and joins the thread; idempotent, and every
  // caller (several at once too) returns once the thread has ended. From a sink's callback it only
  // starts that (the engine thread cannot join itself). After it, fetch() finishes its sink with
  // Cancelled at once, on the caller's thread. The engine must not be destroyed from a sink's
  // callback.
  virtual void close() = 0;
};

}  // namespace o3mount
