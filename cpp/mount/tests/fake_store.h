// Object stores for the mount core's unit tests, behind the fetch engine's interface: an in-memory
// store with versions (answering on a thread of its own, as the real engine does, in pieces of
// random size), which can hold requests back, corrupt bytes and count what was asked; and a store
// whose every request fails with one error kind.
#pragma once

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "mount/fetch_engine.h"

namespace o3mount::test {

inline std::vector<std::byte> randomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::byte> v(n);
  for (auto& b : v) b = static_cast<std::byte>(rng() & 0xff);
  return v;
}

struct Request {
  ObjectPin pin;
  uint64_t offset = 0, length = 0;
};

// Requests answered in order on a thread of the store's own (as the engine answers from its own);
// close() cancels what is still queued and joins it.
class ThreadedStore : public FetchEngine {
 public:
  ThreadedStore() : thread_([this] { run(); }) {}
  ~ThreadedStore() override = default;  // subclasses call close() in their destructor

  // Requests wait while held.
  void hold(bool on) {
    {
      std::lock_guard lock(mutex_);
      held_ = on;
    }
    wake_.notify_all();
  }
  std::vector<Request> requests() const {
    std::lock_guard lock(mutex_);
    return log_;
  }
  void fetch(const ObjectPin& pin, uint64_t offset, uint64_t length, std::shared_ptr<RangeSink> sink) override {
    {
      std::lock_guard lock(mutex_);
      log_.push_back({pin, offset, length});
      queue_.push_back({pin, offset, length, std::move(sink)});
      ++stats_.requests;
    }
    wake_.notify_all();
  }
  FetchStats stats() const override {
    std::lock_guard lock(mutex_);
    return stats_;
  }
  // What a real engine would have measured of a server this far away.
  void measured(uint64_t firstByteUs, uint64_t bytesPerSecondPerConnection) {
    std::lock_guard lock(mutex_);
    stats_.firstByteUsAverage = firstByteUs;
    stats_.bytesPerSecondPerConnection = bytesPerSecondPerConnection;
  }
  void close() override {
    {
      std::lock_guard lock(mutex_);
      if (closed_) return;
      closed_ = true;
    }
    wake_.notify_all();
    thread_.join();
  }

 protected:
  struct Job {
    ObjectPin pin;
    uint64_t offset = 0, length = 0;
    std::shared_ptr<RangeSink> sink;
  };
  virtual void serve(Job& job) = 0;

  mutable std::mutex mutex_;
  FetchStats stats_;

 private:
  void run() {
    for (;;) {
      Job job;
      bool cancel;
      {
        std::unique_lock lock(mutex_);
        wake_.wait(lock, [this] { return closed_ || (!held_ && !queue_.empty()); });
        if (queue_.empty()) return;
        job = std::move(queue_.front());
        queue_.pop_front();
        cancel = closed_;
      }
      if (cancel)
        job.sink->finished(Status::error(ErrorKind::Cancelled, "closed"), job.pin);
      else
        serve(job);
    }
  }

  std::condition_variable wake_;
  std::deque<Job> queue_;
  std::vector<Request> log_;
  bool held_ = false;
  bool closed_ = false;
  std::thread thread_;
};

class FakeStore final : public ThreadedStore {
 public:
  struct Version {
    std::string etag, versionId;
    std::vector<std::byte> bytes;
  };
  ~FakeStore() override { close(); }

  // Puts a new current version; returns its pin (without the version id: HEAD is not asked).
  ObjectPin put(const std::string& key, std::vector<std::byte> bytes, bool versioned = false) {
    std::lock_guard lock(mutex_);
    auto& versions = objects_[key];
    const std::string n = std::to_string(++serial_);
    versions.push_back({"etag-" + n, versioned ? "v" + n : "", std::move(bytes)});
    const Version& v = versions.back();
    return {key, v.etag, "", v.bytes.size()};
  }
  // Flips a byte of every response covering `offset` of `key` (what is stored stays right).
  void corrupt(const std::string& key, uint64_t offset) {
    std::lock_guard lock(mutex_);
    corrupt_[key] = offset;
  }

 private:
  void serve(Job& job) override {
    const Version* v = nullptr;
    uint64_t corruptAt = UINT64_MAX;
    {
      std::lock_guard lock(mutex_);
      auto it = objects_.find(job.pin.key);
      if (it != objects_.end()) {
        // A pinned version id asks for exactly that version; otherwise the current one answers.
        if (job.pin.versionId.empty()) v = &it->second.back();
        for (const Version& c : it->second)
          if (!job.pin.versionId.empty() && c.versionId == job.pin.versionId) v = &c;
        auto c = corrupt_.find(job.pin.key);
        if (c != corrupt_.end()) corruptAt = c->second;
      }
    }
    if (!v) return job.sink->finished(Status::error(ErrorKind::NotFound, job.pin.key + ": no such key or version"), job.pin);
    // As the real engine: every response is checked against the pinned ETag.
    if (v->etag != job.pin.etag)
      return job.sink->finished(Status::error(ErrorKind::Integrity, job.pin.key + ": the object changed (ETag " + v->etag + ")"),
                                job.pin);
    if (job.offset + job.length > v->bytes.size())
      return job.sink->finished(Status::error(ErrorKind::Stream, "range past the end"), job.pin);
    uint64_t at = job.offset;
    const uint64_t end = job.offset + job.length;
    while (at < end) {
      std::span<std::byte> space = job.sink->space(at);
      if (space.empty()) return job.sink->finished(Status::error(ErrorKind::Stream, "the sink gave no space"), job.pin);
      const uint64_t piece = std::min<uint64_t>({space.size(), end - at, 1 + rng_() % (256 * 1024)});
      std::memcpy(space.data(), v->bytes.data() + at, piece);
      if (corruptAt >= at && corruptAt < at + piece) space[corruptAt - at] ^= std::byte{1};
      job.sink->wrote(at, piece);
      at += piece;
      std::lock_guard lock(mutex_);
      stats_.bytesReceived += piece;
    }
    ObjectPin learnt = job.pin;
    learnt.versionId = v->versionId;
    job.sink->finished(Status::ok(), learnt);
  }

  std::map<std::string, std::vector<Version>> objects_;
  std::map<std::string, uint64_t> corrupt_;
  uint64_t serial_ = 0;
  std::mt19937 rng_{7};
};

// Every request fails with one error kind, as the engine reports a failure after its retries.
class FailingStore final : public ThreadedStore {
 public:
  explicit FailingStore(ErrorKind kind) : kind_(kind) {}
  ~FailingStore() override { close(); }

 private:
  void serve(Job& job) override {
    {
      std::lock_guard lock(mutex_);
      ++stats_.errors;
    }
    job.sink->finished(Status::error(kind_, std::string("failing store: ") + errorKindName(kind_)), job.pin);
  }
  ErrorKind kind_;
};

}  // namespace o3mount::test
