// The one way the binding runs work off the JS thread: a worker that settles a promise.
#pragma once

#include <napi.h>

#include <functional>
#include <utility>

namespace o3addon {

// The progress type of work that reports none.
struct NoProgress {};

// Runs `work` on a libuv worker thread, then settles a promise on the JS thread: resolved with
// `convert(env, result)`, or rejected with the message of what `work` (or `convert`) threw. Progress that `work`
// reports reaches `hooks.progress` on the JS thread, in order and before the promise settles;
// without that hook `work` gets an empty reporter. `hooks.settled` runs on the JS thread just
// before the promise settles either way. The worker owns every callable until it has settled, so
// JS references they capture stay alive as long as the work may use them.
template <class Result, class Progress = NoProgress>
class PromiseWorker final : public Napi::AsyncProgressQueueWorker<Progress> {
 public:
  using Report = std::function<void(const Progress&)>;
  using Work = std::function<Result(const Report&)>;
  using Convert = std::function<Napi::Value(Napi::Env, Result&)>;
  using ProgressHook = std::function<void(Napi::Env, const Progress&)>;
  struct Hooks {
    ProgressHook progress;
    std::function<void()> settled;
  };

  static Napi::Promise Start(Napi::Env env, const char* name, Work work, Convert convert, Hooks hooks = {}) {
    auto* worker = new PromiseWorker(env, name, std::move(work), std::move(convert), std::move(hooks));
    Napi::Promise promise = worker->deferred_.Promise();
    worker->Queue();
    return promise;
  }

 private:
  using Base = Napi::AsyncProgressQueueWorker<Progress>;

  PromiseWorker(Napi::Env env, const char* name, Work work, Convert convert, Hooks hooks)
      : Base(env, name),
        work_(std::move(work)),
        convert_(std::move(convert)),
        hooks_(std::move(hooks)),
        deferred_(Napi::Promise::Deferred::New(env)) {}

  void Execute(const typename Base::ExecutionProgress& progress) override {
    Report report;
    if (hooks_.progress) report = [&progress](const Progress& p) { progress.Send(&p, 1); };
    result_ = work_(report);
  }
  void OnProgress(const Progress* data, size_t count) override {
    Napi::HandleScope scope(this->Env());
    for (size_t i = 0; i < count; ++i) hooks_.progress(this->Env(), data[i]);
  }
  void OnOK() override {
    Napi::Value value;
    try {
      value = convert_(this->Env(), result_);
    } catch (const Napi::Error& e) {
      return OnError(e);
    }
    if (hooks_.settled) hooks_.settled();
    deferred_.Resolve(value);
  }
  void OnError(const Napi::Error& e) override {
    if (hooks_.settled) hooks_.settled();
    deferred_.Reject(e.Value());
  }

  Work work_;
  Convert convert_;
  Hooks hooks_;
  Napi::Promise::Deferred deferred_;
  Result result_{};
};

}  // namespace o3addon
