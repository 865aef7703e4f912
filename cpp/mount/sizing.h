// How large the byte path's requests and readahead windows are: the block cache and the readahead
// ask partSize(), windowCap() and windowFloor() each time they size a request.
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
  // The least window of a sequential run after its first request.
  virtual uint64_t windowFloor() const = 0;
};

// Blocks in each ranged GET of a readahead of `blocks` blocks: --part-size (`partBlocks`), except
// that a range shorter than kMinParallelParts parts (a window's early steps) still goes out as that
// many GETs, so that it arrives at several connections' rate rather than one's. The reader waits on
// the part it is in, and while one 16 MiB part crossed a distant connection (about 20 MB/s at RTT
// 50 ms through the bench's proxy) the server idled: split in four, 256 MiB read 3-5% faster at RTT
// 50 ms and 5-11% at 100 ms, 2-4% slower at 0 (two A/B runs, medians of 4 and 5 alternating
// rounds). At least eight GETs cost more requests in the window's top-ups too, for less (RTT 50 ms:
// 137 against 154 MB/s).
inline constexpr uint64_t kMinParallelParts = 4;
inline uint64_t readaheadRunBlocks(uint64_t blocks, uint64_t partBlocks) {
  return std::clamp<uint64_t>((blocks + kMinParallelParts - 1) / kMinParallelParts, 1, std::max<uint64_t>(1, partBlocks));
}

// Windows sized from the bandwidth-delay product of the mount's own GETs (issue 21), as the fetch
// engine measures them (moving averages of its last GETs): a GET waits L for its first byte (round
// trips, the server's queue), then one connection delivers r bytes a second; kConnectionsBusy
// connections stay busy through the wait only with kConnectionsBusy x r x L in flight. A sequential
// run's window starts small (a quick first byte) and from its second step is at least that, rather
// than growing to it one round of reads at a time; the window over --part-size is how many parts go
// out in parallel. Near the server (r x L under a block or two) it is the plain growth. A file's
// window may take at most half the budget divided among the open files, so that all windows
// together hold at most half the budget in flight (and, with what arrived ahead of their readers,
// three quarters: readahead.h) and the rest stays for blocks being read and the cache; and at most
// --readahead-max. Half rather than a quarter: a window of 16 parts rather than 8 read 256 MiB 21%
// faster at RTT 100 ms and 4% at 50 ms, and no slower at 0 (medians of 5 alternating rounds).
class BdpSizing final : public TransferSizing {
 public:
  BdpSizing(const FetchEngine& engine, uint64_t partSize, uint64_t readaheadMax, uint64_t budget)
      : engine_(engine), partSize_(partSize), readaheadMax_(readaheadMax), budget_(budget) {}
  // Parts stay --part-size. A smaller part costs the server a request more (4 MiB parts read 10%
  // slower than 16 MiB at RTT 0). Parts sized from one connection's measured rate (what it delivers
  // in 0.4 s) were tried: that rate falls wherever the server's throughput is shared among more
  // connections, so parts shrank near the server too (o3-fetch 1.40 CPU-s/GiB against 0.96 in the
  // bench), for no gain at RTT 50 ms beyond the noise.
  uint64_t partSize() const override { return partSize_; }
  uint64_t windowCap(size_t streams) const override {
    return std::min<uint64_t>(readaheadMax_, budget_ / (2 * std::max<size_t>(1, streams)));
  }
  uint64_t windowFloor() const override {
    const FetchStats measured = engine_.stats();
    const double bytes = static_cast<double>(kConnectionsBusy) * static_cast<double>(measured.bytesPerSecondPerConnection) *
                         static_cast<double>(measured.firstByteUsAverage) / 1e6;
    return static_cast<uint64_t>(std::min(bytes, static_cast<double>(readaheadMax_)));
  }

 private:
  static constexpr uint64_t kConnectionsBusy = 4;

  const FetchEngine& engine_;
  const uint64_t partSize_, readaheadMax_, budget_;
};

}  // namespace o3mount
