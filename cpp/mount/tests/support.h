// What the mount core's unit tests share: a log sink that keeps lines, and ways to wait for the
// block cache's asynchronous answers without hanging a failing test forever.
#pragma once

#include <chrono>
#include <condition_variable>
#include <future>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "mount/block_cache.h"
#include "mount/log_sink.h"
#include "mount/tests/check.h"

namespace o3mount::test {

struct Line {
  LogLevel level;
  std::string message;
  LogFields fields;
  const LogValue* field(const std::string& name) const {
    for (const auto& [k, v] : fields)
      if (k == name) return &v;
    return nullptr;
  }
};

class CollectingLog final : public LogSink {
 public:
  void log(LogLevel level, std::string message, LogFields fields) override {
    std::lock_guard lock(mutex_);
    lines_.push_back({level, std::move(message), std::move(fields)});
  }
  std::vector<Line> lines() const {
    std::lock_guard lock(mutex_);
    return lines_;
  }
  size_t count(const std::string& needle) const {
    std::lock_guard lock(mutex_);
    size_t n = 0;
    for (const Line& l : lines_) n += l.message.find(needle) != std::string::npos;
    return n;
  }

 private:
  mutable std::mutex mutex_;
  std::vector<Line> lines_;
};

// Reads blocks [first, last) through the cache and waits (at most 20 s) for all of them.
inline std::vector<BlockResult> readBlocks(BlockCache& cache, const ObjectRef& obj, uint64_t first, uint64_t last) {
  struct State {
    std::mutex m;
    std::condition_variable cv;
    std::vector<BlockResult> got;
    size_t left;
  };
  auto st = std::make_shared<State>();
  st->got.resize(last - first);
  st->left = last - first;
  cache.read(obj, first, last, [st, first](uint64_t i, BlockResult r) {
    std::lock_guard lock(st->m);
    st->got[i - first] = std::move(r);
    if (--st->left == 0) st->cv.notify_all();
  });
  std::unique_lock lock(st->m);
  if (!st->cv.wait_for(lock, std::chrono::seconds(20), [&] { return st->left == 0; })) {
    std::cerr << "readBlocks: timed out" << std::endl;
    ++failures;
    for (auto& r : st->got)
      if (!r.block && r.status) r.status = Status::error(ErrorKind::Timeout, "test timed out");
  }
  return st->got;
}

// Waits (at most 20 s) until `cond` holds.
template <class F>
bool eventually(F cond) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!cond()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

inline bool sameBytes(std::span<const std::byte> a, std::span<const std::byte> b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin());
}

}  // namespace o3mount::test
