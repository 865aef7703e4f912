#include "mount/filesystem.h"

#include <fcntl.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>

namespace o3mount {

namespace {

int64_t nowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// A byte range for messages.
std::string span(uint64_t offset, uint64_t length) { return "[" + std::to_string(offset) + ", +" + std::to_string(length) + "]"; }

}  // namespace

int errnoOf(const Status& status) {
  switch (status.kind) {
    case ErrorKind::Ok: return 0;
    case ErrorKind::NotFound: return ENOENT;
    case ErrorKind::Auth: return EACCES;
    case ErrorKind::NoMemory: return ENOMEM;
    case ErrorKind::Integrity:
    case ErrorKind::Stream:
    case ErrorKind::Unreachable:
    case ErrorKind::Timeout:
    case ErrorKind::Cancelled: return EIO;
  }
  return EIO;
}

// One FUSE read waiting for its blocks; answered once, by the last block to arrive, the first to
// fail, or its deadline, whichever comes first.
struct Filesystem::ReadOp {
  Filesystem& fs;
  std::shared_ptr<OpenFile> file;
  std::shared_ptr<ReadReply> reply;
  uint64_t offset, length, first;
  std::vector<std::shared_ptr<const Block>> blocks;
  std::atomic<size_t> remaining;
  std::atomic<bool> answered{false};
  // The deadline's id once started; kAnswered once answered (whoever comes second cancels it).
  static constexpr uint64_t kAnswered = UINT64_MAX;
  std::atomic<uint64_t> deadline{0};

  ReadOp(Filesystem& f, std::shared_ptr<OpenFile> file, std::shared_ptr<ReadReply> reply, uint64_t offset, uint64_t length,
         uint64_t first, uint64_t last)
      : fs(f),
        file(std::move(file)),
        reply(std::move(reply)),
        offset(offset),
        length(length),
        first(first),
        blocks(last - first),
        remaining(last - first) {}

  void arrived(uint64_t index, BlockResult r) {
    if (!r.status) return failed(r);
    blocks[index - first] = std::move(r.block);
    if (remaining.fetch_sub(1, std::memory_order_acq_rel) == 1) answer();
  }

  // Claims the answer; false when someone else gave it.
  bool claim() {
    if (answered.exchange(true)) return false;
    const uint64_t id = deadline.exchange(kAnswered);
    if (id != 0) fs.deadlines_.cancel(id);
    return true;
  }

  void answer() {
    if (!claim()) return;
    const uint64_t bs = fs.cache_.blockSize();
    std::vector<std::span<const std::byte>> pieces;
    pieces.reserve(blocks.size());
    for (size_t k = 0; k < blocks.size(); ++k) {
      const uint64_t start = (first + k) * bs;
      const uint64_t from = std::max(offset, start);
      const uint64_t to = std::min(offset + length, start + blocks[k]->size());
      pieces.push_back(blocks[k]->bytes().subspan(from - start, to - from));
    }
    bump(fs.counters_.bytesRead, length);
    reply->data(pieces);
    blocks.clear();
  }

  void failed(const BlockResult& r) {
    if (!claim()) return;
    fs.readFailed(*file, r, offset, length);
    reply->error(errnoOf(r.status));
  }

  void expired() {
    if (answered.exchange(true)) return;
    bump(fs.counters_.timeouts);
    bump(fs.counters_.readErrors);
    fs.log_.log(LogLevel::Error,
                "read " + file->path + " " + span(offset, length) + ": no answer within " +
                    std::to_string(fs.deadlines_.timeout().count()) + " ms",
                {{"path", file->path}});
    deadline.store(kAnswered);
    reply->error(EIO);
  }
};

Filesystem::Filesystem(const FilesystemConfig& config, ControlPlane& control, BlockCache& cache, TransferSizing& sizing,
                       Deadlines& deadlines, Counters& counters, LogSink& log)
    : config_(config),
      control_(control),
      cache_(cache),
      sizing_(sizing),
      deadlines_(deadlines),
      counters_(counters),
      log_(log),
      mountedAtMs_(nowMs()) {}

Attr Filesystem::dirAttr(uint64_t ino) const {
  Attr a;
  a.ino = ino;
  a.isDir = true;
  a.mode = S_IFDIR | config_.dirMode;
  a.nlink = 2;
  a.uid = config_.uid;
  a.gid = config_.gid;
  a.size = 4096;
  a.mtimeMs = mountedAtMs_;
  return a;
}

Attr Filesystem::attrOf(uint64_t ino, const EntryInfo& e) const {
  if (e.isDir) return dirAttr(ino);
  Attr a;
  a.ino = ino;
  a.mode = S_IFREG | config_.fileMode;
  a.nlink = 1;
  a.uid = config_.uid;
  a.gid = config_.gid;
  a.size = e.size;
  a.mtimeMs = e.mtimeMs;
  a.blocks = (e.size + 511) / 512;
  a.blksize = static_cast<uint32_t>(cache_.blockSize());
  return a;
}

void Filesystem::lookup(uint64_t parent, const std::string& name, std::shared_ptr<EntryReply> reply) {
  auto dir = inodes_.path(parent);
  if (!dir) return reply->error(ENOENT);
  const std::string path = InodeTable::childPath(*dir, name);
  control_.lookup(path, [this, path, reply](Status s, std::optional<EntryInfo> e) {
    if (!s) return reply->error(errnoOf(s));
    if (!e) return reply->negative(config_.negativeTimeoutSec);
    const uint64_t ino = inodes_.lookup(path, *e);
    if (!reply->entry(attrOf(ino, *e), config_.attrTimeoutSec)) inodes_.forget(ino, 1);
  });
}

void Filesystem::forget(uint64_t ino, uint64_t nlookup) { inodes_.forget(ino, nlookup); }

void Filesystem::getattr(uint64_t ino, std::shared_ptr<AttrReply> reply) {
  if (ino == InodeTable::kRoot) return reply->attr(dirAttr(ino), config_.attrTimeoutSec);
  auto named = inodes_.named(ino);
  if (!named) return reply->error(ENOENT);
  control_.lookup(named->path, [this, ino, named = *named, reply](Status s, std::optional<EntryInfo> e) {
    if (!s) return reply->error(errnoOf(s));
    if (!e) return reply->error(ENOENT);
    // Replaced since: this inode still names the object it was made for (an open may be reading
    // it), whose size the kernel must keep; the path's new object has an inode of its own.
    reply->attr(attrOf(ino, InodeTable::identityOf(*e) == named.identity ? *e : named.entry()), config_.attrTimeoutSec);
  });
}

void Filesystem::opendir(uint64_t ino, std::shared_ptr<OpenReply> reply) {
  auto path = inodes_.path(ino);
  if (!path) return reply->error(ENOENT);
  control_.readdir(*path, [this, reply](Status s, std::vector<DirEntry> entries) {
    if (!s) return reply->error(errnoOf(s));
    uint64_t fh;
    {
      std::lock_guard lock(handlesMutex_);
      fh = nextFh_++;
      dirs_[fh] = std::make_shared<const std::vector<DirEntry>>(std::move(entries));
    }
    if (!reply->open(fh, false)) releasedir(fh);
  });
}

void Filesystem::readdir(uint64_t fh, uint64_t offset, DirReply& reply) {
  std::shared_ptr<const std::vector<DirEntry>> entries;
  {
    std::lock_guard lock(handlesMutex_);
    auto it = dirs_.find(fh);
    if (it != dirs_.end()) entries = it->second;
  }
  if (!entries) return reply.error(EBADF);
  // Offsets: 0 and 1 are "." and "..", 2 + i the listing's i-th entry. The kernel only uses an
  // entry's type here; its inode comes from a lookup.
  constexpr uint64_t kUnknownIno = 0xffffffff;
  for (uint64_t off = offset; off < entries->size() + 2; ++off) {
    Attr a = dirAttr(kUnknownIno);
    std::string name;
    if (off < 2) {
      name = off == 0 ? "." : "..";
    } else {
      const DirEntry& e = (*entries)[off - 2];
      name = e.name;
      if (!e.isDir) a.mode = S_IFREG | config_.fileMode;
    }
    if (!reply.add(name, a, off + 1)) break;
  }
  reply.done();
}

void Filesystem::releasedir(uint64_t fh) {
  std::lock_guard lock(handlesMutex_);
  dirs_.erase(fh);
}

void Filesystem::open(uint64_t ino, int flags, std::shared_ptr<OpenReply> reply) {
  if ((flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC)) return reply->error(EROFS);
  auto named = inodes_.named(ino);
  if (!named) return reply->error(ENOENT);
  control_.open(named->path, [this, ino, path = named->path, identity = named->identity, reply](Status s, OpenInfo info) {
    if (!s) return reply->error(errnoOf(s));
    // The path names another object than this inode's (replaced since the kernel's lookup): its
    // bytes must not land in this inode's pages. ESTALE makes the kernel look the path up again and
    // retry the open once, on the new object's inode.
    if (InodeTable::identityOf(info.listedEtag, info.mtimeMs) != identity) return reply->error(ESTALE);
    auto f = std::make_shared<OpenFile>(
        path, ObjectRef::make(info.pin, path.substr(1), info.leaves),
        ReadaheadConfig{cache_.blockSize(), config_.readaheadInitial, config_.seekTolerance,
                        [this] { return sizing_.windowCap(openFiles()); }, [this] { return sizing_.windowFloor(); }});
    // The kernel keeps the pages it cached for this inode while the object is the same one, read
    // under the same verification and the same leaf digests: pages an earlier unverified open
    // cached never reach a later verified one. (Opens of one object alive at once share its pages.)
    std::string version = info.pin.etag + '\0' + std::to_string(info.pin.size) + '\0' + std::to_string(info.mtimeMs) + '\0';
    if (info.leaves && !info.leaves->empty())
      version += "V" + hex(sha256(std::as_bytes(std::span(*info.leaves))));
    else
      version += "U";
    const bool keepCache = inodes_.sameAsLastOpen(ino, version);
    uint64_t fh;
    {
      std::lock_guard lock(handlesMutex_);
      fh = nextFh_++;
      files_[fh] = std::move(f);
    }
    bump(counters_.opens);
    if (!reply->open(fh, keepCache)) release(fh);
  });
}

std::shared_ptr<Filesystem::OpenFile> Filesystem::file(uint64_t fh) const {
  std::lock_guard lock(handlesMutex_);
  auto it = files_.find(fh);
  return it == files_.end() ? nullptr : it->second;
}

void Filesystem::read(uint64_t fh, uint64_t offset, size_t size, std::shared_ptr<ReadReply> reply) {
  auto f = file(fh);
  if (!f) return reply->error(EBADF);
  bump(counters_.reads);
  const ObjectRef& obj = f->obj;
  if (offset >= obj.size || size == 0) return reply->data({});
  const uint64_t n = std::min<uint64_t>(size, obj.size - offset);
  const uint64_t bs = cache_.blockSize();
  const uint64_t first = offset / bs;
  const uint64_t last = (offset + n - 1) / bs + 1;
  auto op = std::make_shared<ReadOp>(*this, f, std::move(reply), offset, n, first, last);
  cache_.read(obj, first, last, [op](uint64_t index, BlockResult r) { op->arrived(index, std::move(r)); });
  if (!op->answered.load()) {
    std::weak_ptr<ReadOp> weak = op;
    const uint64_t id = deadlines_.start([weak] {
      if (auto o = weak.lock()) o->expired();
    });
    if (op->deadline.exchange(id) == ReadOp::kAnswered) deadlines_.cancel(id);
  }
  std::optional<PrefetchRange> ahead;
  {
    std::lock_guard lock(f->mutex);
    ahead = f->readahead.onRead(offset, n, obj.size, f->inflight->bytes.load(std::memory_order_relaxed));
  }
  if (!ahead) return;
  const uint64_t reached = cache_.prefetch(obj, ahead->from, ahead->to, f->inflight);
  std::lock_guard lock(f->mutex);
  f->readahead.issuedTo(reached, obj.size);
}

void Filesystem::readFailed(const OpenFile& f, const BlockResult& r, uint64_t offset, uint64_t length) {
  bump(counters_.readErrors);
  if (r.leafMismatch || r.status.kind == ErrorKind::Cancelled) return;  // logged where found; or the mount is closing
  if (r.status.kind == ErrorKind::Integrity) {
    log_.log(LogLevel::Error,
             "the object was replaced while open; failing the read (EIO) rather than mixing two versions; reopen the file to "
             "read the new one",
             {{"path", f.path}, {"key", f.obj.name}, {"etag", f.obj.pin->get().etag}, {"err", r.status.message}});
    control_.invalidate(f.path);
    return;
  }
  log_.log(LogLevel::Error, "read failed", {{"path", f.path}, {"range", span(offset, length)}, {"err", r.status.message}});
}

void Filesystem::release(uint64_t fh) {
  std::lock_guard lock(handlesMutex_);
  files_.erase(fh);
}

void Filesystem::prefetch(std::vector<Announced> files, uint64_t stream) {
  std::vector<ObjectRef> refs;
  refs.reserve(files.size());
  for (Announced& a : files) refs.push_back(ObjectRef::make(a.info.pin, a.path.substr(a.path.empty() ? 0 : 1), a.info.leaves));
  cache_.announce(std::move(refs), stream);
}

size_t Filesystem::openFiles() const {
  std::lock_guard lock(handlesMutex_);
  return files_.size();
}

ReadaheadStats Filesystem::readaheadStats() const {
  std::vector<std::shared_ptr<OpenFile>> open;
  {
    std::lock_guard lock(handlesMutex_);
    for (const auto& [fh, f] : files_) open.push_back(f);
  }
  ReadaheadStats s;
  for (const auto& f : open) {
    std::lock_guard lock(f->mutex);
    const uint64_t w = f->readahead.windowBytes();
    if (w > 0) ++s.streams;
    s.maxWindowBytes = std::max(s.maxWindowBytes, w);
    s.totalWindowBytes += w;
  }
  return s;
}

}  // namespace o3mount
