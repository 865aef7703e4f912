// The filesystem without a kernel: lookups, opens and reads as session.cpp hands them over, against
// a control plane that answers from another thread (as JavaScript does) and the fake store. Errors
// map to errno in one place; writes are refused; a read waiting on a silent server fails with EIO
// at its deadline; an object replaced while open fails reads and tells the control plane; an object
// replaced between lookups gets a new inode.
#include <fcntl.h>

#include <map>

#include "mount/filesystem.h"
#include "mount/tests/fake_store.h"
#include "mount/tests/support.h"

using namespace o3mount;
using namespace o3mount::test;

namespace {

constexpr uint64_t MiB = 1 << 20;

// Answers on a thread of its own, from a table of paths.
class FakeControl final : public ControlPlane {
 public:
  struct File {
    ObjectPin pin;
    std::shared_ptr<const Leaves> leaves;
  };
  std::map<std::string, File> files;
  std::map<std::string, std::vector<DirEntry>> dirs;
  Status openError = Status::ok();
  std::vector<std::string> invalidated() {
    std::lock_guard lock(mutex_);
    return invalidated_;
  }

  ~FakeControl() override {
    for (auto& t : threads_) t.join();
  }
  void lookup(const std::string& path, std::function<void(Status, std::optional<EntryInfo>)> done) override {
    later([this, path, done] {
      if (dirs.count(path)) return done(Status::ok(), EntryInfo{true, 0, 0, ""});
      auto it = files.find(path);
      if (it == files.end()) return done(Status::ok(), std::nullopt);
      done(Status::ok(), EntryInfo{false, it->second.pin.size, 1'700'000'000'123, it->second.pin.etag});
    });
  }
  void readdir(const std::string& path, std::function<void(Status, std::vector<DirEntry>)> done) override {
    later([this, path, done] {
      auto it = dirs.find(path);
      if (it == dirs.end()) return done(Status::error(ErrorKind::NotFound, path), {});
      done(Status::ok(), it->second);
    });
  }
  void open(const std::string& path, std::function<void(Status, OpenInfo)> done) override {
    later([this, path, done] {
      if (!openError) return done(openError, {});
      auto it = files.find(path);
      if (it == files.end()) return done(Status::error(ErrorKind::NotFound, path), {});
      done(Status::ok(), OpenInfo{it->second.pin, 1'700'000'000'123, it->second.leaves, it->second.pin.etag});
    });
  }
  void invalidate(const std::string& path) override {
    std::lock_guard lock(mutex_);
    invalidated_.push_back(path);
  }

 private:
  void later(std::function<void()> f) {
    std::lock_guard lock(mutex_);
    threads_.emplace_back(std::move(f));
  }
  std::mutex mutex_;
  std::vector<std::thread> threads_;
  std::vector<std::string> invalidated_;
};

template <class T>
struct Answer {
  std::promise<T> promise;
  std::future<T> future = promise.get_future();
  T get() {
    if (future.wait_for(std::chrono::seconds(20)) != std::future_status::ready) {
      ++failures;
      std::cerr << "no answer within 20 s" << std::endl;
      return T{};
    }
    return future.get();
  }
};

struct EntryResult {
  int err = -1;
  bool negative = false;
  Attr attr;
};
struct Entry : EntryReply {
  Answer<EntryResult> a;
  bool entry(const Attr& attr, double) override {
    a.promise.set_value({0, false, attr});
    return true;
  }
  void negative(double) override { a.promise.set_value({0, true, {}}); }
  void error(int err) override { a.promise.set_value({err, false, {}}); }
};
struct OpenResult {
  int err = -1;
  uint64_t fh = 0;
  bool keepCache = false;
};
struct Opened : OpenReply {
  Answer<OpenResult> a;
  bool open(uint64_t fh, bool keep) override {
    a.promise.set_value({0, fh, keep});
    return true;
  }
  void error(int err) override { a.promise.set_value({err, 0, false}); }
};
struct ReadResult {
  int err = -1;
  std::vector<std::byte> bytes;
};
struct Read : ReadReply {
  Answer<ReadResult> a;
  void data(std::span<const std::span<const std::byte>> pieces) override {
    ReadResult r{0, {}};
    for (auto p : pieces) r.bytes.insert(r.bytes.end(), p.begin(), p.end());
    a.promise.set_value(std::move(r));
  }
  void error(int err) override { a.promise.set_value({err, {}}); }
};
struct Attrs : AttrReply {
  Answer<EntryResult> a;
  void attr(const Attr& attr, double) override { a.promise.set_value({0, false, attr}); }
  void error(int err) override { a.promise.set_value({err, false, {}}); }
};
struct Dir : DirReply {
  std::vector<std::string> names;
  bool finished = false;
  int err = 0;
  size_t room = 1000;
  bool add(const std::string& name, const Attr&, uint64_t) override {
    if (names.size() == room) return false;
    names.push_back(name);
    return true;
  }
  void done() override { finished = true; }
  void error(int e) override { err = e; }
};

struct Rig {
  FakeStore store;
  FakeControl control;
  Counters counters;
  CollectingLog log;
  BdpSizing sizing{store, 4 * MiB, 64 * MiB, 64 * MiB};
  BlockCache cache{{MiB, 64 * MiB, 4, 2}, store, nullptr, sizing, counters, log};
  Deadlines deadlines;
  Filesystem fs;
  explicit Rig(std::chrono::milliseconds opTimeout = std::chrono::seconds(30))
      : deadlines(opTimeout), fs(FilesystemConfig{}, control, cache, sizing, deadlines, counters, log) {}
  ~Rig() {
    cache.close();
    store.close();
  }
  uint64_t lookup(uint64_t parent, const std::string& name) {
    auto e = std::make_shared<Entry>();
    fs.lookup(parent, name, e);
    return e->a.get().attr.ino;
  }
  OpenResult open(uint64_t ino, int flags = O_RDONLY) {
    auto o = std::make_shared<Opened>();
    fs.open(ino, flags, o);
    return o->a.get();
  }
  ReadResult read(uint64_t fh, uint64_t off, size_t size) {
    auto r = std::make_shared<Read>();
    fs.read(fh, off, size, r);
    return r->a.get();
  }
  EntryResult getattr(uint64_t ino) {
    auto a = std::make_shared<Attrs>();
    fs.getattr(ino, a);
    return a->a.get();
  }
};

void lookupsAndListings() {
  Rig rig;
  const auto body = randomBytes(3 * MiB + 17, 1);
  rig.control.files["/d/e.bin"] = {rig.store.put("d/e.bin", body), nullptr};
  rig.control.dirs["/d"] = {{"e.bin", false}, {"sub", true}};
  rig.control.dirs["/"] = {{"d", true}};
  auto d = std::make_shared<Entry>();
  rig.fs.lookup(InodeTable::kRoot, "d", d);
  const EntryResult dir = d->a.get();
  O3_CHECK_EQ(dir.err, 0);
  O3_CHECK(dir.attr.isDir && (dir.attr.mode & 0777) == 0555);
  auto f = std::make_shared<Entry>();
  rig.fs.lookup(dir.attr.ino, "e.bin", f);
  const EntryResult file = f->a.get();
  O3_CHECK_EQ(file.attr.size, body.size());
  O3_CHECK_EQ(file.attr.mode & 0777, 0444u);
  O3_CHECK_EQ(file.attr.mtimeMs, 1'700'000'000'123);
  O3_CHECK_EQ(*rig.fs.inodes().path(file.attr.ino), std::string("/d/e.bin"));
  // The same path, the same inode; a missing name is a negative entry.
  O3_CHECK_EQ(rig.lookup(dir.attr.ino, "e.bin"), file.attr.ino);
  auto missing = std::make_shared<Entry>();
  rig.fs.lookup(dir.attr.ino, "nope", missing);
  O3_CHECK(missing->a.get().negative);
  // Listing: ".", "..", then the entries, resumable at any offset.
  auto od = std::make_shared<Opened>();
  rig.fs.opendir(dir.attr.ino, od);
  const uint64_t dh = od->a.get().fh;
  Dir all;
  rig.fs.readdir(dh, 0, all);
  O3_CHECK((all.names == std::vector<std::string>{".", "..", "e.bin", "sub"}));
  Dir part;
  part.room = 1;
  rig.fs.readdir(dh, 2, part);
  O3_CHECK((part.names == std::vector<std::string>{"e.bin"}));
  rig.fs.releasedir(dh);
  Dir gone;
  rig.fs.readdir(dh, 0, gone);
  O3_CHECK_EQ(gone.err, EBADF);
  // Forgotten inodes go; the kernel then looks the name up again.
  rig.fs.forget(file.attr.ino, 2);
  O3_CHECK(!rig.fs.inodes().path(file.attr.ino).has_value());
}

void openAndRead() {
  Rig rig;
  const auto body = randomBytes(6 * MiB + 123, 2);
  rig.control.files["/big.bin"] = {rig.store.put("big.bin", body), nullptr};
  const uint64_t ino = rig.lookup(InodeTable::kRoot, "big.bin");
  O3_CHECK_EQ(rig.open(ino, O_WRONLY).err, EROFS);
  O3_CHECK_EQ(rig.open(ino, O_RDWR).err, EROFS);
  O3_CHECK_EQ(rig.open(ino, O_RDONLY | O_TRUNC).err, EROFS);
  const OpenResult o = rig.open(ino);
  O3_CHECK_EQ(o.err, 0);
  O3_CHECK(!o.keepCache);
  // Reads of every shape: across blocks, at block edges, past the end, up to 1 MiB each.
  std::mt19937 rng(3);
  std::vector<std::pair<uint64_t, size_t>> reads;
  for (int i = 0; i < 200; ++i) reads.emplace_back(rng() % body.size(), 1 + rng() % MiB);
  for (uint64_t b = 1; b <= 6; ++b) reads.insert(reads.end(), {{b * MiB - 5, 10}, {b * MiB - 1, 2}, {b * MiB, 1}});
  reads.insert(reads.end(), {{body.size() - 1, 10}, {body.size(), 10}, {body.size() + 5000, 10}, {0, MiB}});
  for (auto [off, len] : reads) {
    const ReadResult r = rig.read(o.fh, off, len);
    const uint64_t want = off >= body.size() ? 0 : std::min<uint64_t>(len, body.size() - off);
    if (r.err != 0 || r.bytes.size() != want ||
        !sameBytes(r.bytes, std::span(body).subspan(std::min<uint64_t>(off, body.size()), want))) {
      std::cerr << "read at " << off << " of " << len << " wrong" << std::endl;
      ++failures;
    }
  }
  O3_CHECK_EQ(rig.read(999, 0, 10).err, EBADF);
  // Read sequentially, the file streams: the window grows past its small start.
  const OpenResult seq = rig.open(ino);
  O3_CHECK(seq.keepCache);  // the same object as at the last open: the kernel keeps its pages
  for (uint64_t off = 0; off < 4 * MiB; off += 128 * 1024) rig.read(seq.fh, off, 128 * 1024);
  O3_CHECK(rig.fs.readaheadStats().maxWindowBytes >= 4 * MiB);
  O3_CHECK_EQ(rig.fs.openFiles(), 2u);
  rig.fs.release(seq.fh);
  rig.fs.release(o.fh);
  O3_CHECK_EQ(rig.fs.openFiles(), 0u);
  O3_CHECK_EQ(rig.counters.opens.load(), 2u);
  // Once a manifest names the file, the kernel drops what an unverified open cached, and keeps
  // what a verified one did.
  auto leaves = std::make_shared<Leaves>();
  for (uint64_t off = 0; off < body.size(); off += kLeafSize)
    leaves->push_back(sha256(std::span(body).subspan(off, std::min<uint64_t>(kLeafSize, body.size() - off))));
  rig.control.files["/big.bin"].leaves = leaves;
  const OpenResult verified = rig.open(ino);
  O3_CHECK(!verified.keepCache);
  O3_CHECK(rig.open(ino).keepCache);
  O3_CHECK(sameBytes(rig.read(verified.fh, 5 * MiB, 4096).bytes, std::span(body).subspan(5 * MiB, 4096)));
  O3_CHECK(rig.counters.blocksVerified.load() >= 1);
}

void errorsMapToErrno() {
  O3_CHECK_EQ(errnoOf(Status::ok()), 0);
  O3_CHECK_EQ(errnoOf(Status::error(ErrorKind::NotFound, "")), ENOENT);
  O3_CHECK_EQ(errnoOf(Status::error(ErrorKind::Auth, "")), EACCES);
  O3_CHECK_EQ(errnoOf(Status::error(ErrorKind::NoMemory, "")), ENOMEM);
  for (ErrorKind k : {ErrorKind::Integrity, ErrorKind::Stream, ErrorKind::Unreachable, ErrorKind::Timeout, ErrorKind::Cancelled})
    O3_CHECK_EQ(errnoOf(Status::error(k, "")), EIO);
  Rig rig;
  rig.control.files["/x"] = {rig.store.put("x", randomBytes(10, 4)), nullptr};
  const uint64_t ino = rig.lookup(InodeTable::kRoot, "x");
  // An open refused by the control plane (--verify required: Auth; a failed manifest load: Stream).
  rig.control.openError = Status::error(ErrorKind::Auth, "no manifest names x");
  O3_CHECK_EQ(rig.open(ino).err, EACCES);
  rig.control.openError = Status::error(ErrorKind::Stream, "manifest load timed out");
  O3_CHECK_EQ(rig.open(ino).err, EIO);
  rig.control.openError = Status::ok();
  O3_CHECK_EQ(rig.open(ino).err, 0);
  O3_CHECK_EQ(rig.open(12345).err, ENOENT);
}

void silentServerFailsAtTheDeadline() {
  Rig rig(std::chrono::milliseconds(300));
  rig.control.files["/stall.bin"] = {rig.store.put("stall.bin", randomBytes(4 * MiB, 5)), nullptr};
  const uint64_t fh = rig.open(rig.lookup(InodeTable::kRoot, "stall.bin")).fh;
  rig.store.hold(true);
  const auto t0 = std::chrono::steady_clock::now();
  const ReadResult r = rig.read(fh, 0, 4096);
  const auto took = std::chrono::steady_clock::now() - t0;
  O3_CHECK_EQ(r.err, EIO);
  O3_CHECK(took >= std::chrono::milliseconds(300));
  O3_CHECK_EQ(rig.counters.timeouts.load(), 1u);
  O3_CHECK_EQ(rig.log.count("no answer within 300 ms"), 1u);
  rig.store.hold(false);
  // Answered reads leave no deadline behind.
  const ReadResult ok = rig.read(fh, MiB, 4096);
  O3_CHECK_EQ(ok.err, 0);
  O3_CHECK(eventually([&] { return rig.deadlines.pending() == 0; }));
}

void replacedWhileOpen() {
  Rig rig;
  const auto v1 = randomBytes(24 * MiB, 6);
  rig.control.files["/replace.bin"] = {rig.store.put("replace.bin", v1), nullptr};
  const uint64_t fh = rig.open(rig.lookup(InodeTable::kRoot, "replace.bin")).fh;
  O3_CHECK(sameBytes(rig.read(fh, 0, 4096).bytes, std::span(v1).subspan(0, 4096)));
  rig.store.put("replace.bin", randomBytes(24 * MiB, 7));
  O3_CHECK_EQ(rig.read(fh, 20 * MiB, 4096).err, EIO);
  O3_CHECK_EQ(rig.log.count("replaced while open"), 1u);
  O3_CHECK(eventually([&] { return !rig.control.invalidated().empty(); }));
  O3_CHECK_EQ(rig.control.invalidated().at(0), std::string("/replace.bin"));
  O3_CHECK_EQ(rig.counters.readErrors.load(), 1u);
}

// The object at a path replaced between lookups: the new object gets an inode of its own, the old
// inode keeps its size for the open still reading it, and an open through the old inode is sent
// back to the kernel (ESTALE: look the path up again) rather than reading the new bytes into it.
void replacedBetweenLookups() {
  Rig rig;
  const auto v1 = randomBytes(5 * MiB, 8);
  const auto v2 = randomBytes(2 * MiB, 9);
  rig.control.files["/r.bin"] = {rig.store.put("r.bin", v1), nullptr};
  const uint64_t oldIno = rig.lookup(InodeTable::kRoot, "r.bin");
  O3_CHECK_EQ(rig.lookup(InodeTable::kRoot, "r.bin"), oldIno);
  const OpenResult first = rig.open(oldIno);
  O3_CHECK_EQ(first.err, 0);
  rig.control.files["/r.bin"] = {rig.store.put("r.bin", v2), nullptr};
  const uint64_t newIno = rig.lookup(InodeTable::kRoot, "r.bin");
  O3_CHECK(newIno != oldIno);
  O3_CHECK_EQ(*rig.fs.inodes().path(newIno), std::string("/r.bin"));
  O3_CHECK_EQ(rig.getattr(oldIno).attr.size, v1.size());
  O3_CHECK_EQ(rig.getattr(newIno).attr.size, v2.size());
  O3_CHECK_EQ(rig.open(oldIno).err, ESTALE);
  const OpenResult second = rig.open(newIno);
  O3_CHECK_EQ(second.err, 0);
  O3_CHECK(sameBytes(rig.read(second.fh, 0, 2 * MiB).bytes, std::span(v2)));
  // The kernel forgetting the old inode leaves the path on the new one.
  rig.fs.forget(oldIno, 2);
  O3_CHECK(!rig.fs.inodes().path(oldIno).has_value());
  O3_CHECK_EQ(rig.lookup(InodeTable::kRoot, "r.bin"), newIno);
}

}  // namespace

int main() {
  lookupsAndListings();
  openAndRead();
  errorsMapToErrno();
  silentServerFailsAtTheDeadline();
  replacedWhileOpen();
  replacedBetweenLookups();
  return test::finish("filesystem_test");
}
