#include "malloc_tuning.h"

#include <cstdlib>
#include <cstring>

#ifdef __GLIBC__
#include <malloc.h>
#endif

namespace o3 {
namespace {

// The variables through which glibc takes malloc settings at process start.
const char* mallocSetByEnvironment() {
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  if (tunables && std::strstr(tunables, "glibc.malloc.")) return "GLIBC_TUNABLES";
  for (const char* name : {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_"})
    if (std::getenv(name)) return name;
  return nullptr;
}

MallocTuning apply() {
#ifdef __GLIBC__
  if (const char* env = mallocSetByEnvironment()) return {env};
  // Setting either one fixes both: glibc stops raising them as large blocks are freed, which with
  // the defaults (128 KiB, raised to at most 32 MiB and twice that) still trimmed most of a step's
  // memory away after every step.
  // Each reported only where glibc took it.
  const bool mmap = mallopt(M_MMAP_THRESHOLD, int(kMmapThreshold)) == 1;
  const bool trim = mallopt(M_TRIM_THRESHOLD, int(kTrimThreshold)) == 1;
  if (mmap || trim) return {"o3", mmap ? kMmapThreshold : 0, trim ? kTrimThreshold : 0};
#endif
  return {"libc"};
}

}  // namespace

const MallocTuning& tuneMallocForTraining() {
  static const MallocTuning tuning = apply();
  return tuning;
}

}  // namespace o3
