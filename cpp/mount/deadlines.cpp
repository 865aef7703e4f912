#include "mount/deadlines.h"

#include "thread_pool.h"

namespace o3mount {

Deadlines::Deadlines(std::chrono::milliseconds timeout)
    : timeout_(timeout), thread_([this] {
        o3::nameThisThread("o3-deadlines");
        run();
      }) {}

Deadlines::~Deadlines() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

uint64_t Deadlines::start(std::function<void()> expired) {
  bool first;
  uint64_t id;
  {
    std::lock_guard lock(mutex_);
    first = items_.empty();
    id = next_++;
    items_.emplace(id, Item{Clock::now() + timeout_, std::move(expired)});
  }
  if (first) wake_.notify_one();
  return id;
}

void Deadlines::cancel(uint64_t id) {
  std::function<void()> dropped;  // destroyed outside the lock
  std::lock_guard lock(mutex_);
  auto it = items_.find(id);
  if (it == items_.end()) return;
  dropped = std::move(it->second.expired);
  items_.erase(it);
}

size_t Deadlines::pending() const {
  std::lock_guard lock(mutex_);
  return items_.size();
}

void Deadlines::run() {
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    if (items_.empty()) {
      wake_.wait(lock);
      continue;
    }
    auto it = items_.begin();
    // A copy: the item may be cancelled (and freed) while this thread waits.
    const Clock::time_point when = it->second.when;
    if (Clock::now() < when) {
      wake_.wait_until(lock, when);
      continue;
    }
    auto expired = std::move(it->second.expired);
    items_.erase(it);
    lock.unlock();
    expired();
    expired = nullptr;
    lock.lock();
  }
}

}  // namespace o3mount
