#include "mount/mount.h"

namespace o3mount {

Mount::Mount(const MountConfig& config, std::unique_ptr<FetchEngine> engine, ControlPlane& control, LogSink& log)
    : engine_(std::move(engine)), sizing_(*engine_, config.partSize, config.readaheadMax, config.cache.memoryBytes) {
  if (!config.cacheDir.empty())
    disk_ = DiskTier::open(config.cacheDir, config.cacheDiskBytes, config.cacheNamespace, counters_, log);
  cache_ = std::make_unique<BlockCache>(config.cache, *engine_, disk_.get(), sizing_, counters_, log);
  deadlines_ = std::make_unique<Deadlines>(config.opTimeout);
  fs_ = std::make_unique<Filesystem>(config.fs, control, *cache_, sizing_, *deadlines_, counters_, log);
  try {
    session_ = std::make_unique<Session>(*fs_, config.session, log);
  } catch (...) {
    stopBytePath();
    cache_.reset();
    throw;
  }
}

Mount::~Mount() {
  session_.reset();
  stopBytePath();
  // The workers' last deliveries reach the filesystem's reads (answered to nobody) and may cancel
  // deadlines: the cache drains before either goes.
  cache_.reset();
  deadlines_.reset();
  fs_.reset();
  disk_.reset();
  engine_.reset();
}

int Mount::serve() {
  const int rc = session_->run();
  stopBytePath();
  return rc;
}

void Mount::unmount() {
  if (session_) session_->exit();
}

// After the session has stopped answering: queued fetches fail, running ones are cancelled by the
// engine, the workers deliver what is left (to nobody), then the rest goes.
void Mount::stopBytePath() {
  if (!cache_) return;
  cache_->close();
  engine_->close();
}

MountStats Mount::stats() const {
  MountStats s;
  s.counters = counters_.snapshot();
  s.fetch = engine_->stats();
  s.cache = cache_->stats();
  s.readahead = fs_->readaheadStats();
  s.openFiles = fs_->openFiles();
  s.diskBytes = disk_ ? disk_->bytes() : 0;
  s.inodes = fs_->inodes().size();
  return s;
}

void Mount::setCredentials(const Credentials& credentials) { engine_->setCredentials(credentials); }

void Mount::prefetch(std::vector<Filesystem::Announced> files, uint64_t stream) { fs_->prefetch(std::move(files), stream); }

}  // namespace o3mount
