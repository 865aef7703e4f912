// Deadlines of operations waiting on the network (--op-timeout): one thread and one fixed timeout,
// so entries expire in the order they were started; each is a callback, cancelled when its
// operation finishes first (so only operations still waiting are held). A read still waiting for
// its blocks when its deadline passes fails with EIO and a log line, however long the fetch engine
// keeps retrying underneath.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <thread>

namespace o3mount {

class Deadlines {
 public:
  using Clock = std::chrono::steady_clock;
  explicit Deadlines(std::chrono::milliseconds timeout);
  ~Deadlines();  // drops pending callbacks without calling them
  Deadlines(const Deadlines&) = delete;
  Deadlines& operator=(const Deadlines&) = delete;

  std::chrono::milliseconds timeout() const { return timeout_; }
  // Calls `expired` (on the deadline thread) once the timeout has passed, unless cancelled first.
  // Returns the id to cancel it with (never 0).
  uint64_t start(std::function<void()> expired);
  void cancel(uint64_t id);
  size_t pending() const;

 private:
  struct Item {
    Clock::time_point when;
    std::function<void()> expired;
  };
  void run();

  const std::chrono::milliseconds timeout_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::map<uint64_t, Item> items_;  // by id, which is also by expiry
  uint64_t next_ = 1;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace o3mount
