#include "mount/block_cache.h"

#include <algorithm>
#include <new>
#include <thread>

#include "thread_pool.h"

namespace o3mount {

ObjectRef ObjectRef::make(const ObjectPin& pin, std::string name, std::shared_ptr<const Leaves> leaves) {
  ObjectRef r;
  r.id = pin.key;
  r.id.push_back('\0');
  r.id += pin.etag;
  r.id.push_back('\0');
  r.id += pin.versionId;
  r.name = std::move(name);
  r.size = pin.size;
  r.pin = std::make_shared<PinState>(pin);
  r.leaves = std::move(leaves);
  return r;
}

// Where one GET's body goes: straight into pooled block buffers, each handed to a worker once full.
// Runs on the engine's thread; never blocks, never takes the cache's lock.
class BlockCache::Sink final : public RangeSink {
 public:
  Sink(BlockCache& cache, std::shared_ptr<Job> job) : cache_(cache), job_(std::move(job)), cur_(job_->first) {}

  std::span<std::byte> space(uint64_t at) override {
    const uint64_t bs = cache_.config_.blockSize;
    if (cur_ >= job_->last || at != cur_ * bs + filled_) return {};
    if (!buf_) {
      try {
        buf_ = cache_.pool_->acquire(cache_.blockLength(job_->obj, cur_));
      } catch (const std::bad_alloc&) {
        return {};
      }
    }
    return buf_->bytes().subspan(filled_);
  }

  void wrote(uint64_t at, size_t n) override {
    if (!buf_ || at != cur_ * cache_.config_.blockSize + filled_ || n > buf_->size() - filled_) return;
    filled_ += n;
    if (filled_ < buf_->size()) return;
    cache_.post([c = &cache_, obj = job_->obj, i = cur_, block = std::move(buf_)]() mutable {
      c->deliver(obj, i, std::move(block), true);
    });
    ++cur_;
    filled_ = 0;
  }

  void finished(const Status& status, const ObjectPin& pin) override {
    job_->obj.pin->learn(pin);
    buf_.reset();
    Status s = status;
    if (s && cur_ < job_->last)
      s = Status::error(ErrorKind::Stream, "the body of " + job_->obj.name + " ended at block " + std::to_string(cur_));
    if (!s) {
      const uint64_t bs = cache_.config_.blockSize;
      // A fetch cancelled because the mount is closing is no failure worth a line.
      if (s.kind != ErrorKind::Cancelled)
        cache_.log_.log(LogLevel::Warn, "block fetch failed",
                        {{"key", job_->obj.name},
                         {"start", static_cast<int64_t>(job_->first * bs)},
                         {"end", static_cast<int64_t>(std::min(job_->last * bs, job_->obj.size) - 1)},
                         {"err", s.message}});
      for (uint64_t i = cur_; i < job_->last; ++i)
        cache_.post([c = &cache_, obj = job_->obj, i, s] { c->fail(obj, i, s, false); });
    }
    cache_.post([c = &cache_] { c->jobDone(); });
  }

 private:
  BlockCache& cache_;
  std::shared_ptr<Job> job_;
  uint64_t cur_;
  uint64_t filled_ = 0;
  std::shared_ptr<Block> buf_;
};

BlockCache::BlockCache(const BlockCacheConfig& config, FetchEngine& engine, DiskTier* disk, TransferSizing& sizing,
                       Counters& counters, LogSink& log)
    : config_(config),
      engine_(engine),
      disk_(disk),
      sizing_(sizing),
      counters_(counters),
      log_(log),
      // The budget's worth of buffers: fetches reserve before they take one, so the pool only grows
      // past this by the budget's bounded overshoot.
      pool_(std::make_shared<BlockPool>(config.blockSize, (config.memoryBytes + config.blockSize - 1) / config.blockSize)),
      budget_(config.memoryBytes, *this),
      workers_(std::make_unique<o3::ThreadPool>(config.workerThreads > 0
                                                    ? config.workerThreads
                                                    : std::clamp(static_cast<int>(std::thread::hardware_concurrency()) / 2, 2, 8),
                                                "o3-cache")) {}

BlockCache::~BlockCache() {
  // Drain first: queued tasks still touch the maps, and may post() more while they run, so the
  // pool must outlive the drain (a reset() would null workers_ before its destructor drains).
  workers_->join();
}

void BlockCache::post(std::function<void()> task) { (void)workers_->submit(std::move(task)); }

std::string BlockCache::keyOf(const ObjectRef& obj, uint64_t index) const {
  std::string k = obj.id;
  k.push_back('\0');
  k += std::to_string(index);
  k.push_back('\0');
  if (obj.leaves) {
    k.push_back('V');
    k += blockDigestKey(*obj.leaves, config_.blockSize, index);
  } else {
    k.push_back('U');
  }
  return k;
}

std::string BlockCache::diskIdOf(const ObjectRef& obj, uint64_t index) const {
  return obj.id + '\0' + std::to_string(config_.blockSize) + '\0' + std::to_string(index);
}

uint64_t BlockCache::blockLength(const ObjectRef& obj, uint64_t index) const {
  return std::min(config_.blockSize, obj.size - index * config_.blockSize);
}

bool BlockCache::evictOne() {
  if (lru_.empty()) return false;
  const std::string* key = lru_.back();
  lru_.pop_back();
  auto it = entries_.find(*key);
  Entry& e = it->second;
  held_ -= e.block->size();
  if (!e.used) {
    bump(counters_.prefetchWasted);
    if (e.announced) announcedUnread_ -= e.block->size();
  }
  entries_.erase(it);
  return true;
}

void BlockCache::read(const ObjectRef& obj, uint64_t first, uint64_t last, const BlockCallback& done) {
  std::vector<std::pair<uint64_t, std::shared_ptr<const Block>>> ready;
  std::vector<std::shared_ptr<Job>> toStart;
  bool cancelled = false;
  {
    std::lock_guard lock(mutex_);
    if (closing_) {
      cancelled = true;
    } else {
      // Runs of absent blocks are started after the loop: starting one may evict cached entries.
      std::vector<std::pair<uint64_t, uint64_t>> runs;
      uint64_t runStart = last;
      for (uint64_t i = first; i < last; ++i) {
        auto [it, inserted] = entries_.try_emplace(keyOf(obj, i));
        Entry& e = it->second;
        if (inserted) {
          if (runStart == last) runStart = i;
        } else if (runStart != last) {
          runs.emplace_back(runStart, i);
          runStart = last;
        }
        if (e.block) {
          lru_.splice(lru_.begin(), lru_, e.lru);
          if (!e.used) markUsed(e, e.block->size());
          bump(counters_.memHits);
          ready.emplace_back(i, e.block);
          continue;
        }
        bump(counters_.memMisses);
        e.waiters.emplace_back(i, done);
        e.wanted = true;
        if (!inserted && e.job && !e.job->started && e.job->priority != kDemand) promote(e.job);
      }
      if (runStart != last) runs.emplace_back(runStart, last);
      // A queued file its reader opened first: the reader's own requests fetch it now.
      if (!announcedIds_.empty() && announcedIds_.count(obj.id)) readBeforeTurn_.insert(obj.id);
      for (auto [from, to] : runs) startRun(obj, from, to, kDemand, false);
      toStart = pump();
    }
  }
  if (cancelled) {
    for (uint64_t i = first; i < last; ++i)
      done(i, {Status::error(ErrorKind::Cancelled, "the mount is closing"), false, nullptr});
    return;
  }
  launch(std::move(toStart));
  for (auto& [i, block] : ready) done(i, {Status::ok(), false, std::move(block)});
}

uint64_t BlockCache::prefetch(const ObjectRef& obj, uint64_t first, uint64_t last, std::shared_ptr<InFlight> inflight) {
  std::vector<std::shared_ptr<Job>> toStart;
  uint64_t i = first;
  {
    std::lock_guard lock(mutex_);
    if (closing_) return first;
    last = std::min(last, blockCount(obj));
    const uint64_t maxRun = readaheadRunBlocks(last > first ? last - first : 0, sizing_.partSize() / config_.blockSize);
    while (i < last) {
      if (entries_.count(keyOf(obj, i))) {
        ++i;
        continue;
      }
      uint64_t j = i + 1;
      while (j < last && j - i < maxRun && !entries_.count(keyOf(obj, j))) ++j;
      const uint64_t bytes = std::min(j * config_.blockSize, obj.size) - i * config_.blockSize;
      if (!budget_.tryReserve(bytes)) break;
      for (uint64_t k = i; k < j; ++k) entries_.try_emplace(keyOf(obj, k)).first->second.inflight = inflight;
      if (inflight) inflight->bytes += bytes;
      startRun(obj, i, j, kReadahead, true);
      i = j;
    }
    toStart = pump();
  }
  launch(std::move(toStart));
  return i;
}

void BlockCache::announce(std::vector<ObjectRef> files, uint64_t stream) {
  std::vector<std::shared_ptr<Job>> toStart;
  {
    std::lock_guard lock(mutex_);
    if (closing_) return;
    std::deque<Announced>& q = announced_[stream];
    for (ObjectRef& f : files) {
      bump(counters_.filesAnnounced);
      if (f.size == 0) {
        bump(counters_.filesSkipped);
        continue;
      }
      ++announcedIds_[f.id];
      ++announcedQueued_;
      q.push_back({std::move(f), 0, false});
    }
    if (q.empty()) announced_.erase(stream);
    toStart = pump();
  }
  launch(std::move(toStart));
}

void BlockCache::popAnnounced(std::map<uint64_t, std::deque<Announced>>::iterator stream) {
  Announced& a = stream->second.front();
  bump(a.started ? counters_.filesPrefetched : counters_.filesSkipped);
  auto id = announcedIds_.find(a.obj.id);
  if (--id->second == 0) {
    readBeforeTurn_.erase(id->first);
    announcedIds_.erase(id);
  }
  --announcedQueued_;
  stream->second.pop_front();
  if (stream->second.empty()) announced_.erase(stream);
}

void BlockCache::markUsed(Entry& e, uint64_t bytes) {
  e.used = true;
  if (!e.announced) return;
  announcedUnread_ -= bytes;
  bump(counters_.announcedBlocksUsed);
  if (e.firstAnnounced) bump(counters_.filesPrefetchUsed);
}

void BlockCache::startRun(const ObjectRef& obj, uint64_t first, uint64_t last, Priority priority, bool reserved) {
  uint64_t netStart = last;
  const uint64_t maxRun = priority == kDemand ? last - first : std::max<uint64_t>(1, sizing_.partSize() / config_.blockSize);
  for (uint64_t i = first; i < last; ++i) {
    Entry& e = entries_.at(keyOf(obj, i));
    const uint64_t length = blockLength(obj, i);
    if (reserved) e.reserved = length;
    if (priority == kAnnounced) {
      e.announced = true;
      announcedUnread_ += length;
    }
    std::string diskName = disk_ ? disk_->nameOf(diskIdOf(obj, i)) : std::string();
    if (disk_ && disk_->has(diskName)) {
      if (netStart < i) queueNetwork(obj, netStart, i, priority);
      netStart = last;
      // A disk read starts at once: a demand one takes its memory now.
      if (!reserved) {
        budget_.reserve(length);
        e.reserved = length;
      }
      post([this, obj, i, name = std::move(diskName)] { readFromDisk(obj, i, name); });
      continue;
    }
    if (netStart == last) netStart = i;
    if (i + 1 - netStart == maxRun) {
      queueNetwork(obj, netStart, i + 1, priority);
      netStart = last;
    }
  }
  if (netStart < last) queueNetwork(obj, netStart, last, priority);
}

void BlockCache::queueNetwork(const ObjectRef& obj, uint64_t first, uint64_t last, Priority priority) {
  auto job = std::make_shared<Job>();
  job->obj = obj;
  job->first = first;
  job->last = last;
  job->priority = priority;
  for (uint64_t i = first; i < last; ++i) entries_.at(keyOf(obj, i)).job = job;
  queues_[priority].push_back(std::move(job));
}

void BlockCache::promote(const std::shared_ptr<Job>& job) {
  auto& q = queues_[job->priority];
  auto it = std::find(q.begin(), q.end(), job);
  if (it == q.end()) return;
  q.erase(it);
  job->priority = kDemand;
  queues_[kDemand].push_back(job);
}

bool BlockCache::pumpAnnounced() {
  const uint64_t maxRun = std::max<uint64_t>(1, sizing_.partSize() / config_.blockSize);
  const double cap = static_cast<double>(budget_.limit()) * kMaxAnnouncedShare;
  while (!announced_.empty()) {
    // Streams take turns: the one at turn_, else the first after it, else the first.
    auto stream = announced_.lower_bound(turn_);
    if (stream == announced_.end()) stream = announced_.begin();
    Announced& a = stream->second.front();
    const uint64_t count = blockCount(a.obj);
    if (!a.started && readBeforeTurn_.count(a.obj.id)) a.next = count;
    while (a.next < count && entries_.count(keyOf(a.obj, a.next))) ++a.next;
    if (a.next >= count) {
      popAnnounced(stream);
      continue;
    }
    uint64_t j = a.next + 1;
    while (j < count && j - a.next < maxRun && !entries_.count(keyOf(a.obj, j))) ++j;
    const uint64_t bytes = std::min(j * config_.blockSize, a.obj.size) - a.next * config_.blockSize;
    // Waits its turn: until readers use what was fetched ahead, or the budget has room.
    if (static_cast<double>(announcedUnread_ + bytes) > cap || !budget_.tryReserve(bytes, kMaxAnnouncedShare)) return false;
    for (uint64_t k = a.next; k < j; ++k) entries_.try_emplace(keyOf(a.obj, k));
    const ObjectRef obj = a.obj;
    const uint64_t from = a.next;
    const bool first = !a.started;
    a.next = j;
    a.started = true;
    turn_ = stream->first + 1;
    // Done with the file once its last run is out: it no longer counts as waiting.
    if (j >= count) popAnnounced(stream);
    startRun(obj, from, j, kAnnounced, true);
    if (first) entries_.at(keyOf(obj, from)).firstAnnounced = true;
    return true;
  }
  return false;
}

std::vector<std::shared_ptr<BlockCache::Job>> BlockCache::pump() {
  std::vector<std::shared_ptr<Job>> out;
  while (!closing_ && running_ < config_.maxConnections) {
    std::shared_ptr<Job> job;
    for (auto& q : queues_) {
      if (q.empty()) continue;
      job = std::move(q.front());
      q.pop_front();
      break;
    }
    if (!job) {
      if (!pumpAnnounced()) break;
      continue;
    }
    job->started = true;
    ++running_;
    for (uint64_t i = job->first; i < job->last; ++i) {
      Entry& e = entries_.at(keyOf(job->obj, i));
      e.job.reset();
      // A demand fetch takes its memory when it starts, so that a hundred readers queued at once
      // do not push the budget a hundred blocks over.
      if (e.reserved == 0) {
        e.reserved = blockLength(job->obj, i);
        budget_.reserve(e.reserved);
      }
    }
    out.push_back(std::move(job));
  }
  return out;
}

void BlockCache::launch(std::vector<std::shared_ptr<Job>> jobs) {
  for (auto& job : jobs) {
    const uint64_t bs = config_.blockSize;
    const uint64_t start = job->first * bs;
    const uint64_t length = std::min(job->last * bs, job->obj.size) - start;
    bump(counters_.getRequests);
    if (disk_) bump(counters_.diskMisses, job->last - job->first);
    const ObjectPin pin = job->obj.pin->get();
    engine_.fetch(pin, start, length, std::make_shared<Sink>(*this, job));
  }
}

void BlockCache::jobDone() {
  std::vector<std::shared_ptr<Job>> toStart;
  {
    std::lock_guard lock(mutex_);
    --running_;
    toStart = pump();
  }
  launch(std::move(toStart));
}

void BlockCache::readFromDisk(ObjectRef obj, uint64_t index, std::string diskName) {
  std::shared_ptr<Block> buf;
  try {
    buf = pool_->acquire(blockLength(obj, index));
  } catch (const std::bad_alloc&) {
    fail(obj, index, Status::error(ErrorKind::NoMemory, "no memory for a block"), false);
    return;
  }
  if (disk_->read(diskName, buf->bytes()) != DiskTier::ReadOutcome::Hit) return refetch(obj, index);
  if (obj.leaves) {
    if (auto bad = checkLeaves(*obj.leaves, config_.blockSize, index, buf->bytes())) {
      reportMismatch(obj, index, *bad, "disk cache block does not match the manifest; dropping it and fetching it again", "disk");
      disk_->drop(diskName);
      return refetch(obj, index);
    }
    bump(counters_.blocksVerified);
  }
  complete(obj, index, std::move(buf), false);
}

void BlockCache::reportMismatch(const ObjectRef& obj, uint64_t index, const LeafMismatch& bad, const char* what,
                                const char* from) {
  bump(counters_.verifyFailures);
  log_.log(LogLevel::Error, what,
           {{"key", obj.name},
            {"block", static_cast<int64_t>(index)},
            {"leaf", static_cast<int64_t>(bad.leaf)},
            {"expected", bad.expected},
            {"actual", bad.actual},
            {"from", std::string(from)}});
}

void BlockCache::refetch(const ObjectRef& obj, uint64_t index) {
  std::vector<std::shared_ptr<Job>> toStart;
  bool cancelled = false;
  {
    std::lock_guard lock(mutex_);
    auto it = entries_.find(keyOf(obj, index));
    if (it == entries_.end() || it->second.block) return;
    if (closing_) {
      cancelled = true;
    } else {
      const Priority p = it->second.wanted ? kDemand : it->second.announced ? kAnnounced : kReadahead;
      queueNetwork(obj, index, index + 1, p);
      toStart = pump();
    }
  }
  if (cancelled) return fail(obj, index, Status::error(ErrorKind::Cancelled, "the mount is closing"), false);
  launch(std::move(toStart));
}

void BlockCache::deliver(const ObjectRef& obj, uint64_t index, std::shared_ptr<Block> block, bool fromNetwork) {
  if (obj.leaves) {
    if (auto bad = checkLeaves(*obj.leaves, config_.blockSize, index, block->bytes())) {
      reportMismatch(obj, index, *bad, "block does not match the manifest; failing its reads with EIO, not caching it", "o3");
      fail(obj, index,
           Status::error(ErrorKind::Integrity, obj.name + " block " + std::to_string(index) + ": leaf " +
                                                   std::to_string(bad->leaf) + " has sha256 " + bad->actual +
                                                   ", the manifest says " + bad->expected),
           true);
      return;
    }
    bump(counters_.blocksVerified);
  }
  complete(obj, index, std::move(block), fromNetwork);
}

void BlockCache::complete(const ObjectRef& obj, uint64_t index, std::shared_ptr<const Block> block, bool fromNetwork) {
  std::vector<std::pair<uint64_t, BlockCallback>> waiters;
  {
    std::lock_guard lock(mutex_);
    auto it = entries_.find(keyOf(obj, index));
    if (it == entries_.end() || it->second.block) return;
    Entry& e = it->second;
    budget_.release(e.reserved);
    e.reserved = 0;
    settle(e, blockLength(obj, index));
    e.block = block;
    held_ += block->size();
    lru_.push_front(&it->first);
    e.lru = lru_.begin();
    waiters.swap(e.waiters);
    if (!waiters.empty()) markUsed(e, block->size());
    if (fromNetwork) {
      bump(counters_.blocksFetched);
      bump(counters_.bytesFetched, block->size());
      if (!e.wanted) bump(counters_.blocksPrefetched);
    }
  }
  if (fromNetwork && disk_) disk_->write(disk_->nameOf(diskIdOf(obj, index)), block);
  for (auto& [i, cb] : waiters) cb(i, {Status::ok(), false, block});
}

void BlockCache::fail(const ObjectRef& obj, uint64_t index, const Status& status, bool leafMismatch) {
  std::vector<std::pair<uint64_t, BlockCallback>> waiters;
  {
    std::lock_guard lock(mutex_);
    auto it = entries_.find(keyOf(obj, index));
    if (it == entries_.end() || it->second.block) return;
    Entry& e = it->second;
    budget_.release(e.reserved);
    settle(e, blockLength(obj, index));
    if (e.announced && !e.used) announcedUnread_ -= blockLength(obj, index);
    waiters.swap(e.waiters);
    entries_.erase(it);
  }
  for (auto& [i, cb] : waiters) cb(i, {status, leafMismatch, nullptr});
}

void BlockCache::settle(Entry& e, uint64_t bytes) {
  if (!e.inflight) return;
  e.inflight->bytes -= bytes;
  e.inflight.reset();
}

void BlockCache::close() {
  std::vector<std::shared_ptr<Job>> queued;
  {
    std::lock_guard lock(mutex_);
    closing_ = true;
    announced_.clear();
    announcedQueued_ = 0;
    announcedIds_.clear();
    readBeforeTurn_.clear();
    for (auto& q : queues_) {
      for (auto& j : q) queued.push_back(std::move(j));
      q.clear();
    }
  }
  const Status cancelled = Status::error(ErrorKind::Cancelled, "the mount is closing");
  for (auto& j : queued)
    for (uint64_t i = j->first; i < j->last; ++i) fail(j->obj, i, cancelled, false);
}

BlockCacheStats BlockCache::stats() const {
  std::lock_guard lock(mutex_);
  BlockCacheStats s;
  s.budgetBytes = budget_.limit();
  s.cacheBytes = held_;
  s.inflightBytes = budget_.inflightBytes();
  s.peakUsedBytes = budget_.peakBytes();
  s.overflowBuffers = pool_->overflow();
  for (const auto& q : queues_) s.queuedJobs += q.size();
  s.runningJobs = static_cast<uint64_t>(running_);
  s.announcedFiles = announcedQueued_;
  return s;
}

}  // namespace o3mount
