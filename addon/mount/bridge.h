// The control-plane bridge: the byte path's questions (lookup, readdir, open), its notes
// (invalidate), its log lines and its end cross to the JavaScript thread through one thread-safe
// function, queued without blocking the thread that asks; JavaScript answers a question later by
// calling back with its id. No FUSE thread ever waits for JavaScript.
#pragma once

#include <napi.h>

#include <cstdint>
#include <functional>
#include <mutex>
#include <unordered_map>

#include "mount/control_plane.h"
#include "mount/log_sink.h"

namespace o3addon::mount {

class Bridge final : public o3mount::ControlPlane, public o3mount::LogSink {
 public:
  // `dispatch(kind, a, b, c)` is called on the JS thread: ('lookup'|'readdir'|'open', id, path),
  // ('invalidate', 0, path), ('log', level, message, fields), ('ended', status).
  Bridge(Napi::Env env, Napi::Function dispatch);
  ~Bridge() override;
  Bridge(const Bridge&) = delete;
  Bridge& operator=(const Bridge&) = delete;

  // ControlPlane and LogSink: from any thread.
  void lookup(const std::string& path, std::function<void(o3mount::Status, std::optional<o3mount::EntryInfo>)> done) override;
  void readdir(const std::string& path, std::function<void(o3mount::Status, std::vector<o3mount::DirEntry>)> done) override;
  void open(const std::string& path, std::function<void(o3mount::Status, o3mount::OpenInfo)> done) override;
  void invalidate(const std::string& path) override;
  void log(o3mount::LogLevel level, std::string message, o3mount::LogFields fields) override;

  // On the JS thread: JavaScript's answers. False when the id is unknown (answered already, or
  // dropped because the mount has ended).
  bool answerLookup(uint64_t id, const o3mount::Status& status, std::optional<o3mount::EntryInfo> entry);
  bool answerReaddir(uint64_t id, const o3mount::Status& status, std::vector<o3mount::DirEntry> entries);
  bool answerOpen(uint64_t id, const o3mount::Status& status, o3mount::OpenInfo info);

  // The session has ended: unanswered questions are dropped (their requests went with it), an
  // answer being delivered now is waited for, and nothing more is asked. Any thread.
  void close();
  // The last message: `onJsThread` runs on the JS thread, then dispatch('ended', status), then the
  // thread-safe function is released (the event loop is no longer held by the mount).
  void ended(int status, std::function<void()> onJsThread);

 private:
  struct Message;
  void send(Message* m);
  // On the JS thread: one message to dispatch().
  static void deliver(Napi::Env env, Napi::Function dispatch, Message* raw);
  template <class Done>
  uint64_t ask(std::unordered_map<uint64_t, Done>& pending, Done done, const char* kind, const std::string& path);
  template <class Done, class... A>
  bool answer(std::unordered_map<uint64_t, Done>& pending, uint64_t id, A&&... args);

  std::mutex mutex_;         // the maps, the id counter, closed_, released_
  std::mutex deliverMutex_;  // held while an answer runs into the filesystem; close() waits for it
  bool closed_ = false;
  bool released_ = false;
  uint64_t nextId_ = 1;
  std::unordered_map<uint64_t, std::function<void(o3mount::Status, std::optional<o3mount::EntryInfo>)>> lookups_;
  std::unordered_map<uint64_t, std::function<void(o3mount::Status, std::vector<o3mount::DirEntry>)>> readdirs_;
  std::unordered_map<uint64_t, std::function<void(o3mount::Status, o3mount::OpenInfo)>> opens_;
  Napi::ThreadSafeFunction tsfn_;
};

}  // namespace o3addon::mount
