// glibc malloc settings for training: every step frees and reallocates the same tensors, and with
// glibc's defaults the memory they free is returned to the kernel (munmap, trimmed arena tops) and
// faulted back in, page by page, by the next step.
#pragma once

#include <cstdint>
#include <string>

namespace o3 {

struct MallocTuning {
  // "o3" when set here; else what was left in charge: the environment variable the user set
  // (glibc read it at start), or "libc" where malloc is not glibc's.
  std::string setBy;
  int64_t mmapThreshold = 0;  // bytes; 0 when not set here
  int64_t trimThreshold = 0;
};

// Applies the settings once per process (later calls return what the first did): allocations up to
// kMmapThreshold come from malloc's heaps, and up to kTrimThreshold of free memory at a heap's top
// stays mapped, so that a step reuses the pages the last one freed. Left alone when the environment
// sets malloc's tunables (GLIBC_TUNABLES glibc.malloc.*, MALLOC_*_).
const MallocTuning& tuneMallocForTraining();

// glibc's largest mmap threshold (half its per-thread heap size on 64-bit). Larger allocations are
// still mapped and unmapped each time.
constexpr int64_t kMmapThreshold = int64_t(32) << 20;
constexpr int64_t kTrimThreshold = int64_t(1) << 30;

}  // namespace o3
