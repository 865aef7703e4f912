// The fetch engine's threading, without a server (a refused loopback port answers every request at
// once): fetch() from many threads racing close(), fetch() and close() from inside a sink's
// callback, fetch() after close(). Every sink must be finished exactly once, timing() first, and
// ASan must see no use after free (the multi handle is freed by the engine thread while other
// threads may still be waking it).
#include <atomic>
#include <stdexcept>
#include <thread>
#include <vector>

#include "mount/fetch_engine.h"
#include "mount/tests/check.h"

using namespace o3mount;

namespace {

FetchConfig refusedConfig() {
  FetchConfig c;
  c.endpoint = "http://127.0.0.1:1";
  c.region = "r";
  c.bucket = "b";
  c.credentials = {"id", "secret", ""};
  c.maxConnections = 4;
  c.retry = {2, 1, 4};
  return c;
}

struct Counts {
  std::atomic<int> finished{0}, twice{0}, noTiming{0}, unreachable{0}, cancelled{0}, other{0};
};

class CountingSink : public RangeSink {
 public:
  explicit CountingSink(Counts& c) : c_(c) {}
  std::span<std::byte> space(uint64_t) override { return {}; }
  void wrote(uint64_t, size_t) override {}
  void timing(const FetchTiming&) override { timed_ = true; }
  void finished(const Status& s, const ObjectPin&) override {
    if (done_.exchange(true)) c_.twice++;
    if (!timed_) c_.noTiming++;
    c_.finished++;
    if (s.kind == ErrorKind::Unreachable)
      c_.unreachable++;
    else if (s.kind == ErrorKind::Cancelled)
      c_.cancelled++;
    else
      c_.other++;
    after(s);
  }
  virtual void after(const Status&) {}

 private:
  Counts& c_;
  std::atomic<bool> done_{false};
  bool timed_ = false;
};

const ObjectPin kPin{"key", "etag", "", 1000};

void manyThreadsRaceClose() {
  Counts counts;
  auto engine = FetchEngine::create(refusedConfig());
  constexpr int kThreads = 8, kEach = 150;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; t++) {
    threads.emplace_back([&] {
      for (int i = 0; i < kEach; i++) engine->fetch(kPin, 0, 100, std::make_shared<CountingSink>(counts));
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  engine->close();
  for (auto& t : threads) t.join();
  engine->fetch(kPin, 0, 100, std::make_shared<CountingSink>(counts));  // after close: at once
  O3_CHECK_EQ(counts.finished.load(), kThreads * kEach + 1);
  O3_CHECK_EQ(counts.twice.load(), 0);
  O3_CHECK_EQ(counts.noTiming.load(), 0);
  O3_CHECK_EQ(counts.other.load(), 0);
  O3_CHECK(counts.cancelled.load() >= 1);
  engine->close();  // idempotent
}

// Two threads close at once: each returns only once every sink has been finished and the thread
// has ended (the second used to return at once, while the first was still joining).
void concurrentCloses() {
  Counts counts;
  auto engine = FetchEngine::create(refusedConfig());
  constexpr int kFetches = 3000;
  for (int i = 0; i < kFetches; i++) engine->fetch(kPin, 0, 100, std::make_shared<CountingSink>(counts));
  std::atomic<bool> go{false};
  std::atomic<int> seen[2] = {-1, -1};
  std::vector<std::thread> closers;
  for (int t = 0; t < 2; t++) {
    closers.emplace_back([&, t] {
      while (!go.load()) std::this_thread::yield();
      engine->close();
      seen[t] = counts.finished.load();
    });
  }
  go = true;
  for (auto& t : closers) t.join();
  O3_CHECK_EQ(seen[0].load(), kFetches);
  O3_CHECK_EQ(seen[1].load(), kFetches);
}

// Each finished() queues the next fetch, until `left` runs out; the last one closes the engine.
class ChainSink : public CountingSink {
 public:
  ChainSink(Counts& c, FetchEngine& e, int left) : CountingSink(c), counts_(c), engine_(e), left_(left) {}
  void after(const Status&) override {
    if (left_ > 0)
      engine_.fetch(kPin, 0, 10, std::make_shared<ChainSink>(counts_, engine_, left_ - 1));
    else
      engine_.close();
  }

 private:
  Counts& counts_;
  FetchEngine& engine_;
  int left_;
};

void fetchAndCloseFromCallbacks() {
  Counts counts;
  auto engine = FetchEngine::create(refusedConfig());
  engine->fetch(kPin, 0, 10, std::make_shared<ChainSink>(counts, *engine, 20));
  for (int i = 0; i < 2000 && counts.finished.load() < 21; i++) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  O3_CHECK_EQ(counts.finished.load(), 21);
  O3_CHECK_EQ(counts.unreachable.load(), 21);
  engine.reset();  // joins the thread the last callback asked to close
}

void statsAfterRetries() {
  Counts counts;
  auto engine = FetchEngine::create(refusedConfig());
  engine->fetch(kPin, 0, 10, std::make_shared<CountingSink>(counts));
  for (int i = 0; i < 2000 && counts.finished.load() < 1; i++) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  const FetchStats s = engine->stats();
  O3_CHECK_EQ(s.requests, 2u);
  O3_CHECK_EQ(s.retries, 1u);
  O3_CHECK_EQ(s.errors, 1u);
  O3_CHECK_EQ(s.queued, 0u);
  O3_CHECK_EQ(s.inFlight, 0u);
}

void badEndpoints() {
  for (const char* e : {"ftp://x", "http://", "http://user@host", "http://h:0", "http://h:99999", "http://h/a b", "http://h?q"}) {
    FetchConfig c = refusedConfig();
    c.endpoint = e;
    bool threw = false;
    try {
      FetchEngine::create(c);
    } catch (const std::invalid_argument&) {
      threw = true;
    }
    O3_CHECK(threw);
  }
}

}  // namespace

int main() {
  manyThreadsRaceClose();
  concurrentCloses();
  fetchAndCloseFromCallbacks();
  statsAfterRetries();
  badEndpoints();
  return test::finish("fetch_engine_test");
}
