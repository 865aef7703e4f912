// Blocks of objects in memory: an LRU bounded in bytes by the one memory budget, filled from the
// disk tier or the server. Each block is fetched at most once at a time however many readers want
// it (single-flight); runs of missing blocks go out as ranged GETs of up to the sizing policy's part
// size, at most --max-connections at once, blocks readers wait on before readahead before announced
// prefetches, and each block is handed over as soon as its own bytes have arrived (and, where the
// open has leaf digests, been verified).
//
// A cached block's identity is (key, ETag, version id at open, block index, verification state):
// a block verified against a manifest's digests is only served to opens expecting those digests,
// and a block cached unverified is never served to an open that has digests (issue 22 item 9).
//
// Threads: get/prefetch/announce from FUSE threads; sink callbacks on the fetch engine's thread,
// which only copies bytes and hands full blocks to the workers; the workers hash, read the disk
// tier and deliver blocks to their waiters (whose callbacks reply to the kernel). One mutex guards
// the maps, queues and budget; callbacks never run under it.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "mount/block_pool.h"
#include "mount/counters.h"
#include "mount/disk_tier.h"
#include "mount/error.h"
#include "mount/fetch_engine.h"
#include "mount/leaf_verifier.h"
#include "mount/log_sink.h"
#include "mount/memory_budget.h"
#include "mount/object_pin.h"
#include "mount/sizing.h"

namespace o3 {
class ThreadPool;
}

namespace o3mount {

// The pin an open file's requests carry; responses may teach it the version id (first response
// that names one, when HEAD did not), and later requests then ask for exactly that version.
class PinState {
 public:
  explicit PinState(ObjectPin pin) : pin_(std::move(pin)) {}
  ObjectPin get() const {
    std::lock_guard lock(mutex_);
    return pin_;
  }
  void learn(const ObjectPin& fromResponse) {
    std::lock_guard lock(mutex_);
    if (pin_.versionId.empty()) pin_.versionId = fromResponse.versionId;
  }

 private:
  mutable std::mutex mutex_;
  ObjectPin pin_;
};

// One object version as an open file sees it.
struct ObjectRef {
  // key, ETag and version id as pinned at open: what the object's cached blocks are named by.
  std::string id;
  // The file's path below the mount's root, for log lines ("a/b.bin").
  std::string name;
  uint64_t size = 0;
  std::shared_ptr<PinState> pin;
  // The manifest's leaf digests; null when the file is not verified.
  std::shared_ptr<const Leaves> leaves;

  static ObjectRef make(const ObjectPin& pin, std::string name, std::shared_ptr<const Leaves> leaves);
};

// Bytes one open file's readahead has asked for that have not arrived yet (nor failed): its policy
// asks for more as they arrive, not only as its reader moves (readahead.h).
struct InFlight {
  std::atomic<uint64_t> bytes{0};
};

struct BlockResult {
  Status status;
  bool leafMismatch = false;  // the block's bytes did not match the manifest (already logged)
  std::shared_ptr<const Block> block;
};

struct BlockCacheConfig {
  uint64_t blockSize = 1 << 20;
  uint64_t memoryBytes = 512ull << 20;
  int maxConnections = 32;
  int workerThreads = 2;
};

struct BlockCacheStats {
  uint64_t budgetBytes = 0, cacheBytes = 0, inflightBytes = 0, peakUsedBytes = 0, overflowBuffers = 0;
  uint64_t queuedJobs = 0, runningJobs = 0, announcedFiles = 0;
};

class BlockCache final : private Reclaimable {
 public:
  // Announced prefetches may hold at most half the budget in blocks no reader has used yet, so that
  // files announced far ahead never evict each other before they are read (issue 21's ordered queue).
  static constexpr double kMaxAnnouncedShare = 0.5;

  BlockCache(const BlockCacheConfig& config, FetchEngine& engine, DiskTier* disk, TransferSizing& sizing, Counters& counters,
             LogSink& log);
  ~BlockCache() override;
  BlockCache(const BlockCache&) = delete;
  BlockCache& operator=(const BlockCache&) = delete;

  uint64_t blockSize() const { return config_.blockSize; }
  uint64_t blockCount(const ObjectRef& obj) const { return (obj.size + config_.blockSize - 1) / config_.blockSize; }

  using BlockCallback = std::function<void(uint64_t index, BlockResult result)>;
  // Blocks [first, last) for a reader: `done` is called once per block, at once for cached blocks
  // (on the caller's thread, before read returns), later from a worker for the rest.
  void read(const ObjectRef& obj, uint64_t first, uint64_t last, const BlockCallback& done);
  // Starts fetching blocks [first, last) that are neither cached nor on their way, as readahead,
  // only as far as the budget allows; returns the block up to which all are cached or on their way.
  // The blocks it starts count in `inflight` (when given) until they arrive or fail.
  uint64_t prefetch(const ObjectRef& obj, uint64_t first, uint64_t last, std::shared_ptr<InFlight> inflight = nullptr);
  // Queues whole files to fetch ahead of their readers, in this order, behind readahead, within
  // kMaxAnnouncedShare of the budget (issue 21: files announced by the trainer or found in listing
  // order). Each `stream` (one announcing client) keeps its own order; streams take turns, one
  // request at a time, so that ranks sharing a mount are each served ahead. A file a reader has
  // already opened when its turn comes is passed over: its reader's own requests fetch it.
  void announce(std::vector<ObjectRef> files, uint64_t stream = 0);

  BlockCacheStats stats() const;

  // Fails queued work with Cancelled and starts nothing new. Then the owner closes the engine (its
  // running fetches finish, cancelled) and destroys this cache, which drains the workers.
  void close();
  // Runs `task` on a worker (the filesystem's own short jobs: none may block).
  void post(std::function<void()> task);

 private:
  enum Priority { kDemand = 0, kReadahead = 1, kAnnounced = 2 };
  struct Job;
  struct Entry {
    std::shared_ptr<const Block> block;  // set once ready
    std::vector<std::pair<uint64_t, BlockCallback>> waiters;
    std::shared_ptr<Job> job;                     // the queued network job that will fill it
    uint64_t reserved = 0;                        // bytes of the budget this pending block holds
    bool wanted = false;                          // a reader waited on it
    bool used = false;                            // a reader took it
    bool announced = false;                       // fetched for an announced file
    bool firstAnnounced = false;                  // the first block the queue fetched of its file (counts the file used)
    std::shared_ptr<InFlight> inflight;           // the readahead that asked for it, until it arrives
    std::list<const std::string*>::iterator lru;  // valid once ready
  };
  struct Job {
    ObjectRef obj;
    uint64_t first = 0, last = 0;
    Priority priority = kDemand;
    bool started = false;
  };
  struct Announced {
    ObjectRef obj;
    uint64_t next = 0;     // first block not yet considered
    bool started = false;  // the queue has fetched some of it
  };
  class Sink;
  friend class Sink;

  uint64_t heldBytes() const override { return held_; }
  bool evictOne() override;

  std::string keyOf(const ObjectRef& obj, uint64_t index) const;
  std::string diskIdOf(const ObjectRef& obj, uint64_t index) const;
  uint64_t blockLength(const ObjectRef& obj, uint64_t index) const;
  // Under mutex_: registers absent blocks [first, last) as pending, each holding `reserved` bytes
  // (0 for demand: reserved when its request starts) and queues their disk reads and network jobs.
  void startRun(const ObjectRef& obj, uint64_t first, uint64_t last, Priority priority, bool reserved);
  void queueNetwork(const ObjectRef& obj, uint64_t first, uint64_t last, Priority priority);
  void promote(const std::shared_ptr<Job>& job);
  // Under mutex_: the jobs to start now; the caller hands them to the engine after unlocking.
  std::vector<std::shared_ptr<Job>> pump();
  bool pumpAnnounced();
  // Under mutex_: done with the front file of `stream`'s queue.
  void popAnnounced(std::map<uint64_t, std::deque<Announced>>::iterator stream);
  // Under mutex_: a reader takes entry `e` for the first time.
  void markUsed(Entry& e, uint64_t bytes);
  void launch(std::vector<std::shared_ptr<Job>> jobs);
  void jobDone();

  void readFromDisk(ObjectRef obj, uint64_t index, std::string diskName);
  void refetch(const ObjectRef& obj, uint64_t index);
  // Counts and logs a block whose bytes do not match the manifest (`from`: "o3" or "disk").
  void reportMismatch(const ObjectRef& obj, uint64_t index, const LeafMismatch& bad, const char* what, const char* from);
  void deliver(const ObjectRef& obj, uint64_t index, std::shared_ptr<Block> block, bool fromNetwork);
  void complete(const ObjectRef& obj, uint64_t index, std::shared_ptr<const Block> block, bool fromNetwork);
  void fail(const ObjectRef& obj, uint64_t index, const Status& status, bool leafMismatch);
  // Under mutex_: the block is no longer on its way for the readahead that asked for it.
  static void settle(Entry& e, uint64_t bytes);

  const BlockCacheConfig config_;
  FetchEngine& engine_;
  DiskTier* const disk_;
  TransferSizing& sizing_;
  Counters& counters_;
  LogSink& log_;
  std::shared_ptr<BlockPool> pool_;

  mutable std::mutex mutex_;
  MemoryBudget budget_;
  std::unordered_map<std::string, Entry> entries_;
  std::list<const std::string*> lru_;  // ready entries, most recently used first
  uint64_t held_ = 0;                  // bytes of ready entries
  uint64_t announcedUnread_ = 0;       // bytes of announced blocks cached or on their way, not yet used
  std::deque<std::shared_ptr<Job>> queues_[3];
  std::map<uint64_t, std::deque<Announced>> announced_;  // by stream, each in its order
  uint64_t announcedQueued_ = 0;                         // files in all of them
  uint64_t turn_ = 0;                                    // the stream whose file goes next, or the one after
  // Ids of files queued (with how many times), and those of them a reader has opened already.
  std::unordered_map<std::string, uint64_t> announcedIds_;
  std::unordered_set<std::string> readBeforeTurn_;
  int running_ = 0;
  bool closing_ = false;

  std::unique_ptr<o3::ThreadPool> workers_;
};

}  // namespace o3mount
