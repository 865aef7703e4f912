// The mount's file operations, independent of FUSE so that tests drive them without a kernel
// (mountpoint-s3's lesson: a thin adapter over a core that tests can drive): inodes and paths,
// open files pinned to one object version, reads assembled from cached blocks with per-file
// readahead, deadlines, and the mapping of every error kind to errno, here and nowhere else.
// session.cpp adapts these to libfuse's low-level API.
//
// Lookups, getattr, opendir and open ask the control plane and answer when it does; read and
// release never leave C++, and a read whose blocks are cached is answered on the calling thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "mount/block_cache.h"
#include "mount/control_plane.h"
#include "mount/counters.h"
#include "mount/deadlines.h"
#include "mount/inode_table.h"
#include "mount/log_sink.h"
#include "mount/readahead.h"
#include "mount/sizing.h"

namespace o3mount {

struct Attr {
  uint64_t ino = 0;
  bool isDir = false;
  uint32_t mode = 0;  // with the file type bits
  uint32_t nlink = 1;
  uint32_t uid = 0, gid = 0;
  uint64_t size = 0;
  int64_t mtimeMs = 0;
  uint64_t blocks = 0;  // 512-byte units
  uint32_t blksize = 0;
};

struct StatfsInfo {
  uint32_t bsize = 4096, frsize = 4096, namemax = 255;
};

// How each operation answers; session.cpp implements them over fuse_req_t. Each is answered once.
// Errors are positive errno values.
class EntryReply {
 public:
  virtual ~EntryReply() = default;
  // False when the kernel no longer waits for the answer (the lookup it counted is then undone).
  virtual bool entry(const Attr& attr, double timeoutSec) = 0;
  virtual void negative(double timeoutSec) = 0;
  virtual void error(int err) = 0;
};
class AttrReply {
 public:
  virtual ~AttrReply() = default;
  virtual void attr(const Attr& attr, double timeoutSec) = 0;
  virtual void error(int err) = 0;
};
class OpenReply {
 public:
  virtual ~OpenReply() = default;
  // False when the kernel no longer waits (the handle is then released here).
  virtual bool open(uint64_t fh, bool keepCache) = 0;
  virtual void error(int err) = 0;
};
class ReadReply {
 public:
  virtual ~ReadReply() = default;
  // The bytes, as pieces of cached blocks in order (valid only during the call).
  virtual void data(std::span<const std::span<const std::byte>> pieces) = 0;
  virtual void error(int err) = 0;
};
// Synchronous, filled from a listing fetched at opendir.
class DirReply {
 public:
  virtual ~DirReply() = default;
  // False when the reply buffer is full (the entry was not added).
  virtual bool add(const std::string& name, const Attr& attr, uint64_t nextOffset) = 0;
  virtual void done() = 0;
  virtual void error(int err) = 0;
};

struct FilesystemConfig {
  uint32_t fileMode = 0444, dirMode = 0555;
  uint32_t uid = 0, gid = 0;
  // How long the kernel may keep entries and attributes (min(--metadata-ttl, 1 day)) and negative
  // entries (at most 60 s, so a new upload shows up).
  double attrTimeoutSec = 60;
  double negativeTimeoutSec = 60;
  uint64_t readaheadInitial = 2 << 20;
  uint64_t seekTolerance = 32 << 20;
};

struct ReadaheadStats {
  uint64_t streams = 0, maxWindowBytes = 0, totalWindowBytes = 0;
};

// The errno for an error kind of the byte path or the control plane; the one mapping there is.
int errnoOf(const Status& status);

class Filesystem {
 public:
  Filesystem(const FilesystemConfig& config, ControlPlane& control, BlockCache& cache, TransferSizing& sizing,
             Deadlines& deadlines, Counters& counters, LogSink& log);

  void lookup(uint64_t parent, const std::string& name, std::shared_ptr<EntryReply> reply);
  void forget(uint64_t ino, uint64_t nlookup);
  void getattr(uint64_t ino, std::shared_ptr<AttrReply> reply);
  void opendir(uint64_t ino, std::shared_ptr<OpenReply> reply);
  void readdir(uint64_t fh, uint64_t offset, DirReply& reply);
  void releasedir(uint64_t fh);
  void open(uint64_t ino, int flags, std::shared_ptr<OpenReply> reply);
  void read(uint64_t fh, uint64_t offset, size_t size, std::shared_ptr<ReadReply> reply);
  void release(uint64_t fh);
  StatfsInfo statfs() const { return {}; }

  // Files to fetch ahead of their readers, in this order (issue 21's announced order; the control
  // plane resolves paths to pins and digests first), as one client's `stream` (BlockCache::announce).
  struct Announced {
    std::string path;
    OpenInfo info;
  };
  void prefetch(std::vector<Announced> files, uint64_t stream);

  size_t openFiles() const;
  ReadaheadStats readaheadStats() const;
  const InodeTable& inodes() const { return inodes_; }

 private:
  struct OpenFile {
    OpenFile(std::string p, ObjectRef o, ReadaheadConfig ra) : path(std::move(p)), obj(std::move(o)), readahead(std::move(ra)) {}
    const std::string path;
    const ObjectRef obj;
    mutable std::mutex mutex;
    Readahead readahead;  // under mutex
    const std::shared_ptr<InFlight> inflight = std::make_shared<InFlight>();
  };
  struct ReadOp;
  friend struct ReadOp;

  Attr dirAttr(uint64_t ino) const;
  Attr attrOf(uint64_t ino, const EntryInfo& e) const;
  std::shared_ptr<OpenFile> file(uint64_t fh) const;
  void readFailed(const OpenFile& f, const BlockResult& r, uint64_t offset, uint64_t length);

  const FilesystemConfig config_;
  ControlPlane& control_;
  BlockCache& cache_;
  TransferSizing& sizing_;
  Deadlines& deadlines_;
  Counters& counters_;
  LogSink& log_;
  const int64_t mountedAtMs_;
  InodeTable inodes_;

  mutable std::mutex handlesMutex_;
  std::unordered_map<uint64_t, std::shared_ptr<OpenFile>> files_;
  std::unordered_map<uint64_t, std::shared_ptr<const std::vector<DirEntry>>> dirs_;
  uint64_t nextFh_ = 1;
};

}  // namespace o3mount
