// How large the byte path's requests and readahead windows are. Today fixed by the options; the
// interface is where a policy that follows the measured bandwidth-delay product of the mount's own
// requests plugs in (issue 21: far-away O3 needs windows and parallel parts sized from RTT x rate):
// every finished GET is reported to observe() with the engine's timings (queueing, first byte,
// transfer), the engine's stats hold moving averages of latency and per-connection rate, and the
// block cache and readahead ask partSize() and windowCap() each time they size a request.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "mount/fetch_engine.h"

namespace o3mount {

class TransferSizing {
 public:
  virtual ~TransferSizing() = default;
  // Largest ranged GET of readahead (a multiple of the block size); longer runs go out in parallel.
  virtual uint64_t partSize() const = 0;
  // Cap of one open file's readahead window while `streams` files are open.
  virtual uint64_t windowCap(size_t streams) const = 0;
  // Called from the fetch engine's thread for every finished GET; must not block.
  virtual void observe(const FetchTiming& timing) = 0;
};

// --part-size and --readahead-max as given. A file's window may take at most a quarter of the budget
// divided among the open files, so that all windows together hold at most a quarter of the budget
// in flight and the rest stays for blocks being read and the cache (as fs-driver did).
class FixedSizing final : public TransferSizing {
 public:
  FixedSizing(uint64_t partSize, uint64_t readaheadMax, uint64_t budget)
      : partSize_(partSize), readaheadMax_(readaheadMax), budget_(budget) {}
  uint64_t partSize() const override { return partSize_; }
  uint64_t windowCap(size_t streams) const override {
    return std::min<uint64_t>(readaheadMax_, budget_ / (4 * std::max<size_t>(1, streams)));
  }
  void observe(const FetchTiming&) override {}

 private:
  uint64_t partSize_, readaheadMax_, budget_;
};

}  // namespace o3mount
