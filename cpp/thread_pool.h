// A fixed set of threads running queued tasks; futures carry results and exceptions back.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <thread>
#include <vector>

namespace o3 {

// Names the calling thread as top, perf and /proc/<pid>/task/*/comm show it (at most 15 bytes are kept).
void nameThisThread(const char* name);

class ThreadPool {
 public:
  // `name`, when given, names each of its threads (nameThisThread).
  explicit ThreadPool(int threads, const char* name = nullptr);
  ~ThreadPool();  // join()
  // Runs the tasks queued, including those they queue meanwhile, then joins the threads. The pool
  // stays usable for submit() until this returns, so that running tasks may still queue others.
  void join();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  template <class F>
  auto submit(F&& f) -> std::future<decltype(f())> {
    auto task = std::make_shared<std::packaged_task<decltype(f())()>>(std::forward<F>(f));
    auto future = task->get_future();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      queue_.emplace_back([task] { (*task)(); });
    }
    wake_.notify_one();
    return future;
  }

 private:
  void work();
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> queue_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace o3
