// Sequential readahead of one open file, after mountpoint-s3's prefetcher: the first request is
// small, so the first byte comes quickly; while reads stay sequential the window grows eightfold
// (mountpoint-s3's sequential_prefetch_multiplier), up to a cap, each time the reader has consumed
// half of what is on its way, and no lower than the measured bandwidth-delay product asks after the
// first step (each step waits a round of reads, so far from the server a slow ramp alone costs
// several round trips: doubling instead of growing eightfold read 256 MiB 7-10% slower at RTT 0 and
// 50 ms); a seek outside a tolerance resets it, so random access fetches only the blocks it reads.
// Once at its cap, the window is kept on its way as its parts arrive, rather than as the reader
// consumes them (see onRead). Pure policy: no I/O, no clock, no lock (the open file holds one).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>

namespace o3mount {

struct ReadaheadConfig {
  uint64_t blockSize = 0;
  // Window after the first sequential read.
  uint64_t initialWindow = 0;
  // How far either side of the furthest read a read may land and still count as sequential: the
  // kernel's own readahead requests are served by several threads and arrive out of order by up
  // to its readahead span (read_ahead_kb), so this is at least that span.
  uint64_t seekTolerance = 0;
  // The window's cap right now: it shrinks as more files stream at once, to share the budget.
  std::function<uint64_t()> maxWindow;
  // The least window a run grows to at its second step: what the measured bandwidth-delay product
  // needs in flight (sizing.h). Empty or 0: the plain growth from initialWindow.
  std::function<uint64_t()> minWindow;
};

struct PrefetchRange {
  uint64_t from;  // first block to prefetch
  uint64_t to;    // one past the last
};

class Readahead {
 public:
  explicit Readahead(ReadaheadConfig cfg) : cfg_(std::move(cfg)) {}

  uint64_t windowBytes() const { return window_; }

  // Records a read of [offset, offset + length) in a file of `size` bytes, while `inFlight` bytes
  // this file's prefetches asked for have not arrived yet; returns what to prefetch, if anything.
  std::optional<PrefetchRange> onRead(uint64_t offset, uint64_t length, uint64_t size, uint64_t inFlight);
  // Records how far the prefetch got (the memory budget may have cut it short): blocks below
  // `block` are cached or on their way.
  void issuedTo(uint64_t block, uint64_t size);

 private:
  bool isSequential(uint64_t offset) const;

  static constexpr uint64_t kGrowth = 8;

  ReadaheadConfig cfg_;
  bool started_ = false;
  uint64_t expected_ = 0;  // one past the furthest byte read in the current sequential run
  uint64_t window_ = 0;
  uint64_t aheadTo_ = 0;  // byte offset up to which blocks have been requested
};

}  // namespace o3mount
