// One mount, put together: the fetch engine, the disk tier, the block cache, the filesystem and
// the FUSE session, started in the order each needs the others and torn down in the reverse,
// so that nothing answers the kernel, touches a block or calls the control plane once it is gone.
// The binding (addon/mount/) drives it; tests build one with a fake engine.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "mount/block_cache.h"
#include "mount/control_plane.h"
#include "mount/counters.h"
#include "mount/deadlines.h"
#include "mount/disk_tier.h"
#include "mount/fetch_engine.h"
#include "mount/filesystem.h"
#include "mount/log_sink.h"
#include "mount/session.h"
#include "mount/sizing.h"

namespace o3mount {

struct MountConfig {
  SessionConfig session;
  FilesystemConfig fs;
  BlockCacheConfig cache;
  uint64_t partSize = 16 << 20;
  uint64_t readaheadMax = 256 << 20;
  std::chrono::milliseconds opTimeout{90'000};
  // The disk tier; empty: none.
  std::string cacheDir;
  uint64_t cacheDiskBytes = 0;
  // Endpoint, bucket and prefix: what the disk tier's block names are salted with.
  std::string cacheNamespace;
};

struct MountStats {
  CounterValues counters;
  FetchStats fetch;
  BlockCacheStats cache;
  ReadaheadStats readahead;
  uint64_t openFiles = 0;
  uint64_t diskBytes = 0;
  uint64_t inodes = 0;
};

class Mount {
 public:
  // Opens the disk tier (DiskTierError) and mounts (SessionError).
  Mount(const MountConfig& config, std::unique_ptr<FetchEngine> engine, ControlPlane& control, LogSink& log);
  ~Mount();  // unmounts if serve() never ran, and tears down in order
  Mount(const Mount&) = delete;
  Mount& operator=(const Mount&) = delete;

  // Serves until the mount goes away (call it on a thread of its own), then stops the byte path:
  // returns libfuse's status once nothing more will be answered.
  int serve();
  // From any thread, without blocking: ends serve() soon.
  void unmount();
  MountStats stats() const;
  // Requests signed from now on use `credentials` (FetchEngine::setCredentials).
  void setCredentials(const Credentials& credentials);
  // Files to fetch ahead of their readers, in this order, as `stream`'s (BlockCache::announce).
  void prefetch(std::vector<Filesystem::Announced> files, uint64_t stream);

 private:
  void stopBytePath();

  Counters counters_;
  std::unique_ptr<FetchEngine> engine_;
  std::unique_ptr<DiskTier> disk_;
  BdpSizing sizing_;
  std::unique_ptr<BlockCache> cache_;
  std::unique_ptr<Deadlines> deadlines_;
  std::unique_ptr<Filesystem> fs_;
  std::unique_ptr<Session> session_;
};

}  // namespace o3mount
