// One byte budget (--cache-mem) for everything the byte path holds: cached blocks, blocks being
// fetched for readers, readahead and announced prefetches. A fetch reserves its bytes before the
// request goes out; when the sum would pass the limit, the least recently used cached blocks are
// evicted first.
//
// Two ways to reserve, after mountpoint-s3's memory limiter:
//  - try_reserve: readahead and prefetch ask politely and are skipped when the budget is spent, and
//    may never hold more than a share of it in flight (kMaxSpeculativeShare), or demand reads would
//    evict each other's blocks while prefetches hold the rest.
//  - reserve: a read someone waits on always proceeds, so progress is guaranteed. It evicts what it
//    can and may then pass the limit. The overshoot is bounded by what demand fetches can hold at
//    once: the block cache starts at most --max-connections fetches, and a demand fetch covers one
//    FUSE read (at most 1 MiB, so at most 1 MiB + one block), hence at most
//    max_connections x (1 MiB + block size) past the limit, never a number that grows with the
//    number of open files.
//
// Not thread-safe: the block cache calls it under its own lock (eviction touches the cache's LRU).
#pragma once

#include <cstdint>

namespace o3mount {

class Reclaimable {
 public:
  virtual ~Reclaimable() = default;
  virtual uint64_t heldBytes() const = 0;
  // Frees the least recently used entry; false when nothing is left to free.
  virtual bool evictOne() = 0;
};

class MemoryBudget {
 public:
  // Readahead may hold at most three quarters of the budget in flight: the rest stays for blocks
  // readers are waiting on and for the cache that makes re-reads cheap. (As fs-driver's budget did.)
  static constexpr double kMaxSpeculativeShare = 0.75;

  MemoryBudget(uint64_t limit, Reclaimable& cache) : limit_(limit), cache_(cache) {}

  uint64_t limit() const { return limit_; }
  uint64_t inflightBytes() const { return inflight_; }
  uint64_t usedBytes() const { return inflight_ + cache_.heldBytes(); }
  // The most the byte path has held at once (cached plus in flight); peaks when a fetch reserves.
  uint64_t peakBytes() const { return peak_; }

  // Reserves n bytes if they fit after evicting cached blocks and the in-flight share allows.
  bool tryReserve(uint64_t n, double maxInflightShare = kMaxSpeculativeShare);
  // Reserves n bytes regardless (see the overshoot above).
  void reserve(uint64_t n);
  void release(uint64_t n);

 private:
  bool makeRoom(uint64_t n);
  void noteUse();

  const uint64_t limit_;
  Reclaimable& cache_;
  uint64_t inflight_ = 0;
  uint64_t peak_ = 0;
};

}  // namespace o3mount
