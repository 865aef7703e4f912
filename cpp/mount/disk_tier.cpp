#include "mount/disk_tier.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "mount/leaf_verifier.h"
#include "thread_pool.h"

namespace o3mount {

namespace {

constexpr uint32_t kMagic = 0x4f334d42;  // "O3MB"

void putU32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint32_t getU32(const uint8_t* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(p[i]) << (8 * i);
  return v;
}

// CRC-32 (zlib's, as node:zlib's crc32) of the block's name, continued over its data.
uint32_t checksum(const std::string& name, std::span<const std::byte> data) {
  uLong crc = crc32(0L, reinterpret_cast<const Bytef*>(name.data()), static_cast<uInt>(name.size()));
  // zlib takes lengths as uInt; a block is at most 64 MiB, but feed it in pieces all the same.
  for (size_t off = 0; off < data.size();) {
    const size_t n = std::min<size_t>(data.size() - off, 1u << 30);
    crc = crc32(crc, reinterpret_cast<const Bytef*>(data.data() + off), static_cast<uInt>(n));
    off += n;
  }
  return static_cast<uint32_t>(crc);
}

std::string errnoText(int err) { return std::string(std::strerror(err)); }

bool isHexName(const std::string& s) {
  return s.size() == 64 &&
         std::all_of(s.begin(), s.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

}  // namespace

std::unique_ptr<DiskTier> DiskTier::open(const std::string& dir, uint64_t maxBytes, std::string ns, Counters& counters,
                                         LogSink& log) {
  const std::string blocks = dir + "/blocks";
  // mkdir -p, each new level 0700.
  for (size_t pos = 1; pos != std::string::npos;) {
    pos = blocks.find('/', pos + 1);
    const std::string part = blocks.substr(0, pos);
    if (mkdir(part.c_str(), 0700) != 0 && errno != EEXIST)
      throw DiskTierError("cannot create cache directory " + dir + ": " + errnoText(errno) + "; check --cache-dir");
  }
  struct stat st {};
  if (lstat(dir.c_str(), &st) != 0)
    throw DiskTierError("cannot create cache directory " + dir + ": " + errnoText(errno) + "; check --cache-dir");
  if (!S_ISDIR(st.st_mode)) throw DiskTierError("cache directory " + dir + " is not a directory; choose another --cache-dir");
  if (st.st_uid != geteuid())
    throw DiskTierError("cache directory " + dir + " belongs to uid " + std::to_string(st.st_uid) +
                        ", not to you; choose another --cache-dir");
  // Cached blocks are the bucket's bytes: no other user may read them.
  if ((st.st_mode & 07777) != 0700 && chmod(dir.c_str(), 0700) != 0)
    throw DiskTierError("cannot make cache directory " + dir + " private (mode 0700): " + errnoText(errno));

  const std::string lockPath = dir + "/lock";
  const int fd = ::open(lockPath.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) throw DiskTierError("cannot lock cache directory " + dir + ": " + errnoText(errno));
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    char holder[32] = {0};
    const ssize_t n = pread(fd, holder, sizeof holder - 1, 0);
    ::close(fd);
    if (err == EWOULDBLOCK)
      throw DiskTierError("cache directory " + dir + " is in use by process " + (n > 0 ? std::string(holder, n) : "?") +
                          "; give each mount its own --cache-dir");
    throw DiskTierError("cannot lock cache directory " + dir + ": " + errnoText(err));
  }
  // The holder's pid, for the message above; the flock itself is what excludes, and it goes away
  // with the process however it ends.
  const std::string pid = std::to_string(getpid());
  if (ftruncate(fd, 0) != 0 || pwrite(fd, pid.data(), pid.size(), 0) != static_cast<ssize_t>(pid.size())) {
    // Only the message above would lack the pid.
  }
  std::unique_ptr<DiskTier> tier(new DiskTier(dir, maxBytes, std::move(ns), counters, log, fd));
  tier->scan();
  return tier;
}

DiskTier::DiskTier(std::string dir, uint64_t maxBytes, std::string ns, Counters& counters, LogSink& log, int lockFd)
    : dir_(std::move(dir)), maxBytes_(maxBytes), ns_(std::move(ns)), counters_(counters), log_(log), lockFd_(lockFd) {
  writerThread_ = std::thread([this] {
    o3::nameThisThread("o3-disk-writer");
    writer();
  });
}

DiskTier::~DiskTier() {
  {
    std::lock_guard lock(writeMutex_);
    stopping_ = true;
  }
  writeWake_.notify_all();
  writerThread_.join();
  unlinkPending();
  ::close(lockFd_);
}

std::string DiskTier::nameOf(const std::string& id) const {
  std::string s = ns_;
  s.push_back('\0');
  s += id;
  return hex(sha256(std::as_bytes(std::span(s.data(), s.size()))));
}

std::string DiskTier::pathOf(const std::string& name) const { return dir_ + "/blocks/" + name.substr(0, 2) + "/" + name; }

void DiskTier::scan() {
  struct Found {
    std::string name;
    uint64_t size;
    int64_t mtimeNs;
  };
  std::vector<Found> found;
  const std::string root = dir_ + "/blocks";
  DIR* top = opendir(root.c_str());
  if (!top) throw DiskTierError("cannot read cache directory " + root + ": " + errnoText(errno));
  while (dirent* sub = readdir(top)) {
    const std::string subName = sub->d_name;
    if (subName == "." || subName == "..") continue;
    const std::string subPath = root + "/" + subName;
    DIR* d = opendir(subPath.c_str());
    if (!d) continue;
    while (dirent* e = readdir(d)) {
      const std::string name = e->d_name;
      const std::string p = subPath + "/" + name;
      if (name.size() > 4 && name.compare(name.size() - 4, 4, ".tmp") == 0) {
        // A write cut short by a crash.
        unlink(p.c_str());
        continue;
      }
      struct stat st {};
      if (!isHexName(name) || name.compare(0, 2, subName) != 0 || lstat(p.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
      found.push_back({name, static_cast<uint64_t>(st.st_size), st.st_mtim.tv_sec * 1'000'000'000LL + st.st_mtim.tv_nsec});
    }
    closedir(d);
  }
  closedir(top);
  // Oldest first, so that the most recently written blocks end up most recently used.
  std::sort(found.begin(), found.end(), [](const Found& a, const Found& b) { return a.mtimeNs < b.mtimeNs; });
  {
    std::lock_guard lock(mutex_);
    for (const Found& f : found) index(f.name, f.size);
  }
  unlinkPending();
  log_.log(LogLevel::Info, "disk cache opened",
           {{"dir", dir_}, {"blocks", static_cast<int64_t>(byName_.size())}, {"bytes", static_cast<int64_t>(bytes())}});
}

void DiskTier::index(const std::string& name, uint64_t size) {
  auto it = byName_.find(name);
  if (it != byName_.end()) {
    bytes_ -= it->second->second;
    lru_.erase(it->second);
    byName_.erase(it);
  }
  lru_.emplace_front(name, size);
  byName_[name] = lru_.begin();
  bytes_ += size;
  while (bytes_ > maxBytes_ && lru_.size() > 1) {
    auto& [victim, victimSize] = lru_.back();
    bytes_ -= victimSize;
    byName_.erase(victim);
    unlinkLater(std::move(victim));
    lru_.pop_back();
  }
}

void DiskTier::unlinkLater(std::string name) { toUnlink_.push_back(std::move(name)); }

void DiskTier::unlinkPending() {
  std::vector<std::string> names;
  {
    std::lock_guard lock(mutex_);
    names.swap(toUnlink_);
  }
  for (const std::string& n : names) unlink(pathOf(n).c_str());
}

bool DiskTier::has(const std::string& name) const {
  std::lock_guard lock(mutex_);
  return byName_.count(name) != 0;
}

uint64_t DiskTier::bytes() const {
  std::lock_guard lock(mutex_);
  return bytes_;
}

void DiskTier::drop(const std::string& name) {
  {
    std::lock_guard lock(mutex_);
    auto it = byName_.find(name);
    if (it == byName_.end()) return;
    bytes_ -= it->second->second;
    lru_.erase(it->second);
    byName_.erase(it);
    unlinkLater(name);
  }
  unlinkPending();
}

DiskTier::ReadOutcome DiskTier::read(const std::string& name, std::span<std::byte> into) {
  {
    std::lock_guard lock(mutex_);
    auto it = byName_.find(name);
    if (it == byName_.end()) return ReadOutcome::Absent;
    lru_.splice(lru_.begin(), lru_, it->second);
  }
  const std::string path = pathOf(name);
  const int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    // Evicted meanwhile, or deleted by hand.
    drop(name);
    return ReadOutcome::Absent;
  }
  struct stat st {};
  uint8_t header[kHeaderBytes];
  iovec iov[2] = {{header, kHeaderBytes}, {into.data(), into.size()}};
  const bool statOk = fstat(fd, &st) == 0;
  const ssize_t got = statOk ? preadv(fd, iov, 2, 0) : -1;
  ::close(fd);
  const uint64_t want = kHeaderBytes + into.size();
  const bool ok = statOk && static_cast<uint64_t>(st.st_size) == want && got == static_cast<ssize_t>(want) &&
                  getU32(header) == kMagic && getU32(header + 4) == into.size() && getU32(header + 8) == checksum(name, into);
  if (!ok) {
    bump(counters_.diskCorrupt);
    log_.log(LogLevel::Warn, "disk cache block failed its checksum; deleting it and fetching again",
             {{"block", name}, {"file", path}});
    drop(name);
    return ReadOutcome::Corrupt;
  }
  bump(counters_.diskHits);
  return ReadOutcome::Hit;
}

bool DiskTier::write(const std::string& name, std::shared_ptr<const Block> block) {
  if (has(name)) return false;
  {
    std::lock_guard lock(writeMutex_);
    if (stopping_) return false;
    if (pendingWriteBytes_ + block->size() > kMaxPendingWriteBytes) {
      bump(counters_.diskWritesSkipped);
      return false;
    }
    pendingWriteBytes_ += block->size();
    writes_.emplace_back(name, std::move(block));
  }
  writeWake_.notify_one();
  return true;
}

void DiskTier::flush() {
  std::unique_lock lock(writeMutex_);
  writeIdle_.wait(lock, [this] { return writes_.empty() && !writing_; });
}

void DiskTier::writer() {
  for (;;) {
    std::pair<std::string, std::shared_ptr<const Block>> job;
    {
      std::unique_lock lock(writeMutex_);
      writeWake_.wait(lock, [this] { return stopping_ || !writes_.empty(); });
      if (writes_.empty()) return;
      job = std::move(writes_.front());
      writes_.pop_front();
      writing_ = true;
    }
    writeOne(job.first, *job.second);
    unlinkPending();
    {
      std::lock_guard lock(writeMutex_);
      pendingWriteBytes_ -= job.second->size();
      writing_ = false;
    }
    job.second.reset();
    writeIdle_.notify_all();
  }
}

void DiskTier::writeOne(const std::string& name, const Block& block) {
  const std::string sub = dir_ + "/blocks/" + name.substr(0, 2);
  if (mkdir(sub.c_str(), 0700) != 0 && errno != EEXIST) {
    log_.log(LogLevel::Warn, "cannot write a block to the disk cache", {{"code", errnoText(errno)}, {"file", sub}});
    return;
  }
  const std::string path = sub + "/" + name;
  const std::string tmp = path + "." + std::to_string(getpid()) + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) {
    log_.log(LogLevel::Warn, "cannot write a block to the disk cache", {{"code", errnoText(errno)}, {"file", tmp}});
    return;
  }
  uint8_t header[kHeaderBytes] = {0};
  const auto data = block.bytes();
  putU32(header, kMagic);
  putU32(header + 4, static_cast<uint32_t>(data.size()));
  putU32(header + 8, checksum(name, data));
  // One writev; a short write (disk full) is an error, not retried: the block is simply not kept.
  iovec iov[2] = {{header, kHeaderBytes}, {const_cast<std::byte*>(data.data()), data.size()}};
  const ssize_t wrote = writev(fd, iov, 2);
  const int err = errno;
  const bool ok = ::close(fd) == 0 && wrote == static_cast<ssize_t>(kHeaderBytes + data.size());
  if (!ok || rename(tmp.c_str(), path.c_str()) != 0) {
    log_.log(LogLevel::Warn, "cannot write a block to the disk cache",
             {{"code", errnoText(wrote < 0 ? err : errno)}, {"file", path}});
    unlink(tmp.c_str());
    return;
  }
  bump(counters_.diskWrites);
  std::lock_guard lock(mutex_);
  index(name, kHeaderBytes + data.size());
}

}  // namespace o3mount
