// Counters of the byte path, incremented from any thread (relaxed atomics: each is a tally, none
// orders anything) and read as one snapshot for the stats file. The names are the stats file's
// (fs-driver/stats.ts), which the trainer reads, so a field is only ever added.
#pragma once

#include <atomic>
#include <cstdint>

namespace o3mount {

#define O3_MOUNT_COUNTERS(X)                                                                           \
  X(memHits)             /* block lookups of reads answered from memory */                             \
  X(memMisses)           /* ... that had to wait for the disk tier or the server */                    \
  X(diskHits)            /* blocks read back from the disk tier, checksum good */                      \
  X(diskMisses)          /* blocks fetched from the server that the disk tier did not have */          \
  X(diskCorrupt)         /* disk-tier blocks that failed their checksum (deleted, fetched again) */    \
  X(diskWrites)          /* blocks written to the disk tier */                                         \
  X(diskWritesSkipped)   /* blocks not written: the writer was too far behind */                       \
  X(blocksFetched)       /* blocks that arrived from the server, demanded or prefetched */             \
  X(blocksPrefetched)    /* ... of them fetched ahead of any reader */                                 \
  X(prefetchWasted)      /* prefetched blocks evicted before any read used them */                     \
  X(bytesFetched)        /* bytes of those blocks */                                                   \
  X(getRequests)         /* ranged GETs the cache asked of the fetch engine (before its retries) */    \
  X(reads)               /* FUSE reads */                                                              \
  X(bytesRead)           /* bytes those reads returned */                                              \
  X(readErrors)          /* reads that failed */                                                       \
  X(timeouts)            /* reads that failed because nothing arrived within --op-timeout */           \
  X(opens)               /* files opened */                                                            \
  X(blocksVerified)      /* blocks checked against a manifest's leaf digests and found good */         \
  X(verifyFailures)      /* blocks that did not match (from the server: EIO; from disk: refetched) */  \
  X(filesAnnounced)      /* files queued to fetch ahead of their readers (the control socket) */       \
  X(filesPrefetched)     /* ... whose blocks the queue fetched before any reader asked */              \
  X(filesSkipped)        /* ... it passed over: a reader got there first, or all was cached already */ \
  X(filesPrefetchUsed)   /* prefetched files a reader then read (the queue's first block of each) */   \
  X(announcedBlocksUsed) /* blocks the queue fetched that a reader then took */

struct CounterValues {
#define O3_FIELD(name) uint64_t name = 0;
  O3_MOUNT_COUNTERS(O3_FIELD)
#undef O3_FIELD
};

struct Counters {
#define O3_FIELD(name) std::atomic<uint64_t> name{0};
  O3_MOUNT_COUNTERS(O3_FIELD)
#undef O3_FIELD

  CounterValues snapshot() const {
    CounterValues v;
#define O3_COPY(name) v.name = name.load(std::memory_order_relaxed);
    O3_MOUNT_COUNTERS(O3_COPY)
#undef O3_COPY
    return v;
  }
};

// One increment of a counter: a tally, so no ordering with anything else.
inline void bump(std::atomic<uint64_t>& c, uint64_t n = 1) { c.fetch_add(n, std::memory_order_relaxed); }

}  // namespace o3mount
