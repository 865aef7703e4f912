#include "mount/memory_budget.h"

#include <algorithm>

namespace o3mount {

bool MemoryBudget::makeRoom(uint64_t n) {
  while (usedBytes() + n > limit_)
    if (!cache_.evictOne()) return false;
  return true;
}

void MemoryBudget::noteUse() { peak_ = std::max(peak_, usedBytes()); }

bool MemoryBudget::tryReserve(uint64_t n, double maxInflightShare) {
  if (static_cast<double>(inflight_ + n) > static_cast<double>(limit_) * maxInflightShare) return false;
  if (!makeRoom(n)) return false;
  inflight_ += n;
  noteUse();
  return true;
}

void MemoryBudget::reserve(uint64_t n) {
  makeRoom(n);
  inflight_ += n;
  noteUse();
}

// Every reservation is released exactly once, by the fetch that made it (tests check the sum).
void MemoryBudget::release(uint64_t n) { inflight_ -= n; }

}  // namespace o3mount
