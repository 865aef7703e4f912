// The fetch engine on libcurl's multi interface: one thread of its own runs every transfer, so
// sinks are only ever called from it. Each GET is signed here (sigv4_signer), its response head
// checked (response_head) before a byte of the body is used, and the body copied from curl's
// receive buffer straight into the sink's memory. libcurl keeps the connections (HTTP/1.1
// keep-alive, one transfer per connection at a time) and the TLS sessions for reuse.
#include "mount/fetch_engine.h"

#include <curl/curl.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <stdexcept>
#include <thread>
#include <vector>

#include "mount/peer_verifier.h"
#include "mount/response_head.h"
#include "mount/s3_request.h"
#include "mount/sigv4_signer.h"
#include "thread_pool.h"

namespace o3mount {

namespace {

using Clock = std::chrono::steady_clock;

// Error bodies are read this deep and no deeper: S3's <Error> with its <Code> fits in a few hundred
// bytes, and a server that sends megabytes of error must not make us hold them.
constexpr size_t kErrorBodyLimit = 4 * 1024;
// libcurl's receive buffer per transfer (its maximum is 512 KiB): each write callback then hands
// over up to this much, so a 1 MiB block arrives in a few copies rather than 64 of 16 KiB.
constexpr long kReceiveBuffer = 256 * 1024;
// As the AWS SDKs: a clock this far from the server's (after the offset) is corrected from the Date
// of a request refused as skewed. S3 refuses signatures more than 15 minutes off.
constexpr int64_t kClockSkewMs = 5 * 60 * 1000;
// Responses smaller than this say more about latency than about a connection's rate.
constexpr uint64_t kRateSampleMinBytes = 256 * 1024;
// Weight of a new sample in the moving averages: about the last ten requests count.
constexpr double kAverageWeight = 0.1;
// Attempts of one fetch in all, however many of them moved it forward: a body that breaks after
// every few bytes (a failing link, a hostile server) must not hold a connection for ever.
constexpr int kAttemptsPerRetryBudget = 4;
// Slower than this over twice the request timeout, an attempt fails: a body that trickles often
// enough to pass the silence check would otherwise hold its connection for ever. Far below any
// real link's rate per connection (10 Mbit/s over 32 connections is 39 KB/s each).
constexpr long kMinBytesPerSecond = 1024;

uint64_t micros(Clock::duration d) {
  return static_cast<uint64_t>(std::max<int64_t>(0, std::chrono::duration_cast<std::chrono::microseconds>(d).count()));
}

void initCurlOnce() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) throw std::runtime_error("curl_global_init failed");
  });
}

// One fetch() call, from queueing to finished(); or a warm-up HEAD, which has no sink.
struct Job {
  ObjectPin pin;
  uint64_t offset = 0;
  uint64_t length = 0;
  std::shared_ptr<RangeSink> sink;
  uint64_t written = 0;
  int failures = 0;  // failed attempts since the last one that delivered bytes
  Clock::time_point submitted;
  Clock::time_point firstStart;
  FetchTiming timing;

  bool warmUp() const { return !sink; }
  std::string what(const std::string& bucket) const {
    return "get " + bucket + "/" + pin.key + " bytes " + std::to_string(offset) + "-" + std::to_string(offset + length - 1);
  }
};

// What went wrong with one attempt, and whether another could help.
struct Failure {
  ErrorKind kind = ErrorKind::Stream;
  bool retry = true;
  std::string message;
};

class CurlFetchEngine;

// One request on the wire: an easy handle (kept for the next request: its settings stay), the job
// it serves, and what has been learnt of the response so far.
struct Transfer {
  CURL* easy = nullptr;
  curl_slist* headers = nullptr;
  char errorText[CURL_ERROR_SIZE] = {};
  std::unique_ptr<Job> job;
  uint64_t first = 0;  // the object bytes asked for: [first, last]
  uint64_t last = 0;
  uint64_t writtenBefore = 0;  // the job's bytes written before this attempt
  ResponseHead head;
  bool planned = false;  // a 2xx head was accepted: the body is data
  uint64_t skipLeft = 0;
  uint64_t deliverLeft = 0;
  bool delivered = false;  // every byte asked for is in the sink (a 200 may go on past them)
  std::optional<Failure> verdict;
  std::string errorBody;
  std::atomic<uint64_t>* bytesReceived = nullptr;  // the engine's counter
  CurlFetchEngine* engine = nullptr;               // for the TLS check, over HTTPS
  Clock::duration silenceLimit{};                  // the request timeout
  Clock::time_point lastActivity;                  // the attempt's start, or the last byte received

  void reset() {
    curl_slist_free_all(headers);
    headers = nullptr;
    errorText[0] = '\0';
    job.reset();
    head = ResponseHead();
    planned = delivered = false;
    skipLeft = deliverLeft = 0;
    verdict.reset();
    errorBody.clear();
  }
};

// The two TLS failures, whether libcurl or PeerVerifier finds them; neither is retried (no retry
// makes an untrusted certificate trusted, or an unreadable CA file readable).
Failure caBundleFailure(const std::string& detail) {
  return {ErrorKind::Unreachable, false, "TLS: cannot load the CA bundle (" + detail + "); check --ca-bundle or O3_CA_BUNDLE"};
}

Failure untrustedFailure(const std::string& detail) {
  return {ErrorKind::Unreachable, false,
          "TLS: the server's certificate is not trusted (" + detail +
              "); give the CA that signed it with --ca-bundle or O3_CA_BUNDLE"};
}

Failure curlFailure(CURLcode rc, const char* detail) {
  const std::string text = detail && *detail ? detail : curl_easy_strerror(rc);
  switch (rc) {
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_CONNECT: return {ErrorKind::Unreachable, true, "cannot reach the endpoint (" + text + ")"};
    case CURLE_OPERATION_TIMEDOUT: return {ErrorKind::Stream, true, "timed out (" + text + ")"};
    case CURLE_SSL_CACERT_BADFILE: return caBundleFailure(text);
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH: return untrustedFailure(text);
    case CURLE_OUT_OF_MEMORY:
      // libcurl also says this of a response header line over 100 KiB: a server's doing, retried.
      return {ErrorKind::Stream, true, "libcurl: out of memory, or a response header line over 100 KiB"};
    case CURLE_URL_MALFORMAT:
    case CURLE_BAD_FUNCTION_ARGUMENT:
    case CURLE_NOT_BUILT_IN: return {ErrorKind::Stream, false, text};
    // CURLE_UNSUPPORTED_PROTOCOL included: only http and https are allowed, so it means a response
    // that is not HTTP/1.x ("HTTP/0.9", a malformed status line).
    default: return {ErrorKind::Stream, true, text};
  }
}

class CurlFetchEngine final : public FetchEngine {
 public:
  explicit CurlFetchEngine(const FetchConfig& config)
      : config_(config),
        signer_(config.credentials, config.region),
        clockOffsetMs_(config.clockOffsetMs),
        maxConnections_(std::max(1, config.maxConnections)),
        rng_(std::random_device{}()) {
    std::string why;
    auto endpoint = parseEndpoint(config.endpoint, why);
    if (!endpoint) throw std::invalid_argument("endpoint " + config.endpoint + ": " + why);
    endpoint_ = std::move(*endpoint);
    if (config.bucket.empty()) throw std::invalid_argument("no bucket");
    if (endpoint_.scheme == "https") {
      // A trust list that cannot be loaded fails each request as a TLS error, as libcurl's own did.
      try {
        verifier_ = std::make_unique<PeerVerifier>(config.caBundle);
      } catch (const std::exception& e) {
        trustError_ = e.what();
      }
    }
    initCurlOnce();
    // The chain check runs from CURLOPT_PREREQFUNCTION (libcurl 7.80); an older libcurl found at run
    // time would ignore that option and leave HTTPS unchecked, so it serves no HTTPS at all.
    if (const curl_version_info_data* v = curl_version_info(CURLVERSION_NOW);
        endpoint_.scheme == "https" && (!v || v->version_num < 0x075000))
      throw std::runtime_error(std::string("HTTPS needs libcurl 7.80 or later, found ") +
                               (v && v->version ? v->version : "none"));
    multi_ = curl_multi_init();
    share_ = curl_share_init();
    if (!multi_ || !share_) throw std::runtime_error("cannot create a libcurl handle");
    // TLS sessions resumed across connections (a new connection then costs one round trip less);
    // the multi handle already shares its connection pool and DNS cache among its transfers. Only
    // the engine thread touches either, so no locks.
    curl_share_setopt(share_, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
    curl_multi_setopt(multi_, CURLMOPT_MAX_TOTAL_CONNECTIONS, static_cast<long>(maxConnections_));
    curl_multi_setopt(multi_, CURLMOPT_MAXCONNECTS, static_cast<long>(maxConnections_));
    curl_multi_setopt(multi_, CURLMOPT_PIPELINING, CURLPIPE_NOTHING);
    thread_ = std::thread([this] {
      o3::nameThisThread("o3-fetch");
      loop();
    });
    engineThread_ = thread_.get_id();
  }

  // Not from a sink's callback: the engine thread cannot join itself (std::terminate says so).
  ~CurlFetchEngine() override { close(); }

  void fetch(const ObjectPin& pin, uint64_t offset, uint64_t length, std::shared_ptr<RangeSink> sink) override {
    auto job = std::make_unique<Job>();
    job->pin = pin;
    job->pin.etag = normaliseEtag(pin.etag);
    job->offset = offset;
    job->length = length;
    job->sink = std::move(sink);
    job->submitted = Clock::now();
    submit(std::move(job));
  }

  void warm(int n) override {
    for (int i = 0; i < std::min(n, maxConnections_); i++) {
      auto job = std::make_unique<Job>();
      job->submitted = Clock::now();
      submit(std::move(job));
    }
  }

  void setCredentials(const Credentials& credentials) override { signer_.setCredentials(credentials); }

  FetchStats stats() const override {
    FetchStats s;
    s.requests = requests_.load();
    s.retries = retries_.load();
    s.errors = errors_.load();
    s.bytesReceived = bytesReceived_.load();
    s.connectionsOpened = connectionsOpened_.load();
    s.queued = queued_.load();
    s.inFlight = inFlight_.load();
    s.firstByteUsAverage = firstByteUsAverage_.load();
    s.bytesPerSecondPerConnection = bytesPerSecond_.load();
    s.clockOffsetMs = clockOffsetMs_.load();
    return s;
  }

  void close() override {
    {
      std::lock_guard lock(mutex_);
      if (!closing_) {
        closing_ = true;
        curl_multi_wakeup(multi_);
      }
    }
    // From a sink's callback: the thread ends once the callback returns.
    if (std::this_thread::get_id() == engineThread_) return;
    // Every caller returns once the thread has ended, however many close at once.
    std::lock_guard join(joinMutex_);
    if (thread_.joinable()) thread_.join();
  }

 private:
  void submit(std::unique_ptr<Job> job) {
    {
      // The wakeup under the lock too: the engine thread frees the multi handle under it.
      std::lock_guard lock(mutex_);
      if (!closing_) {
        incoming_.push_back(std::move(job));
        queued_++;
        curl_multi_wakeup(multi_);
        return;
      }
    }
    // Closed: nothing will run it.
    if (job->sink) finish(*job, Status::error(ErrorKind::Cancelled, "the mount is closing"));
  }

  // ---- the engine thread ----

  void loop() {
    for (;;) {
      bool closing;
      {
        std::lock_guard lock(mutex_);
        closing = closing_;
        for (auto& job : incoming_) ready_.push_back(std::move(job));
        incoming_.clear();
      }
      if (closing) break;
      const auto now = Clock::now();
      while (!waiting_.empty() && waiting_.begin()->first <= now) {
        // Retries go first: they were queued before anything still waiting to start.
        ready_.push_front(std::move(waiting_.begin()->second));
        waiting_.erase(waiting_.begin());
      }
      while (!ready_.empty() && active_.size() < static_cast<size_t>(maxConnections_)) {
        auto job = std::move(ready_.front());
        ready_.pop_front();
        start(std::move(job));
      }
      int running = 0;
      curl_multi_perform(multi_, &running);
      int left = 0;
      while (CURLMsg* msg = curl_multi_info_read(multi_, &left)) {
        if (msg->msg == CURLMSG_DONE) complete(msg->easy_handle, msg->data.result);
      }
      long timeoutMs = -1;
      curl_multi_timeout(multi_, &timeoutMs);
      if (timeoutMs < 0 || timeoutMs > 1000) timeoutMs = 1000;
      if (!waiting_.empty()) {
        const auto until = std::chrono::ceil<std::chrono::milliseconds>(waiting_.begin()->first - Clock::now()).count();
        timeoutMs = std::clamp<long>(static_cast<long>(until), 0, timeoutMs);
      }
      if (!ready_.empty() && active_.size() < static_cast<size_t>(maxConnections_)) timeoutMs = 0;
      curl_multi_poll(multi_, nullptr, 0, static_cast<int>(timeoutMs), nullptr);
    }
    shutdown();
  }

  void shutdown() {
    const Status cancelled = Status::error(ErrorKind::Cancelled, "the mount is closing");
    for (auto& [easy, t] : active_) {
      curl_multi_remove_handle(multi_, easy);
      if (t->job && t->job->sink) finish(*t->job, cancelled);
      t->reset();
      curl_easy_cleanup(easy);
    }
    active_.clear();
    inFlight_ = 0;
    std::vector<std::unique_ptr<Job>> rest;
    {
      std::lock_guard lock(mutex_);
      for (auto& j : incoming_) rest.push_back(std::move(j));
      incoming_.clear();
    }
    for (auto& j : ready_) rest.push_back(std::move(j));
    for (auto& [due, j] : waiting_) rest.push_back(std::move(j));
    ready_.clear();
    waiting_.clear();
    for (auto& j : rest)
      if (j->sink) finish(*j, cancelled);
    queued_ = 0;
    for (auto& t : idle_) curl_easy_cleanup(t->easy);
    idle_.clear();
    // Easy handles first: the share cannot go while one still uses it.
    std::lock_guard lock(mutex_);
    curl_multi_cleanup(multi_);
    multi_ = nullptr;
    curl_share_cleanup(share_);
    share_ = nullptr;
  }

  std::unique_ptr<Transfer> takeTransfer() {
    if (!idle_.empty()) {
      auto t = std::move(idle_.back());
      idle_.pop_back();
      return t;
    }
    auto t = std::make_unique<Transfer>();
    t->easy = curl_easy_init();
    if (!t->easy) return nullptr;
    CURL* e = t->easy;
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_SHARE, share_);
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, static_cast<long>(CURL_HTTP_VERSION_1_1));
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    // The path is sent exactly as signed: no dot-segment clean-up of keys such as "a/../b".
    curl_easy_setopt(e, CURLOPT_PATH_AS_IS, 1L);
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    // The stored bytes, whatever Content-Encoding the object was uploaded with.
    curl_easy_setopt(e, CURLOPT_HTTP_CONTENT_DECODING, 0L);
    // The proxy the control plane chose for both paths, never one libcurl finds in the environment
    // itself (its NO_PROXY rules are not the SDK path's).
    curl_easy_setopt(e, CURLOPT_PROXY, config_.proxy.c_str());
    // A proxy's answer to CONNECT is not the server's response: its head would be parsed as that.
    curl_easy_setopt(e, CURLOPT_SUPPRESS_CONNECT_HEADERS, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_BUFFERSIZE, kReceiveBuffer);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(std::max(1, config_.connectTimeoutMs)));
    // The request timeout is silence on the connection, waiting for the response included: checked
    // in the progress callback (libcurl calls it at least once a second), since libcurl's own
    // LOW_SPEED_* judge a speed averaged over several seconds, which a burst before the silence
    // keeps up. They serve for the trickle instead, over a longer span.
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, kMinBytesPerSecond);
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, std::max(1L, 2L * config_.requestTimeoutMs / 1000));
    curl_easy_setopt(e, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(e, CURLOPT_XFERINFOFUNCTION, &CurlFetchEngine::onProgress);
    curl_easy_setopt(e, CURLOPT_XFERINFODATA, t.get());
    t->silenceLimit = std::chrono::milliseconds(std::max(1, config_.requestTimeoutMs));
    // The chain is checked by PeerVerifier against one trust list, before each request is sent:
    // libcurl's own check would parse every trusted CA again for each connection. libcurl still
    // matches the certificate to the host name (VERIFYHOST), and so does PeerVerifier.
    if (endpoint_.scheme == "https") {
      curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
      curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
      curl_easy_setopt(e, CURLOPT_CAINFO, nullptr);
      curl_easy_setopt(e, CURLOPT_CAPATH, nullptr);
      curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, &CurlFetchEngine::onConnected);
      curl_easy_setopt(e, CURLOPT_PREREQDATA, t.get());
      t->engine = this;
    }
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t->errorText);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, &CurlFetchEngine::onHeader);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, &CurlFetchEngine::onBody);
    t->bytesReceived = &bytesReceived_;
    return t;
  }

  void start(std::unique_ptr<Job> job) {
    queued_--;
    const auto now = Clock::now();
    if (job->timing.attempts == 0) job->firstStart = now;
    if (!job->warmUp()) {
      if (job->length == 0) return finish(*job, Status::ok());
      if (job->offset > UINT64_MAX - job->length || (job->pin.size != 0 && job->offset + job->length > job->pin.size)) {
        errors_++;
        return finish(*job, Status::error(ErrorKind::Integrity, job->what(config_.bucket) + ": past the end of the object's " +
                                                                    std::to_string(job->pin.size) + " bytes"));
      }
      if (job->pin.key.empty()) {
        errors_++;
        return finish(*job, Status::error(ErrorKind::NotFound, "get " + config_.bucket + "/: an empty key"));
      }
    }
    auto t = takeTransfer();
    if (!t) {
      if (job->sink) finish(*job, Status::error(ErrorKind::NoMemory, "cannot create a libcurl handle"));
      return;
    }
    const auto wallNow = std::chrono::system_clock::now() + std::chrono::milliseconds(clockOffsetMs_.load());
    S3Request request;
    if (job->warmUp()) {
      request = headBucket(endpoint_, config_.bucket, signer_, wallNow);
      curl_easy_setopt(t->easy, CURLOPT_NOBODY, 1L);
    } else {
      t->first = job->offset + job->written;
      t->last = job->offset + job->length - 1;
      request = rangeGet(endpoint_, config_.bucket, job->pin, t->first, t->last, signer_, wallNow);
      curl_easy_setopt(t->easy, CURLOPT_HTTPGET, 1L);
      requests_++;
    }
    // libcurl's own Accept is not needed; Host is ours, as signed.
    t->headers = curl_slist_append(nullptr, "Accept:");
    for (const Header& h : request.headers) t->headers = curl_slist_append(t->headers, (h.first + ": " + h.second).c_str());
    curl_easy_setopt(t->easy, CURLOPT_URL, request.url.c_str());
    curl_easy_setopt(t->easy, CURLOPT_HTTPHEADER, t->headers);
    curl_easy_setopt(t->easy, CURLOPT_PRIVATE, t.get());
    curl_easy_setopt(t->easy, CURLOPT_HEADERDATA, t.get());
    curl_easy_setopt(t->easy, CURLOPT_WRITEDATA, t.get());
    job->timing.attempts++;
    t->writtenBefore = job->written;
    t->job = std::move(job);
    t->lastActivity = Clock::now();
    if (curl_multi_add_handle(multi_, t->easy) != CURLM_OK) {
      auto j = std::move(t->job);
      t->reset();
      idle_.push_back(std::move(t));
      if (j->sink) finish(*j, Status::error(ErrorKind::Stream, "libcurl refused the transfer"));
      return;
    }
    inFlight_++;
    CURL* easy = t->easy;
    active_.emplace(easy, std::move(t));
  }

  // Called once the connection is up (a new one or one kept alive), before the request goes: a
  // peer that is not trusted gets no request, signed or not.
  static int onConnected(void* user, char*, char*, int, int) {
    auto* t = static_cast<Transfer*>(user);
    CurlFetchEngine& engine = *t->engine;
    std::optional<std::string> why;
    if (!engine.verifier_) {
      t->verdict = caBundleFailure(engine.trustError_);
      return CURL_PREREQFUNC_ABORT;
    }
    curl_tlssessioninfo* tls = nullptr;
    if (curl_easy_getinfo(t->easy, CURLINFO_TLS_SSL_PTR, &tls) != CURLE_OK || !tls || tls->backend != CURLSSLBACKEND_GNUTLS)
      why = "no GnuTLS session on an HTTPS connection";
    else
      why = engine.verifier_->check(static_cast<gnutls_session_t>(tls->internals), engine.endpoint_.host);
    if (!why) return CURL_PREREQFUNC_OK;
    t->verdict = untrustedFailure(*why);
    return CURL_PREREQFUNC_ABORT;
  }

  static int onProgress(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
    auto* t = static_cast<Transfer*>(user);
    if (Clock::now() - t->lastActivity < t->silenceLimit) return 0;
    t->verdict =
        Failure{ErrorKind::Stream, true,
                "timed out: no data for " +
                    std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(t->silenceLimit).count()) + " ms"};
    return 1;
  }

  // curl hands over each header line of each response head, the final empty line included.
  static size_t onHeader(char* data, size_t size, size_t n, void* user) {
    auto* t = static_cast<Transfer*>(user);
    const size_t bytes = size * n;
    t->lastActivity = Clock::now();
    if (!t->head.addLine(std::string_view(data, bytes))) {
      t->verdict = Failure{ErrorKind::Stream, true, "a malformed response: " + t->head.error()};
      return 0;
    }
    if (!t->head.complete() || t->head.status() < 200 || t->job->warmUp()) return bytes;
    if (t->head.status() >= 200 && t->head.status() < 300) {
      BodyPlan plan;
      const Status s = acceptRange(t->head, t->first, t->last, t->job->pin, plan);
      if (!s) {
        // Another version is final; any other lie may not be told again.
        t->verdict = Failure{s.kind, s.kind != ErrorKind::Integrity, s.message};
        return 0;
      }
      t->planned = true;
      t->skipLeft = plan.skip;
      t->deliverLeft = plan.length;
    }
    return bytes;
  }

  static size_t onBody(char* data, size_t size, size_t n, void* user) {
    auto* t = static_cast<Transfer*>(user);
    const size_t bytes = size * n;
    t->lastActivity = Clock::now();
    if (t->verdict) return 0;
    if (!t->planned) {
      // An error body: its first 4 KiB at most; returning short ends the transfer.
      const size_t keep = std::min(bytes, kErrorBodyLimit - t->errorBody.size());
      t->errorBody.append(data, keep);
      return keep == bytes ? bytes : 0;
    }
    size_t used = static_cast<size_t>(std::min<uint64_t>(t->skipLeft, bytes));
    t->skipLeft -= used;
    Job& job = *t->job;
    while (used < bytes && t->deliverLeft > 0) {
      const uint64_t at = job.offset + job.written;
      const std::span<std::byte> space = job.sink->space(at);
      if (space.empty()) {
        t->verdict = Failure{ErrorKind::NoMemory, false, "the sink gave no space for the body"};
        return 0;
      }
      const size_t c = static_cast<size_t>(std::min<uint64_t>({bytes - used, space.size(), t->deliverLeft}));
      std::memcpy(space.data(), data + used, c);
      job.sink->wrote(at, c);
      job.written += c;
      job.timing.bytes += c;
      t->deliverLeft -= c;
      *t->bytesReceived += c;
      used += c;
    }
    if (t->deliverLeft == 0) {
      t->delivered = true;
      // A 200 with the whole object goes on past the range: stop reading it here.
      if (used < bytes) return 0;
    }
    return bytes;
  }

  void complete(CURL* easy, CURLcode rc) {
    auto it = active_.find(easy);
    if (it == active_.end()) return;
    std::unique_ptr<Transfer> t = std::move(it->second);
    active_.erase(it);
    curl_multi_remove_handle(multi_, easy);
    inFlight_--;
    std::unique_ptr<Job> job = std::move(t->job);

    long connects = 0;
    curl_easy_getinfo(easy, CURLINFO_NUM_CONNECTS, &connects);
    connectionsOpened_ += static_cast<uint64_t>(std::max(0L, connects));
    curl_off_t pre = 0, first = 0, total = 0, connect = 0;
    curl_easy_getinfo(easy, CURLINFO_PRETRANSFER_TIME_T, &pre);
    curl_easy_getinfo(easy, CURLINFO_STARTTRANSFER_TIME_T, &first);
    curl_easy_getinfo(easy, CURLINFO_TOTAL_TIME_T, &total);
    curl_easy_getinfo(easy, CURLINFO_APPCONNECT_TIME_T, &connect);
    if (connect == 0) curl_easy_getinfo(easy, CURLINFO_CONNECT_TIME_T, &connect);

    const bool success = t->delivered;
    const bool progressed = !job->warmUp() && job->offset + job->written > t->first;
    // This attempt's bytes only: after a resume the last attempt carried the rest, not the range.
    const uint64_t carried = job->written - t->writtenBefore;
    long status = 0;
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
    Failure failure;
    if (t->delivered) {
      // Every byte asked for is in the sink; what curl says of the rest of a 200 does not matter.
    } else if (t->verdict) {
      failure = *t->verdict;
    } else if (status >= 300 && !job->warmUp()) {
      const std::string code = xmlElement(t->errorBody, "Code");
      const std::string message = xmlElement(t->errorBody, "Message");
      HttpFailure f = classifyHttpError(static_cast<int>(status), code);
      // Signed again with the server's time, it goes through (as with the SDK on the control plane).
      if (code == "RequestTimeTooSkewed" && correctClock(t->head.date())) f.retry = true;
      failure = {f.kind, f.retry,
                 "HTTP " + std::to_string(status) + (code.empty() ? "" : " " + code) + (message.empty() ? "" : ": " + message)};
    } else if (rc != CURLE_OK) {
      failure = curlFailure(rc, t->errorText);
    } else if (!job->warmUp()) {
      failure = {ErrorKind::Stream, true, "the response ended before the range did"};
    }
    t->reset();
    idle_.push_back(std::move(t));

    if (job->warmUp()) return;
    job->timing.connectUs = static_cast<uint64_t>(std::max<curl_off_t>(0, connect));
    job->timing.firstByteUs = static_cast<uint64_t>(std::max<curl_off_t>(0, first - pre));
    job->timing.transferUs = static_cast<uint64_t>(std::max<curl_off_t>(0, total - first));
    if (first > pre) average(firstByteUsAverage_, static_cast<uint64_t>(first - pre));
    if (success && carried >= kRateSampleMinBytes && total > first) {
      average(bytesPerSecond_, carried * 1'000'000 / static_cast<uint64_t>(total - first));
    }
    if (success) return finish(*job, Status::ok());
    // A broken body resumes where it stopped, with the whole retry budget for each step forward
    // (and kAttemptsPerRetryBudget budgets at most in all).
    if (progressed) job->failures = 0;
    retryOrFail(std::move(job), failure);
  }

  // Where this machine's clock with its offset is kClockSkewMs or more from the server's Date, the
  // offset becomes the difference: true when it moved.
  bool correctClock(const std::optional<int64_t>& serverSeconds) {
    if (!serverSeconds) return false;
    const int64_t nowMs =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
    const int64_t serverMs = *serverSeconds * 1000;
    if (std::llabs(nowMs + clockOffsetMs_.load() - serverMs) < kClockSkewMs) return false;
    clockOffsetMs_.store(serverMs - nowMs);
    return true;
  }

  void retryOrFail(std::unique_ptr<Job> job, const Failure& failure) {
    job->failures++;
    if (failure.retry && job->failures < config_.retry.maxAttempts &&
        job->timing.attempts < kAttemptsPerRetryBudget * config_.retry.maxAttempts) {
      retries_++;
      queued_++;
      const auto due = Clock::now() + backoff(job->failures - 1);
      waiting_.emplace(due, std::move(job));
      return;
    }
    errors_++;
    const std::string what = job->what(config_.bucket);
    const std::string tries = job->timing.attempts > 1 ? " after " + std::to_string(job->timing.attempts) + " attempts" : "";
    finish(*job, Status::error(failure.kind, what + ": " + failure.message + tries));
  }

  std::chrono::milliseconds backoff(int retry) {
    // As lib/o3/retry.ts backoffDelay: drawn from [floor, 2 * floor], floor = base * 2^retry.
    const double floor = std::min(config_.retry.maxDelayMs / 2.0, config_.retry.baseDelayMs * std::pow(2.0, retry));
    std::uniform_real_distribution<double> jitter(0.0, 1.0);
    return std::chrono::milliseconds(static_cast<int64_t>(floor + jitter(rng_) * floor));
  }

  void finish(Job& job, const Status& status) {
    job.timing.totalUs = micros(Clock::now() - job.submitted);
    job.timing.queuedUs = job.timing.attempts ? micros(job.firstStart - job.submitted) : job.timing.totalUs;
    job.sink->timing(job.timing);
    job.sink->finished(status, job.pin);
  }

  static void average(std::atomic<uint64_t>& avg, uint64_t sample) {
    const uint64_t old = avg.load();
    avg = old == 0 ? sample : static_cast<uint64_t>(old * (1 - kAverageWeight) + sample * kAverageWeight);
  }

  const FetchConfig config_;
  SigV4Signer signer_;
  std::atomic<int64_t> clockOffsetMs_;
  const int maxConnections_;
  Endpoint endpoint_;
  CURLM* multi_ = nullptr;
  CURLSH* share_ = nullptr;
  std::unique_ptr<PeerVerifier> verifier_;  // over HTTPS, unless its trust list could not be loaded
  std::string trustError_;                  // why it could not
  std::thread thread_;
  std::thread::id engineThread_;  // set once, before any other thread can see the engine
  std::mutex joinMutex_;          // one closer joins; the others wait for it

  std::mutex mutex_;  // guards incoming_, closing_, and multi_ against its clean-up
  std::vector<std::unique_ptr<Job>> incoming_;
  bool closing_ = false;

  // Engine thread only.
  std::deque<std::unique_ptr<Job>> ready_;
  std::multimap<Clock::time_point, std::unique_ptr<Job>> waiting_;
  std::map<CURL*, std::unique_ptr<Transfer>> active_;
  std::vector<std::unique_ptr<Transfer>> idle_;
  std::mt19937_64 rng_;

  std::atomic<uint64_t> requests_{0}, retries_{0}, errors_{0}, bytesReceived_{0}, connectionsOpened_{0};
  std::atomic<uint64_t> queued_{0}, inFlight_{0}, firstByteUsAverage_{0}, bytesPerSecond_{0};
};

}  // namespace

std::unique_ptr<FetchEngine> FetchEngine::create(const FetchConfig& config) { return std::make_unique<CurlFetchEngine>(config); }

}  // namespace o3mount
