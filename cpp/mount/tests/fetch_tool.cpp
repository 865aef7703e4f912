// Drives the fetch engine against a real server for the tap tests (test/native-fetch*.test.ts):
// fetches ranges of one object concurrently into a file laid out as the object (each range at its
// own offset), checks on the way that the engine keeps the sink contract, and prints what happened
// as one JSON line.
//   fetch_tool --endpoint URL --region R --bucket B --key K --range OFFSET:LENGTH [--range ...]
//              --out FILE [--etag E] [--version-id V] [--size N] [--ca-bundle FILE]
//              [--max-connections N] [--connect-timeout-ms N] [--request-timeout-ms N]
//              [--attempts N] [--base-delay-ms N] [--max-delay-ms N] [--sink-chunk N]
//              [--warm N] [--close-after-ms N] [--sequential 1]
// Credentials from O3_ACCESS_KEY_ID, O3_SECRET_ACCESS_KEY, O3_SESSION_TOKEN. Exit status 0 when the
// engine kept its contract (whatever the fetches' outcome: the JSON says), 3 when it did not, 2 for
// bad arguments.
#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <iostream>
#include <mutex>
#include <sstream>
#include <thread>

#include "mount/fetch_engine.h"
#include "mount/tests/tool_args.h"

using namespace o3mount;

namespace {

std::mutex mutex;
std::condition_variable changed;
std::vector<std::string> violations;

void violation(const std::string& what) {
  std::lock_guard lock(mutex);
  violations.push_back(what);
}

// A range's buffer. Checks that the engine writes it front to back, within space() and the range,
// and calls timing() then finished() exactly once.
class CheckingSink : public RangeSink {
 public:
  CheckingSink(uint64_t offset, uint64_t length, size_t chunk) : offset_(offset), buffer_(length), chunk_(chunk) {}

  std::span<std::byte> space(uint64_t at) override {
    if (done_) violation("space() after finished()");
    if (at != offset_ + written_)
      violation("space(" + std::to_string(at) + ") where the next byte is " + std::to_string(offset_ + written_));
    if (at < offset_ || at >= offset_ + buffer_.size()) {
      violation("space(" + std::to_string(at) + ") outside the range");
      return {};
    }
    const size_t from = static_cast<size_t>(at - offset_);
    lastSpace_ = std::min(chunk_, buffer_.size() - from);
    return std::span<std::byte>(buffer_.data() + from, lastSpace_);
  }

  void wrote(uint64_t at, size_t n) override {
    if (at != offset_ + written_)
      violation("wrote() at " + std::to_string(at) + " where the next byte is " + std::to_string(offset_ + written_));
    if (n == 0 || n > lastSpace_) violation("wrote(" + std::to_string(n) + ") after space() of " + std::to_string(lastSpace_));
    written_ += n;
    lastSpace_ = 0;
  }

  void timing(const FetchTiming& t) override {
    if (timingSeen_ || done_) violation("timing() twice or after finished()");
    timingSeen_ = true;
    timing_ = t;
  }

  void finished(const Status& status, const ObjectPin& pin) override {
    if (!timingSeen_) violation("finished() without timing() first");
    if (done_) violation("finished() twice");
    if (status && written_ != buffer_.size())
      violation("finished(Ok) with " + std::to_string(written_) + " of " + std::to_string(buffer_.size()) + " bytes");
    std::lock_guard lock(mutex);
    status_ = status;
    pin_ = pin;
    done_ = true;
    changed.notify_all();
  }

  bool done() const { return done_; }
  std::string json() const {
    std::ostringstream o;
    o << "{\"offset\":" << offset_ << ",\"length\":" << buffer_.size() << ",\"written\":" << written_
      << ",\"status\":" << tool::json(errorKindName(status_.kind)) << ",\"message\":" << tool::json(status_.message)
      << ",\"pin\":{\"etag\":" << tool::json(pin_.etag) << ",\"versionId\":" << tool::json(pin_.versionId) << "}"
      << ",\"timing\":{\"queuedUs\":" << timing_.queuedUs << ",\"firstByteUs\":" << timing_.firstByteUs
      << ",\"connectUs\":" << timing_.connectUs << ",\"transferUs\":" << timing_.transferUs << ",\"totalUs\":" << timing_.totalUs
      << ",\"bytes\":" << timing_.bytes << ",\"attempts\":" << timing_.attempts << "}}";
    return o.str();
  }
  // Writes the bytes received (only those) at their offsets in the object's image.
  void save(int fd) const {
    if (written_ && pwrite(fd, buffer_.data(), written_, static_cast<off_t>(offset_)) != static_cast<ssize_t>(written_)) {
      violation(std::string("cannot write the output: ") + std::strerror(errno));
    }
  }

 private:
  const uint64_t offset_;
  std::vector<std::byte> buffer_;
  const size_t chunk_;
  uint64_t written_ = 0;
  size_t lastSpace_ = 0;
  bool timingSeen_ = false;
  FetchTiming timing_;
  bool done_ = false;  // guarded by `mutex` for readers on the main thread
  Status status_ = Status::error(ErrorKind::Cancelled, "never finished");
  ObjectPin pin_;
};

std::pair<uint64_t, uint64_t> parseRange(const std::string& s) {
  const size_t colon = s.find(':');
  if (colon == std::string::npos) tool::Args::usage("--range is OFFSET:LENGTH");
  return {std::stoull(s.substr(0, colon)), std::stoull(s.substr(colon + 1))};
}

}  // namespace

int main(int argc, char** argv) {
  const tool::Args args(argc, argv);
  FetchConfig config;
  config.endpoint = args.need("endpoint");
  config.region = args.need("region");
  config.bucket = args.need("bucket");
  config.credentials = tool::credentialsFromEnv();
  config.caBundle = args.get("ca-bundle");
  config.maxConnections = static_cast<int>(args.number("max-connections", 16));
  config.connectTimeoutMs = static_cast<int>(args.number("connect-timeout-ms", 5000));
  config.requestTimeoutMs = static_cast<int>(args.number("request-timeout-ms", 30000));
  config.retry.maxAttempts = static_cast<int>(args.number("attempts", 5));
  config.retry.baseDelayMs = static_cast<int>(args.number("base-delay-ms", 700));
  config.retry.maxDelayMs = static_cast<int>(args.number("max-delay-ms", 20000));
  const ObjectPin pin{args.need("key"), args.get("etag"), args.get("version-id"), args.number("size", 0)};
  const size_t chunk = static_cast<size_t>(args.number("sink-chunk", SIZE_MAX));
  const std::string out = args.need("out");
  const auto ranges = args.all("range");
  if (ranges.empty()) tool::Args::usage("--range is required");

  std::unique_ptr<FetchEngine> engine;
  try {
    engine = FetchEngine::create(config);
  } catch (const std::exception& e) {
    std::cout << "{\"createError\":" << tool::json(e.what()) << "}" << std::endl;
    return 0;
  }
  if (const uint64_t n = args.number("warm", 0)) {
    engine->warm(static_cast<int>(n));
    // Until the warm-up requests are answered.
    while (engine->stats().inFlight > 0 || engine->stats().queued > 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  const FetchStats beforeFetches = engine->stats();

  std::vector<std::shared_ptr<CheckingSink>> sinks;
  const bool sequential = args.number("sequential", 0) != 0;
  auto allDone = [&] { return std::all_of(sinks.begin(), sinks.end(), [](const auto& s) { return s->done(); }); };
  for (const auto& r : ranges) {
    const auto [offset, length] = parseRange(r);
    sinks.push_back(std::make_shared<CheckingSink>(offset, length, chunk));
    engine->fetch(pin, offset, length, sinks.back());
    if (sequential) {
      std::unique_lock lock(mutex);
      changed.wait(lock, allDone);
    }
  }
  if (const uint64_t ms = args.number("close-after-ms", 0)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    engine->close();
  }
  {
    std::unique_lock lock(mutex);
    changed.wait(lock, allDone);
  }
  const FetchStats s = engine->stats();
  engine->close();

  const int fd = open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd < 0) violation("cannot open " + out);
  for (const auto& sink : sinks) sink->save(fd);
  if (fd >= 0) close(fd);

  // CPU of the whole process and of this (main) thread: the difference is the engine's thread,
  // without this tool's own buffer allocation and file writing.
  rusage usage{}, mainThread{};
  getrusage(RUSAGE_SELF, &usage);
  getrusage(RUSAGE_THREAD, &mainThread);
  auto micros = [](const rusage& r) {
    return static_cast<uint64_t>(r.ru_utime.tv_sec + r.ru_stime.tv_sec) * 1'000'000 + r.ru_utime.tv_usec + r.ru_stime.tv_usec;
  };
  std::cout << "{\"results\":[";
  for (size_t i = 0; i < sinks.size(); i++) std::cout << (i ? "," : "") << sinks[i]->json();
  std::cout << "],\"stats\":{\"requests\":" << s.requests << ",\"retries\":" << s.retries << ",\"errors\":" << s.errors
            << ",\"bytesReceived\":" << s.bytesReceived << ",\"connectionsOpened\":" << s.connectionsOpened
            << ",\"connectionsBeforeFetches\":" << beforeFetches.connectionsOpened << ",\"queued\":" << s.queued
            << ",\"inFlight\":" << s.inFlight << ",\"firstByteUsAverage\":" << s.firstByteUsAverage
            << ",\"bytesPerSecondPerConnection\":" << s.bytesPerSecondPerConnection << "},\"maxRssKb\":" << usage.ru_maxrss
            << ",\"cpuUs\":{\"process\":" << micros(usage) << ",\"mainThread\":" << micros(mainThread) << "}"
            << ",\"violations\":[";
  for (size_t i = 0; i < violations.size(); i++) std::cout << (i ? "," : "") << tool::json(violations[i]);
  std::cout << "]}" << std::endl;
  return violations.empty() ? 0 : 3;
}
