// The on-disk block tier (--cache-dir): one file per block under blocks/<2 hex>/<name>, where the
// name is the SHA-256 of the block's identity with the location's namespace in front (endpoint,
// bucket and prefix, then key, ETag, version id, block size and index). So a replaced object never
// meets its old blocks, one directory used for two locations never serves one's blocks for the
// other (equal keys and ETags there say nothing about equal bytes), and a remount finds its blocks
// again. A 16-byte header (magic "O3MB", length, CRC-32 of name and data, 0) precedes the data; a
// block that fails it is deleted and reported, never returned. The format is fs-driver's, so that
// caches written before the native byte path stay usable.
//
// The directory is created 0700 (the bucket's bytes are not for other users) and must belong to us;
// an exclusive flock on its `lock` file keeps a second mount out and goes away with the process,
// however it dies. The tier is bounded in bytes; the least recently used blocks are deleted first.
// Writes go through one writer thread; reads are synchronous (call them from a worker).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <list>
#include <memory>
#include <mutex>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>

#include "mount/block_pool.h"
#include "mount/counters.h"
#include "mount/log_sink.h"

namespace o3mount {

// The cache directory cannot be used; the message says what to do (the CLI exits with its own code).
class DiskTierError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class DiskTier {
 public:
  // Writes queued beyond this many bytes are dropped: the disk tier must not hold memory hostage
  // when the disk is slower than the network (each queued write keeps its block alive).
  static constexpr uint64_t kMaxPendingWriteBytes = 16 << 20;
  static constexpr size_t kHeaderBytes = 16;

  // Creates (mode 0700) or reopens `dir`, takes its lock and indexes the blocks already there.
  static std::unique_ptr<DiskTier> open(const std::string& dir, uint64_t maxBytes, std::string ns, Counters& counters,
                                        LogSink& log);
  ~DiskTier();  // finishes queued writes, then releases the lock
  DiskTier(const DiskTier&) = delete;
  DiskTier& operator=(const DiskTier&) = delete;

  // The file name of the block with identity `id` in this tier's namespace.
  std::string nameOf(const std::string& id) const;
  bool has(const std::string& name) const;

  enum class ReadOutcome { Hit, Absent, Corrupt };
  // Reads the block into `into` (exactly its length). Corrupt: it failed its checksum and is gone.
  ReadOutcome read(const std::string& name, std::span<std::byte> into);
  // Forgets a block and deletes its file (a caller found it wrong).
  void drop(const std::string& name);
  // Stores a block in the background; false when it was skipped (already there, or the writer is
  // too far behind). A failed write only costs a later refetch.
  bool write(const std::string& name, std::shared_ptr<const Block> block);
  // Blocks until the writes queued so far are done (tests).
  void flush();

  uint64_t bytes() const;
  const std::string& dir() const { return dir_; }

 private:
  DiskTier(std::string dir, uint64_t maxBytes, std::string ns, Counters& counters, LogSink& log, int lockFd);
  void scan();
  std::string pathOf(const std::string& name) const;
  void index(const std::string& name, uint64_t size);  // under mutex_; evicts past maxBytes_
  void writer();
  void writeOne(const std::string& name, const Block& block);
  void unlinkLater(std::string name);  // under mutex_
  void unlinkPending();                // outside mutex_

  const std::string dir_;
  const uint64_t maxBytes_;
  const std::string ns_;
  Counters& counters_;
  LogSink& log_;
  const int lockFd_;

  mutable std::mutex mutex_;
  std::list<std::pair<std::string, uint64_t>> lru_;  // most recent first
  std::unordered_map<std::string, std::list<std::pair<std::string, uint64_t>>::iterator> byName_;
  uint64_t bytes_ = 0;
  std::vector<std::string> toUnlink_;

  std::mutex writeMutex_;
  std::condition_variable writeWake_, writeIdle_;
  std::deque<std::pair<std::string, std::shared_ptr<const Block>>> writes_;
  uint64_t pendingWriteBytes_ = 0;
  bool writing_ = false;
  bool stopping_ = false;
  std::thread writerThread_;
};

}  // namespace o3mount
