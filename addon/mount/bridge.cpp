#include "bridge.h"

namespace o3addon::mount {

using namespace o3mount;

struct Bridge::Message {
  const char* kind = "";
  uint64_t id = 0;
  std::string path;
  LogLevel level = LogLevel::Info;
  LogFields fields;
  int status = 0;
  std::function<void()> onJsThread;
};

namespace {

const char* levelName(LogLevel l) {
  switch (l) {
    case LogLevel::Debug: return "debug";
    case LogLevel::Info: return "info";
    case LogLevel::Warn: return "warn";
    case LogLevel::Error: return "error";
  }
  return "info";
}

Napi::Object fieldsObject(Napi::Env env, const LogFields& fields) {
  Napi::Object o = Napi::Object::New(env);
  for (const auto& [name, value] : fields) {
    if (const auto* s = std::get_if<std::string>(&value))
      o.Set(name, *s);
    else if (const auto* i = std::get_if<int64_t>(&value))
      o.Set(name, static_cast<double>(*i));
    else if (const auto* d = std::get_if<double>(&value))
      o.Set(name, *d);
    else if (const auto* b = std::get_if<bool>(&value))
      o.Set(name, *b);
  }
  return o;
}

}  // namespace

Bridge::Bridge(Napi::Env env, Napi::Function dispatch)
    // Unlimited queue: a full queue would make a FUSE thread wait, which must never happen.
    : tsfn_(Napi::ThreadSafeFunction::New(env, dispatch, "o3mount.bridge", 0, 1)) {}

Bridge::~Bridge() {
  std::lock_guard lock(mutex_);
  if (!released_) tsfn_.Release();
}

void Bridge::send(Message* m) {
  std::lock_guard lock(mutex_);
  if (released_ || tsfn_.NonBlockingCall(m, deliver) != napi_ok) delete m;
}

template <class Done>
uint64_t Bridge::ask(std::unordered_map<uint64_t, Done>& pending, Done done, const char* kind, const std::string& path) {
  uint64_t id;
  {
    std::lock_guard lock(mutex_);
    if (closed_) return 0;
    id = nextId_++;
    pending.emplace(id, std::move(done));
  }
  auto* m = new Message;
  m->kind = kind;
  m->id = id;
  m->path = path;
  send(m);
  return id;
}

template <class Done, class... A>
bool Bridge::answer(std::unordered_map<uint64_t, Done>& pending, uint64_t id, A&&... args) {
  std::lock_guard deliver(deliverMutex_);
  Done done;
  {
    std::lock_guard lock(mutex_);
    auto it = pending.find(id);
    if (closed_ || it == pending.end()) return false;
    done = std::move(it->second);
    pending.erase(it);
  }
  done(std::forward<A>(args)...);
  return true;
}

void Bridge::lookup(const std::string& path, std::function<void(Status, std::optional<EntryInfo>)> done) {
  if (!ask(lookups_, done, "lookup", path)) done(Status::error(ErrorKind::Cancelled, "the mount is closing"), std::nullopt);
}
void Bridge::readdir(const std::string& path, std::function<void(Status, std::vector<DirEntry>)> done) {
  if (!ask(readdirs_, done, "readdir", path)) done(Status::error(ErrorKind::Cancelled, "the mount is closing"), {});
}
void Bridge::open(const std::string& path, std::function<void(Status, OpenInfo)> done) {
  if (!ask(opens_, done, "open", path)) done(Status::error(ErrorKind::Cancelled, "the mount is closing"), {});
}

bool Bridge::answerLookup(uint64_t id, const Status& status, std::optional<EntryInfo> entry) {
  return answer(lookups_, id, status, std::move(entry));
}
bool Bridge::answerReaddir(uint64_t id, const Status& status, std::vector<DirEntry> entries) {
  return answer(readdirs_, id, status, std::move(entries));
}
bool Bridge::answerOpen(uint64_t id, const Status& status, OpenInfo info) { return answer(opens_, id, status, std::move(info)); }

void Bridge::invalidate(const std::string& path) {
  auto* m = new Message;
  m->kind = "invalidate";
  m->path = path;
  send(m);
}

void Bridge::log(LogLevel level, std::string message, LogFields fields) {
  auto* m = new Message;
  m->kind = "log";
  m->level = level;
  m->path = std::move(message);
  m->fields = std::move(fields);
  send(m);
}

void Bridge::close() {
  {
    std::lock_guard lock(mutex_);
    closed_ = true;
    lookups_.clear();
    readdirs_.clear();
    opens_.clear();
  }
  // An answer already taken from the maps is running into the filesystem: let it finish.
  std::lock_guard deliver(deliverMutex_);
}

void Bridge::ended(int status, std::function<void()> onJsThread) {
  auto* m = new Message;
  m->kind = "ended";
  m->status = status;
  m->onJsThread = std::move(onJsThread);
  std::lock_guard lock(mutex_);
  if (released_) return delete m;
  if (tsfn_.NonBlockingCall(m, deliver) != napi_ok) delete m;
  // The last call: the function goes once it has been delivered.
  tsfn_.Release();
  released_ = true;
}

void Bridge::deliver(Napi::Env env, Napi::Function dispatch, Message* raw) {
  std::unique_ptr<Message> m(raw);
  // The function is being torn down (the environment is going away): nothing to deliver to.
  if (env == nullptr || dispatch.IsEmpty()) return;
  if (m->onJsThread) m->onJsThread();
  const std::string kind = m->kind;
  if (kind == "log") {
    dispatch.Call({Napi::String::New(env, "log"), Napi::String::New(env, levelName(m->level)), Napi::String::New(env, m->path),
                   fieldsObject(env, m->fields)});
  } else if (kind == "ended") {
    dispatch.Call({Napi::String::New(env, "ended"), Napi::Number::New(env, m->status)});
  } else {
    dispatch.Call(
        {Napi::String::New(env, kind), Napi::Number::New(env, static_cast<double>(m->id)), Napi::String::New(env, m->path)});
  }
}

}  // namespace o3addon::mount
