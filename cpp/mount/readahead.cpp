#include "mount/readahead.h"

#include <algorithm>

namespace o3mount {

namespace {
uint64_t ceilDiv(uint64_t a, uint64_t b) { return a / b + (a % b != 0); }
}  // namespace

bool Readahead::isSequential(uint64_t offset) const {
  if (!started_) return offset == 0;
  const uint64_t span = std::max(window_, cfg_.seekTolerance);
  const uint64_t low = expected_ > span ? expected_ - span : 0;
  return offset >= low && offset <= expected_ + span;
}

std::optional<PrefetchRange> Readahead::onRead(uint64_t offset, uint64_t length, uint64_t size, uint64_t inFlight) {
  const uint64_t bs = cfg_.blockSize;
  const uint64_t end = offset + length;
  if (!isSequential(offset)) {
    window_ = 0;
    started_ = true;
    expected_ = end;
    aheadTo_ = std::min(size, ceilDiv(end, bs) * bs);
    return std::nullopt;
  }
  // A late request from behind the front changes nothing.
  if (started_ && end <= expected_) return std::nullopt;
  started_ = true;
  // aheadTo_ is not moved by the read itself: out-of-order kernel readahead leaves gaps behind it
  // that the next prefetch must fill, as one request rather than block by block.
  expected_ = end;
  if (aheadTo_ >= size) return std::nullopt;
  const uint64_t ahead = aheadTo_ > expected_ ? aheadTo_ - expected_ : 0;
  const uint64_t cap = std::max(2 * bs, cfg_.maxWindow ? cfg_.maxWindow() : 0);
  window_ = std::min(window_, cap);  // more files stream now: this one's share is smaller
  if (window_ > 0 && ahead >= window_ / 2) {
    if (window_ < cap) return std::nullopt;  // growing: each step waits for the reader, so a file read in part fetches no more
    // A full window's parts arrive side by side while the reader waits on the oldest, so waiting
    // for the reader to consume half of it let them all finish before the next went out: the
    // connections idled a round trip and more at every step. Instead, as an eighth of the window
    // arrives, that much more goes out, up to half a window beyond it ahead of the reader.
    const uint64_t limit = expected_ + window_ + window_ / 2;
    const uint64_t target = std::min({size, limit, aheadTo_ + (window_ > inFlight ? window_ - inFlight : 0)});
    if (target < std::min(size, aheadTo_ + window_ / 8)) return std::nullopt;
    return PrefetchRange{aheadTo_ / bs, ceilDiv(target, bs)};
  }
  const uint64_t floor = cfg_.minWindow ? cfg_.minWindow() : 0;
  window_ = window_ == 0 ? std::min(cfg_.initialWindow, cap) : std::min(std::max(window_ * kGrowth, floor), cap);
  const uint64_t target = std::min(size, expected_ + window_);
  if (target <= aheadTo_) return std::nullopt;
  return PrefetchRange{aheadTo_ / bs, ceilDiv(target, bs)};
}

void Readahead::issuedTo(uint64_t block, uint64_t size) { aheadTo_ = std::max(aheadTo_, std::min(size, block * cfg_.blockSize)); }

}  // namespace o3mount
