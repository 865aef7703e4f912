#include "thread_pool.h"

#include <pthread.h>

#include <string>

namespace o3 {

void nameThisThread(const char* name) {
  // Linux keeps 15 bytes and a NUL; a longer name is refused, so cut it here.
  pthread_setname_np(pthread_self(), std::string(name).substr(0, 15).c_str());
}

ThreadPool::ThreadPool(int threads, const char* name) {
  for (int i = 0; i < threads; ++i)
    threads_.emplace_back([this, name] {
      if (name) nameThisThread(name);
      work();
    });
}

ThreadPool::~ThreadPool() { join(); }

void ThreadPool::join() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  for (auto& t : threads_)
    if (t.joinable()) t.join();
}

void ThreadPool::work() {
  for (;;) {
    std::function<void()> task;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;
      task = std::move(queue_.front());
      queue_.pop_front();
    }
    task();
  }
}

}  // namespace o3
