#define FUSE_USE_VERSION 314
#include "mount/session.h"

#include <fuse3/fuse_lowlevel.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include <cerrno>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <shared_mutex>
#include <vector>

#include "thread_pool.h"

namespace o3mount {

// Replies pass through the gate: once the loop has ended, nothing is sent on a session being torn
// down (a late answer from the control plane, a block arriving after the unmount).
struct Session::Gate {
  std::shared_mutex mutex;
  bool closed = false;
  template <class F>
  void reply(F&& f) {
    std::shared_lock lock(mutex);
    if (!closed) f();
  }
  void close() {
    std::unique_lock lock(mutex);
    closed = true;
  }
};

namespace {

// libfuse's own messages (a failed mount says why) go to the mount's log while a session exists.
std::mutex gLogMutex;
LogSink* gLog = nullptr;
std::string gLastError;

void fuseLog(enum fuse_log_level level, const char* fmt, va_list ap) {
  char buf[512];
  vsnprintf(buf, sizeof buf, fmt, ap);
  std::string msg(buf);
  while (!msg.empty() && msg.back() == '\n') msg.pop_back();
  std::lock_guard lock(gLogMutex);
  if (level <= FUSE_LOG_ERR) gLastError = msg;
  if (gLog)
    gLog->log(level <= FUSE_LOG_ERR       ? LogLevel::Error
              : level <= FUSE_LOG_WARNING ? LogLevel::Warn
                                          : LogLevel::Debug,
              "libfuse: " + msg, {});
}

// Wakes the loop's main thread once the session is told to exit: libfuse's mt loop sleeps in
// sem_wait until a worker ends, and a worker only wakes for a request, which may never come. A
// signal interrupts sem_wait (never restarted, whatever SA_RESTART says). A real-time signal that
// nothing else in a Node process uses, sent to that one thread; its handler does nothing.
int wakeSignal() { return SIGRTMIN + 4; }
void onWake(int) {}

struct stat toStat(const Attr& a) {
  struct stat st {};
  st.st_ino = a.ino;
  st.st_mode = a.mode;
  st.st_nlink = a.nlink;
  st.st_uid = a.uid;
  st.st_gid = a.gid;
  st.st_size = static_cast<off_t>(a.size);
  st.st_blocks = static_cast<blkcnt_t>(a.blocks);
  st.st_blksize = static_cast<blksize_t>(a.blksize);
  const timespec t{static_cast<time_t>(a.mtimeMs / 1000), static_cast<long>((a.mtimeMs % 1000) * 1'000'000)};
  st.st_mtim = st.st_atim = st.st_ctim = t;
  return st;
}

template <class Base>
class FuseReply : public Base {
 public:
  FuseReply(fuse_req_t req, std::shared_ptr<Session::Gate> gate) : req_(req), gate_(std::move(gate)) {}
  void error(int err) override {
    gate_->reply([&] { fuse_reply_err(req_, err); });
  }

 protected:
  fuse_req_t req_;
  std::shared_ptr<Session::Gate> gate_;
};

class EntryOut final : public FuseReply<EntryReply> {
 public:
  using FuseReply::FuseReply;
  bool entry(const Attr& a, double timeout) override {
    fuse_entry_param e{};
    e.ino = a.ino;
    e.attr = toStat(a);
    e.attr_timeout = timeout;
    e.entry_timeout = timeout;
    bool ok = false;
    gate_->reply([&] { ok = fuse_reply_entry(req_, &e) == 0; });
    return ok;
  }
  void negative(double timeout) override {
    // Inode 0: the kernel remembers the name's absence for the timeout.
    fuse_entry_param e{};
    e.entry_timeout = timeout;
    gate_->reply([&] { fuse_reply_entry(req_, &e); });
  }
};

class AttrOut final : public FuseReply<AttrReply> {
 public:
  using FuseReply::FuseReply;
  void attr(const Attr& a, double timeout) override {
    const struct stat st = toStat(a);
    gate_->reply([&] { fuse_reply_attr(req_, &st, timeout); });
  }
};

class OpenOut final : public FuseReply<OpenReply> {
 public:
  OpenOut(fuse_req_t req, std::shared_ptr<Session::Gate> gate, const fuse_file_info& fi)
      : FuseReply(req, std::move(gate)), fi_(fi) {}
  bool open(uint64_t fh, bool keepCache) override {
    fi_.fh = fh;
    fi_.keep_cache = keepCache;
    bool ok = false;
    gate_->reply([&] { ok = fuse_reply_open(req_, &fi_) == 0; });
    return ok;
  }

 private:
  fuse_file_info fi_;
};

class ReadOut final : public FuseReply<ReadReply> {
 public:
  using FuseReply::FuseReply;
  void data(std::span<const std::span<const std::byte>> pieces) override {
    // Straight from the cached blocks: one writev to /dev/fuse, no copy in user space.
    std::vector<iovec> iov(pieces.size());
    for (size_t i = 0; i < pieces.size(); ++i) iov[i] = {const_cast<std::byte*>(pieces[i].data()), pieces[i].size()};
    gate_->reply([&] { fuse_reply_iov(req_, iov.data(), static_cast<int>(iov.size())); });
  }
};

class DirOut final : public FuseReply<DirReply> {
 public:
  DirOut(fuse_req_t req, std::shared_ptr<Session::Gate> gate, size_t size) : FuseReply(req, std::move(gate)), buf_(size) {}
  bool add(const std::string& name, const Attr& a, uint64_t nextOffset) override {
    const struct stat st = toStat(a);
    const size_t need = fuse_add_direntry(req_, nullptr, 0, name.c_str(), nullptr, 0);
    if (used_ + need > buf_.size()) return false;
    fuse_add_direntry(req_, buf_.data() + used_, buf_.size() - used_, name.c_str(), &st, static_cast<off_t>(nextOffset));
    used_ += need;
    return true;
  }
  void done() override {
    gate_->reply([&] { fuse_reply_buf(req_, buf_.data(), used_); });
  }

 private:
  std::vector<char> buf_;
  size_t used_ = 0;
};

}  // namespace

// The low-level operations: each adapts one request to the Filesystem.
struct Session::Ops {
  static Session& of(fuse_req_t req) { return *static_cast<Session*>(fuse_req_userdata(req)); }
  template <class Out, class... A>
  static std::shared_ptr<Out> reply(fuse_req_t req, A&&... a) {
    return std::make_shared<Out>(req, of(req).gate_, std::forward<A>(a)...);
  }

  static void init(void* userdata, fuse_conn_info* conn) {
    const Session& s = *static_cast<Session*>(userdata);
    // The same as the max_read mount option: libfuse refuses the session when the two differ.
    conn->max_read = kMaxRead;
    conn->max_background = s.config_.maxBackground;
    conn->congestion_threshold = s.config_.congestionThreshold;
    // Several reads of one file in flight at once (kernel readahead arrives in parallel).
    if (conn->capable & FUSE_CAP_ASYNC_READ) conn->want |= FUSE_CAP_ASYNC_READ;
  }
  static void lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
    of(req).fs_.lookup(parent, name, reply<EntryOut>(req));
  }
  static void forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
    of(req).fs_.forget(ino, nlookup);
    fuse_reply_none(req);
  }
  static void forgetMulti(fuse_req_t req, size_t count, fuse_forget_data* forgets) {
    for (size_t i = 0; i < count; ++i) of(req).fs_.forget(forgets[i].ino, forgets[i].nlookup);
    fuse_reply_none(req);
  }
  static void getattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info*) { of(req).fs_.getattr(ino, reply<AttrOut>(req)); }
  static void open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
    of(req).fs_.open(ino, fi->flags, reply<OpenOut>(req, *fi));
  }
  static void read(fuse_req_t req, fuse_ino_t, size_t size, off_t off, fuse_file_info* fi) {
    if (off < 0) return (void)fuse_reply_err(req, EINVAL);
    of(req).fs_.read(fi->fh, static_cast<uint64_t>(off), size, reply<ReadOut>(req));
  }
  static void release(fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
    of(req).fs_.release(fi->fh);
    fuse_reply_err(req, 0);
  }
  static void opendir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) { of(req).fs_.opendir(ino, reply<OpenOut>(req, *fi)); }
  static void readdir(fuse_req_t req, fuse_ino_t, size_t size, off_t off, fuse_file_info* fi) {
    if (off < 0) return (void)fuse_reply_err(req, EINVAL);
    DirOut out(req, of(req).gate_, size);
    of(req).fs_.readdir(fi->fh, static_cast<uint64_t>(off), out);
  }
  static void releasedir(fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
    of(req).fs_.releasedir(fi->fh);
    fuse_reply_err(req, 0);
  }
  static void statfs(fuse_req_t req, fuse_ino_t) {
    const StatfsInfo i = of(req).fs_.statfs();
    struct statvfs st {};
    st.f_bsize = i.bsize;
    st.f_frsize = i.frsize;
    st.f_namemax = i.namemax;
    fuse_reply_statfs(req, &st);
  }
  // Every operation that would change the bucket.
  static void setattr(fuse_req_t req, fuse_ino_t, struct stat*, int, fuse_file_info*) { fuse_reply_err(req, EROFS); }
  static void mknod(fuse_req_t req, fuse_ino_t, const char*, mode_t, dev_t) { fuse_reply_err(req, EROFS); }
  static void mkdir(fuse_req_t req, fuse_ino_t, const char*, mode_t) { fuse_reply_err(req, EROFS); }
  static void unlink(fuse_req_t req, fuse_ino_t, const char*) { fuse_reply_err(req, EROFS); }
  static void symlink(fuse_req_t req, const char*, fuse_ino_t, const char*) { fuse_reply_err(req, EROFS); }
  static void rename(fuse_req_t req, fuse_ino_t, const char*, fuse_ino_t, const char*, unsigned) { fuse_reply_err(req, EROFS); }
  static void link(fuse_req_t req, fuse_ino_t, fuse_ino_t, const char*) { fuse_reply_err(req, EROFS); }
  static void write(fuse_req_t req, fuse_ino_t, const char*, size_t, off_t, fuse_file_info*) { fuse_reply_err(req, EROFS); }
  static void setxattr(fuse_req_t req, fuse_ino_t, const char*, const char*, size_t, int) { fuse_reply_err(req, EROFS); }
  static void removexattr(fuse_req_t req, fuse_ino_t, const char*) { fuse_reply_err(req, EROFS); }
  static void create(fuse_req_t req, fuse_ino_t, const char*, mode_t, fuse_file_info*) { fuse_reply_err(req, EROFS); }
  static void fallocate(fuse_req_t req, fuse_ino_t, int, off_t, off_t, fuse_file_info*) { fuse_reply_err(req, EROFS); }

  static fuse_lowlevel_ops table() {
    fuse_lowlevel_ops ops{};
    ops.init = init;
    ops.lookup = lookup;
    ops.forget = forget;
    ops.forget_multi = forgetMulti;
    ops.getattr = getattr;
    ops.open = open;
    ops.read = read;
    ops.release = release;
    ops.opendir = opendir;
    ops.readdir = readdir;
    ops.releasedir = releasedir;
    ops.statfs = statfs;
    ops.setattr = setattr;
    ops.mknod = mknod;
    ops.mkdir = mkdir;
    ops.unlink = unlink;
    ops.rmdir = unlink;
    ops.symlink = symlink;
    ops.rename = rename;
    ops.link = link;
    ops.write = write;
    ops.setxattr = setxattr;
    ops.removexattr = removexattr;
    ops.create = create;
    ops.fallocate = fallocate;
    return ops;
  }
};

Session::Session(Filesystem& fs, const SessionConfig& config, LogSink& log)
    : fs_(fs), config_(config), log_(log), gate_(std::make_shared<Gate>()) {
  {
    std::lock_guard lock(gLogMutex);
    gLog = &log_;
    gLastError.clear();
  }
  fuse_set_log_func(fuseLog);
  static const bool handlerInstalled = [] {
    struct sigaction sa {};
    sa.sa_handler = onWake;
    sigemptyset(&sa.sa_mask);
    return sigaction(wakeSignal(), &sa, nullptr) == 0;
  }();
  if (!handlerInstalled) throw SessionError("cannot install the session's wake-up signal handler");

  // Options libfuse passes to the kernel; a comma would split one, so fsname has none.
  std::string opts = "ro,default_permissions,subtype=o3mount,max_read=" + std::to_string(kMaxRead) + ",fsname=" + config.fsname;
  if (config.allowOther) opts += ",allow_other";
  std::vector<std::string> argv{"o3mount", "-o", opts};
  if (config.debug) argv.push_back("-d");
  std::vector<char*> cargv;
  for (auto& a : argv) cargv.push_back(a.data());
  fuse_args args = FUSE_ARGS_INIT(static_cast<int>(cargv.size()), cargv.data());
  static const fuse_lowlevel_ops ops = Ops::table();
  se_ = fuse_session_new(&args, &ops, sizeof ops, this);
  fuse_opt_free_args(&args);
  const auto reason = [] {
    std::lock_guard lock(gLogMutex);
    return gLastError.empty() ? std::string("see the log") : gLastError;
  };
  if (!se_) throw SessionError("libfuse refused the session options: " + reason());
  if (fuse_session_mount(se_, config.mountpoint.c_str()) != 0) {
    fuse_session_destroy(se_);
    se_ = nullptr;
    throw SessionError(reason());
  }
}

Session::~Session() {
  exit();
  {
    std::lock_guard lock(mutex_);
    finished_ = true;
  }
  stopped_.notify_all();
  if (waker_.joinable()) waker_.join();
  if (se_) {
    gate_->close();
    fuse_session_unmount(se_);
    fuse_session_destroy(se_);
  }
  std::lock_guard lock(gLogMutex);
  if (gLog == &log_) gLog = nullptr;
}

int Session::run() {
  {
    std::lock_guard lock(mutex_);
    running_ = true;
    loopThread_ = pthread_self();
  }
  // libfuse's workers are started from this thread and inherit its name.
  o3::nameThisThread("o3-fuse");
  fuse_loop_config* loop = fuse_loop_cfg_create();
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  const unsigned workers = config_.workerThreads ? config_.workerThreads : cores;
  fuse_loop_cfg_set_max_threads(loop, workers);
  // Idle workers are kept: creating and ending threads per burst of requests costs more than they hold.
  fuse_loop_cfg_set_idle_threads(loop, workers);
  int rc = fuse_session_loop_mt(se_, loop);
  fuse_loop_cfg_destroy(loop);
  {
    std::lock_guard lock(mutex_);
    running_ = false;
    finished_ = true;
    // Ended by exit(): the loop reports the interruption, which is no error.
    if (exiting_) rc = 0;
  }
  stopped_.notify_all();
  gate_->close();
  fuse_session_unmount(se_);
  fuse_session_destroy(se_);
  se_ = nullptr;
  return rc;
}

void Session::exit() {
  std::lock_guard lock(mutex_);
  if (exiting_ || finished_) return;
  exiting_ = true;
  fuse_session_exit(se_);
  // Until run() has returned, wake its thread every 50 ms: a signal sent just before it starts
  // waiting would be lost.
  waker_ = std::thread([this] {
    o3::nameThisThread("o3-fuse-waker");
    std::unique_lock l(mutex_);
    while (!finished_) {
      if (running_) pthread_kill(loopThread_, wakeSignal());
      stopped_.wait_for(l, std::chrono::milliseconds(50));
    }
  });
}

}  // namespace o3mount
