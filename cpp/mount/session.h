// The FUSE 3 session: libfuse's low-level API, the only place that includes fuse_lowlevel.h. It
// mounts, serves requests on fuse_session_loop_mt's worker threads (as many as the machine has
// cores: each waits in read(2) on /dev/fuse and hands the request to the Filesystem, which answers
// from the block cache at once or later from another thread), and replies straight from the cached
// blocks with fuse_reply_iov. Reads arrive in pieces of up to 1 MiB (max_read, and max_pages which
// libfuse 3 negotiates from its 1 MiB buffers), against libfuse 2's 128 KiB. The mount is read-only:
// every operation that would change the bucket answers EROFS.
#pragma once

#include <pthread.h>
#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>

#include <thread>

#include "mount/filesystem.h"
#include "mount/log_sink.h"

struct fuse_session;

namespace o3mount {

class SessionError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct SessionConfig {
  std::string mountpoint;
  std::string fsname;  // shown in /proc/mounts: "o3mount:bucket/prefix" (no commas)
  bool allowOther = false;
  bool debug = false;
  // The kernel's background request limits, as the kernel-tuning module names them: past the
  // congestion threshold the kernel stops queueing readahead.
  unsigned maxBackground = 64;
  unsigned congestionThreshold = 48;
  // FUSE worker threads; 0: one per core. They only dispatch (no request blocks a worker), so more
  // would only add context switches.
  unsigned workerThreads = 0;
};

class Session {
 public:
  // The largest read the kernel sends: 1 MiB, libfuse 3's buffer (FUSE_MAX_MAX_PAGES pages).
  static constexpr unsigned kMaxRead = 1 << 20;

  // Creates the session and mounts it; SessionError with libfuse's reason when that fails.
  Session(Filesystem& fs, const SessionConfig& config, LogSink& log);
  ~Session();  // unmounts if still mounted; waits for exit()'s helper
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Serves until the mount goes away: unmounted from outside (fusermount -u, umount) or exit().
  // Then answers nothing more and unmounts. Returns libfuse's status (0 when cleanly unmounted).
  int run();
  // From any thread, without blocking: makes run() return soon.
  void exit();

  // What every reply passes (session.cpp); public only so that the reply classes can name it.
  struct Gate;

 private:
  struct Ops;
  friend struct Ops;
  Filesystem& fs_;
  const SessionConfig config_;
  LogSink& log_;
  fuse_session* se_ = nullptr;
  std::shared_ptr<Gate> gate_;

  std::mutex mutex_;
  std::condition_variable stopped_;
  bool running_ = false;   // run() is in libfuse's loop
  bool finished_ = false;  // run() has returned, or never will (destroyed)
  bool exiting_ = false;
  pthread_t loopThread_{};
  std::thread waker_;
};

}  // namespace o3mount
