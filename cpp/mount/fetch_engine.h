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
  // at least 10.5 s in all, so that a server gone for 5 s fails nothing.
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
  int maxConnections = 16;
  int connectTimeoutMs = 5'000;
  int requestTimeoutMs = 30'000;  // longest silence on a connection before the attempt fails
  RetryPolicy retry;
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
};

struct FetchStats {
  uint64_t requests = 0;  // attempts sent
  uint64_t retries = 0;
  uint64_t errors = 0;  // requests that failed for good
  uint64_t bytesReceived = 0;
  uint64_t connectionsOpened = 0;
};

class FetchEngine {
 public:
  static std::unique_ptr<FetchEngine> create(const FetchConfig& config);
  virtual ~FetchEngine() = default;
  // Queues a GET of [offset, offset + length) of `pin.key` (a key relative to the bucket). The sink
  // must stay alive until its finished() has returned. Thread-safe.
  virtual void fetch(const ObjectPin& pin, uint64_t offset, uint64_t length, std::shared_ptr<RangeSink> sink) = 0;
  virtual FetchStats stats() const = 0;
  // Fails every queued and running fetch with Cancelled and joins the thread; idempotent.
  virtual void close() = 0;
};

}  // namespace o3mount
