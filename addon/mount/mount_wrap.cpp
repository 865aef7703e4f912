// The mount's binding, build/Release/o3_mount.node: `new NativeMount(dispatch)`, then
// `start(config)` (a promise; the disk tier is opened and the session mounted off the JS thread),
// `unmount()`, `setCredentials(credentials)`, `stats()`, `prefetch(files, stream)` and the answers to the bridge's questions. One
// thread of its own serves the session; when it ends (unmounted here or from outside) the byte path is torn down off the JS
// thread and dispatch('ended', status) follows. Loads no libtorch.
#include <napi.h>

#include <cmath>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

#include "../promise_worker.h"
#include "bridge.h"
#include "mount/mount.h"

namespace o3addon::mount {

using namespace o3mount;

namespace {

Napi::Object objectAt(const Napi::Object& o, const char* name) {
  Napi::Value v = o.Get(name);
  if (!v.IsObject()) throw Napi::TypeError::New(o.Env(), std::string(name) + " must be an object");
  return v.As<Napi::Object>();
}
std::string stringAt(const Napi::Object& o, const char* name) {
  Napi::Value v = o.Get(name);
  if (v.IsUndefined() || v.IsNull()) return {};
  if (!v.IsString()) throw Napi::TypeError::New(o.Env(), std::string(name) + " must be a string");
  return v.As<Napi::String>().Utf8Value();
}
double numberAt(const Napi::Object& o, const char* name) {
  Napi::Value v = o.Get(name);
  if (!v.IsNumber()) throw Napi::TypeError::New(o.Env(), std::string(name) + " must be a number");
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= 0)) throw Napi::RangeError::New(o.Env(), std::string(name) + " must not be negative");
  return d;
}
// A number that may be negative (an offset), finite.
double signedNumberAt(const Napi::Object& o, const char* name) {
  Napi::Value v = o.Get(name);
  if (!v.IsNumber() || !std::isfinite(v.As<Napi::Number>().DoubleValue()))
    throw Napi::TypeError::New(o.Env(), std::string(name) + " must be a finite number");
  return v.As<Napi::Number>().DoubleValue();
}
uint64_t countAt(const Napi::Object& o, const char* name) { return static_cast<uint64_t>(numberAt(o, name)); }
bool boolAt(const Napi::Object& o, const char* name) { return o.Get(name).ToBoolean().Value(); }

ErrorKind kindOf(Napi::Env env, const std::string& name) {
  for (ErrorKind k : {ErrorKind::NotFound, ErrorKind::Auth, ErrorKind::Integrity, ErrorKind::Stream, ErrorKind::Unreachable,
                      ErrorKind::Timeout, ErrorKind::Cancelled, ErrorKind::NoMemory})
    if (name == errorKindName(k)) return k;
  throw Napi::TypeError::New(env, "unknown error kind " + name);
}

// An answer's error argument: null, or { kind, message }.
Status statusOf(const Napi::Value& v) {
  if (v.IsUndefined() || v.IsNull()) return Status::ok();
  if (!v.IsObject()) throw Napi::TypeError::New(v.Env(), "an error must be { kind, message }");
  const Napi::Object o = v.As<Napi::Object>();
  return Status::error(kindOf(v.Env(), stringAt(o, "kind")), stringAt(o, "message"));
}

uint64_t idOf(const Napi::Value& v) {
  if (!v.IsNumber()) throw Napi::TypeError::New(v.Env(), "id must be a number");
  return static_cast<uint64_t>(v.As<Napi::Number>().Int64Value());
}

// { key, etag, versionId?, size, mtimeMs, listedEtag, leaves?: Buffer of 32-byte digests }
OpenInfo openInfoOf(const Napi::Object& o) {
  OpenInfo info;
  info.listedEtag = stringAt(o, "listedEtag");
  info.pin.key = stringAt(o, "key");
  info.pin.etag = stringAt(o, "etag");
  info.pin.versionId = stringAt(o, "versionId");
  info.pin.size = countAt(o, "size");
  info.mtimeMs = static_cast<int64_t>(numberAt(o, "mtimeMs"));
  const Napi::Value leaves = o.Get("leaves");
  if (leaves.IsBuffer()) {
    const auto buf = leaves.As<Napi::Buffer<uint8_t>>();
    if (buf.Length() % 32 != 0) throw Napi::RangeError::New(o.Env(), "leaves must hold 32-byte digests");
    auto l = std::make_shared<Leaves>(buf.Length() / 32);
    for (size_t i = 0; i < l->size(); ++i) std::copy_n(buf.Data() + 32 * i, 32, (*l)[i].begin());
    info.leaves = std::move(l);
  } else if (!leaves.IsUndefined() && !leaves.IsNull()) {
    throw Napi::TypeError::New(o.Env(), "leaves must be a Buffer");
  }
  return info;
}

struct StartConfig {
  MountConfig mount;
  FetchConfig fetch;
  int warmConnections = 0;
};

// { accessKeyId, secretAccessKey, sessionToken? }: secrets, kept in memory and never logged.
Credentials credentialsOf(const Napi::Object& k) {
  return {stringAt(k, "accessKeyId"), stringAt(k, "secretAccessKey"), stringAt(k, "sessionToken")};
}

StartConfig startConfigOf(const Napi::Object& c) {
  StartConfig s;
  MountConfig& m = s.mount;
  m.session.mountpoint = stringAt(c, "mountpoint");
  m.session.fsname = stringAt(c, "fsname");
  m.session.allowOther = boolAt(c, "allowOther");
  m.session.debug = boolAt(c, "debug");
  m.session.maxBackground = static_cast<unsigned>(countAt(c, "maxBackground"));
  m.session.congestionThreshold = static_cast<unsigned>(countAt(c, "congestionThreshold"));
  m.fs.fileMode = static_cast<uint32_t>(countAt(c, "fileMode"));
  m.fs.dirMode = static_cast<uint32_t>(countAt(c, "dirMode"));
  m.fs.uid = static_cast<uint32_t>(countAt(c, "uid"));
  m.fs.gid = static_cast<uint32_t>(countAt(c, "gid"));
  m.fs.attrTimeoutSec = numberAt(c, "attrTimeoutSec");
  m.fs.negativeTimeoutSec = numberAt(c, "negativeTimeoutSec");
  m.fs.readaheadInitial = countAt(c, "readaheadInitial");
  m.fs.seekTolerance = countAt(c, "seekTolerance");
  m.cache.blockSize = countAt(c, "blockSize");
  m.cache.memoryBytes = countAt(c, "cacheMem");
  m.cache.maxConnections = static_cast<int>(countAt(c, "maxConnections"));
  m.cache.workerThreads = static_cast<int>(countAt(c, "workerThreads"));
  m.partSize = countAt(c, "partSize");
  m.readaheadMax = countAt(c, "readaheadMax");
  m.opTimeout = std::chrono::milliseconds(countAt(c, "opTimeoutMs"));
  m.cacheDir = stringAt(c, "cacheDir");
  m.cacheDiskBytes = countAt(c, "cacheDiskBytes");
  m.cacheNamespace = stringAt(c, "cacheNamespace");
  const Napi::Object f = objectAt(c, "fetch");
  s.fetch.endpoint = stringAt(f, "endpoint");
  s.fetch.region = stringAt(f, "region");
  s.fetch.bucket = stringAt(f, "bucket");
  s.fetch.caBundle = stringAt(f, "caBundle");
  s.fetch.clockOffsetMs = static_cast<int64_t>(signedNumberAt(f, "clockOffsetMs"));
  s.fetch.proxy = stringAt(f, "proxy");
  s.fetch.maxConnections = m.cache.maxConnections;
  s.fetch.connectTimeoutMs = static_cast<int>(countAt(f, "connectTimeoutMs"));
  s.fetch.requestTimeoutMs = static_cast<int>(countAt(f, "requestTimeoutMs"));
  s.fetch.retry.maxAttempts = static_cast<int>(countAt(f, "maxAttempts"));
  s.fetch.credentials = credentialsOf(objectAt(f, "credentials"));
  s.warmConnections = static_cast<int>(countAt(f, "warmConnections"));
  return s;
}

Napi::Object statsObject(Napi::Env env, const MountStats& s) {
  Napi::Object o = Napi::Object::New(env);
  Napi::Object counters = Napi::Object::New(env);
#define O3_SET(name) counters.Set(#name, static_cast<double>(s.counters.name));
  O3_MOUNT_COUNTERS(O3_SET)
#undef O3_SET
  o.Set("counters", counters);
  Napi::Object fetch = Napi::Object::New(env);
  fetch.Set("requests", static_cast<double>(s.fetch.requests));
  fetch.Set("retries", static_cast<double>(s.fetch.retries));
  fetch.Set("errors", static_cast<double>(s.fetch.errors));
  fetch.Set("bytesReceived", static_cast<double>(s.fetch.bytesReceived));
  fetch.Set("connectionsOpened", static_cast<double>(s.fetch.connectionsOpened));
  fetch.Set("queued", static_cast<double>(s.fetch.queued));
  fetch.Set("inFlight", static_cast<double>(s.fetch.inFlight));
  fetch.Set("firstByteUsAverage", static_cast<double>(s.fetch.firstByteUsAverage));
  fetch.Set("bytesPerSecondPerConnection", static_cast<double>(s.fetch.bytesPerSecondPerConnection));
  fetch.Set("clockOffsetMs", static_cast<double>(s.fetch.clockOffsetMs));
  o.Set("fetch", fetch);
  Napi::Object cache = Napi::Object::New(env);
  cache.Set("budgetBytes", static_cast<double>(s.cache.budgetBytes));
  cache.Set("cacheBytes", static_cast<double>(s.cache.cacheBytes));
  cache.Set("inflightBytes", static_cast<double>(s.cache.inflightBytes));
  cache.Set("peakUsedBytes", static_cast<double>(s.cache.peakUsedBytes));
  cache.Set("overflowBuffers", static_cast<double>(s.cache.overflowBuffers));
  cache.Set("queuedJobs", static_cast<double>(s.cache.queuedJobs));
  cache.Set("runningJobs", static_cast<double>(s.cache.runningJobs));
  cache.Set("announcedFiles", static_cast<double>(s.cache.announcedFiles));
  o.Set("cache", cache);
  Napi::Object ra = Napi::Object::New(env);
  ra.Set("streams", static_cast<double>(s.readahead.streams));
  ra.Set("maxWindowBytes", static_cast<double>(s.readahead.maxWindowBytes));
  ra.Set("totalWindowBytes", static_cast<double>(s.readahead.totalWindowBytes));
  o.Set("readahead", ra);
  o.Set("openFiles", static_cast<double>(s.openFiles));
  o.Set("diskBytes", static_cast<double>(s.diskBytes));
  o.Set("inodes", static_cast<double>(s.inodes));
  return o;
}

// What start() resolves with: null once mounted, else { kind: 'cacheDir' | 'mount' | 'config' | 'internal', message }.
struct Started {
  std::shared_ptr<Mount> mount;
  std::string failure;
  std::string message;
};

class NativeMount final : public Napi::ObjectWrap<NativeMount> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(
        env, "NativeMount",
        {InstanceMethod<&NativeMount::Start>("start"), InstanceMethod<&NativeMount::Unmount>("unmount"),
         InstanceMethod<&NativeMount::SetCredentials>("setCredentials"), InstanceMethod<&NativeMount::Stats>("stats"),
         InstanceMethod<&NativeMount::Prefetch>("prefetch"), InstanceMethod<&NativeMount::AnswerLookup>("answerLookup"),
         InstanceMethod<&NativeMount::AnswerReaddir>("answerReaddir"), InstanceMethod<&NativeMount::AnswerOpen>("answerOpen")});
  }

  explicit NativeMount(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeMount>(info) {
    if (!info[0].IsFunction()) throw Napi::TypeError::New(info.Env(), "new NativeMount(dispatch): dispatch must be a function");
    bridge_ = std::make_shared<Bridge>(info.Env(), info[0].As<Napi::Function>());
  }

  ~NativeMount() override {
    if (serving_.joinable()) serving_.detach();  // only at process exit: the mount holds a reference while it serves
  }

 private:
  Napi::Value Start(const Napi::CallbackInfo& info) {
    if (!info[0].IsObject()) throw Napi::TypeError::New(info.Env(), "start(config): config must be an object");
    if (started_) throw Napi::Error::New(info.Env(), "start() was called already");
    started_ = true;
    StartConfig config = startConfigOf(info[0].As<Napi::Object>());
    std::shared_ptr<Bridge> bridge = bridge_;
    Ref();  // kept alive while it serves; dropped once 'ended' is delivered
    return PromiseWorker<Started>::Start(
        info.Env(), "o3mount.start",
        [config = std::move(config), bridge](const auto&) {
          Started s;
          try {
            auto engine = FetchEngine::create(config.fetch);
            if (config.warmConnections > 0) engine->warm(config.warmConnections);
            s.mount = std::make_shared<Mount>(config.mount, std::move(engine), *bridge, *bridge);
          } catch (const DiskTierError& e) {
            s.failure = "cacheDir";
            s.message = e.what();
          } catch (const SessionError& e) {
            s.failure = "mount";
            s.message = e.what();
          } catch (const std::invalid_argument& e) {
            s.failure = "config";
            s.message = e.what();
          } catch (const std::exception& e) {
            s.failure = "internal";
            s.message = e.what();
          }
          return s;
        },
        [this](Napi::Env env, Started& s) -> Napi::Value {
          if (!s.mount) {
            Unref();
            Napi::Object failure = Napi::Object::New(env);
            failure.Set("kind", s.failure);
            failure.Set("message", s.message);
            return failure;
          }
          {
            std::lock_guard lock(mutex_);
            mount_ = s.mount;
          }
          serving_ = std::thread([this, m = std::move(s.mount)]() mutable { serve(std::move(m)); });
          return env.Null();
        });
  }

  // The serving thread: the session until it ends, then the teardown, then the news.
  void serve(std::shared_ptr<Mount> m) {
    const int status = m->serve();
    bridge_->close();
    std::shared_ptr<Mount> last;
    {
      std::lock_guard lock(mutex_);
      final_ = m->stats();
      last = std::move(mount_);
    }
    m.reset();
    last.reset();  // joins the engine, drains the workers
    bridge_->ended(status, [this] {
      serving_.join();
      Unref();
    });
  }

  Napi::Value Unmount(const Napi::CallbackInfo& info) {
    std::lock_guard lock(mutex_);
    if (mount_) mount_->unmount();
    return info.Env().Undefined();
  }

  // setCredentials({ accessKeyId, secretAccessKey, sessionToken? }): refreshed temporary credentials.
  Napi::Value SetCredentials(const Napi::CallbackInfo& info) {
    if (!info[0].IsObject()) throw Napi::TypeError::New(info.Env(), "setCredentials(credentials): credentials must be an object");
    const Credentials c = credentialsOf(info[0].As<Napi::Object>());
    std::lock_guard lock(mutex_);
    if (mount_) mount_->setCredentials(c);
    return info.Env().Undefined();
  }

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    std::optional<MountStats> s;
    {
      std::lock_guard lock(mutex_);
      if (mount_)
        s = mount_->stats();
      else
        s = final_;
    }
    return s ? Napi::Value(statsObject(info.Env(), *s)) : info.Env().Undefined();
  }

  // prefetch([{ path, key, etag, versionId?, size, mtimeMs, leaves? }, ...], stream): fetched ahead in
  // this order, after what `stream` (one per announcing client) queued before; streams take turns.
  Napi::Value Prefetch(const Napi::CallbackInfo& info) {
    if (!info[0].IsArray()) throw Napi::TypeError::New(info.Env(), "prefetch(files, stream): files must be an array");
    if (!info[1].IsNumber() || info[1].As<Napi::Number>().DoubleValue() < 0)
      throw Napi::TypeError::New(info.Env(), "prefetch(files, stream): stream must be a non-negative number");
    const uint64_t stream = static_cast<uint64_t>(info[1].As<Napi::Number>().Int64Value());
    const Napi::Array arr = info[0].As<Napi::Array>();
    std::vector<Filesystem::Announced> files;
    for (uint32_t i = 0; i < arr.Length(); ++i) {
      const Napi::Value v = arr.Get(i);
      if (!v.IsObject()) throw Napi::TypeError::New(info.Env(), "prefetch(files, stream): each file must be an object");
      files.push_back({stringAt(v.As<Napi::Object>(), "path"), openInfoOf(v.As<Napi::Object>())});
    }
    std::lock_guard lock(mutex_);
    if (mount_) mount_->prefetch(std::move(files), stream);
    return info.Env().Undefined();
  }

  // answerLookup(id, error, entry): entry is null (no such path) or { isDir, size, mtimeMs, etag }.
  Napi::Value AnswerLookup(const Napi::CallbackInfo& info) {
    const uint64_t id = idOf(info[0]);
    const Status status = statusOf(info[1]);
    std::optional<EntryInfo> entry;
    if (status && info[2].IsObject()) {
      const Napi::Object e = info[2].As<Napi::Object>();
      entry = EntryInfo{boolAt(e, "isDir"), 0, 0, {}};
      if (!entry->isDir) {
        entry->size = countAt(e, "size");
        entry->mtimeMs = static_cast<int64_t>(numberAt(e, "mtimeMs"));
        entry->etag = stringAt(e, "etag");
      }
    }
    return Napi::Boolean::New(info.Env(), bridge_->answerLookup(id, status, std::move(entry)));
  }

  // answerReaddir(id, error, names, isDir): two arrays of the same length.
  Napi::Value AnswerReaddir(const Napi::CallbackInfo& info) {
    const uint64_t id = idOf(info[0]);
    const Status status = statusOf(info[1]);
    std::vector<DirEntry> entries;
    if (status) {
      if (!info[2].IsArray() || !info[3].IsArray()) throw Napi::TypeError::New(info.Env(), "names and isDir must be arrays");
      const Napi::Array names = info[2].As<Napi::Array>();
      const Napi::Array dirs = info[3].As<Napi::Array>();
      if (names.Length() != dirs.Length()) throw Napi::RangeError::New(info.Env(), "names and isDir differ in length");
      entries.reserve(names.Length());
      for (uint32_t i = 0; i < names.Length(); ++i)
        entries.push_back({names.Get(i).As<Napi::String>().Utf8Value(), dirs.Get(i).ToBoolean().Value()});
    }
    return Napi::Boolean::New(info.Env(), bridge_->answerReaddir(id, status, std::move(entries)));
  }

  // answerOpen(id, error, info): info as prefetch's files, without path.
  Napi::Value AnswerOpen(const Napi::CallbackInfo& info) {
    const uint64_t id = idOf(info[0]);
    const Status status = statusOf(info[1]);
    OpenInfo open;
    if (status) {
      if (!info[2].IsObject()) throw Napi::TypeError::New(info.Env(), "an open's answer must be an object");
      open = openInfoOf(info[2].As<Napi::Object>());
    }
    return Napi::Boolean::New(info.Env(), bridge_->answerOpen(id, status, std::move(open)));
  }

  std::shared_ptr<Bridge> bridge_;
  bool started_ = false;
  std::mutex mutex_;
  std::shared_ptr<Mount> mount_;
  std::optional<MountStats> final_;
  std::thread serving_;
};

}  // namespace

}  // namespace o3addon::mount

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) {
  exports.Set("NativeMount", o3addon::mount::NativeMount::Define(env));
  return exports;
}
NODE_API_MODULE(o3_mount, InitModule)
