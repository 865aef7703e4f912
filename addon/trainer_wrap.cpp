#include "trainer_wrap.h"

#include <functional>

#include "convert.h"

namespace o3addon {
namespace {

// The external value TrainerWrap's constructor receives from Wrap(), so that JS cannot construct
// a trainer without going through createTrainer().
struct Handoff {
  std::shared_ptr<o3::Trainer> trainer;
};

// What every operation holds: its wrapper (referenced, so not collected meanwhile), the trainer
// and the promise it settles. Settling marks the trainer idle again.
class Operation {
 public:
  Operation(TrainerWrap& wrap, Napi::Env env)
      : wrap_(wrap), self_(Napi::Persistent(wrap.Value())), trainer_(wrap.Begin(env)), deferred_(Napi::Promise::Deferred::New(env)) {}
  o3::Trainer& trainer() { return *trainer_; }
  Napi::Promise promise() const { return deferred_.Promise(); }
  void resolve(Napi::Value v) {
    wrap_.End();
    deferred_.Resolve(v);
  }
  void reject(const Napi::Error& e) {
    wrap_.End();
    deferred_.Reject(e.Value());
  }

 private:
  TrainerWrap& wrap_;
  Napi::ObjectReference self_;
  std::shared_ptr<o3::Trainer> trainer_;
  Napi::Promise::Deferred deferred_;
};

// Runs `work` on a worker thread and settles a promise with `toJs(result)`, or rejects with the
// error's message. Marks the trainer idle again when done.
template <class Result>
class TrainerTask : public Napi::AsyncWorker {
 public:
  using Work = std::function<Result(o3::Trainer&)>;
  using ToJs = std::function<Napi::Value(Napi::Env, Result&)>;

  static Napi::Promise Start(TrainerWrap& wrap, Napi::Env env, Work work, ToJs toJs, Napi::Value keepAlive = Napi::Value()) {
    auto* task = new TrainerTask(wrap, env, std::move(work), std::move(toJs), keepAlive);
    Napi::Promise promise = task->op_.promise();
    task->Queue();
    return promise;
  }

 protected:
  void Execute() override { result_ = work_(op_.trainer()); }
  void OnOK() override { op_.resolve(toJs_(Env(), result_)); }
  void OnError(const Napi::Error& e) override { op_.reject(e); }

 private:
  TrainerTask(TrainerWrap& wrap, Napi::Env env, Work work, ToJs toJs, Napi::Value keepAlive)
      : Napi::AsyncWorker(env, "o3.trainer"),
        op_(wrap, env),
        work_(std::move(work)),
        toJs_(std::move(toJs)) {
    if (!keepAlive.IsEmpty() && keepAlive.IsObject()) keepAlive_ = Napi::Persistent(keepAlive.As<Napi::Object>());
  }
  Operation op_;
  Work work_;
  ToJs toJs_;
  Napi::ObjectReference keepAlive_;  // JS memory the work reads (loadStateDict's buffers)
  Result result_{};
};

// Training, with progress delivered to a JS callback on the JS thread through a queue.
class TrainTask : public Napi::AsyncProgressQueueWorker<o3::Progress> {
 public:
  static Napi::Promise Start(TrainerWrap& wrap, Napi::Env env, int64_t steps, Napi::Value onProgress) {
    auto* task = new TrainTask(wrap, env, steps, onProgress);
    Napi::Promise promise = task->op_.promise();
    task->Queue();
    return promise;
  }

 protected:
  void Execute(const ExecutionProgress& progress) override {
    o3::ProgressFn report;
    if (!onProgress_.IsEmpty()) report = [&progress](const o3::Progress& p) { progress.Send(&p, 1); };
    result_ = steps_ < 0 ? op_.trainer().trainEpoch(report) : op_.trainer().trainSteps(steps_, report);
  }
  void OnProgress(const o3::Progress* data, size_t count) override {
    Napi::HandleScope scope(Env());
    for (size_t i = 0; i < count; ++i) {
      // A throwing callback must not take the process down; the TypeScript layer reports it.
      try {
        onProgress_.Call({fromProgress(Env(), data[i])});
      } catch (const Napi::Error&) {
      }
    }
  }
  void OnOK() override { op_.resolve(fromTrainResult(Env(), result_)); }
  void OnError(const Napi::Error& e) override { op_.reject(e); }

 private:
  TrainTask(TrainerWrap& wrap, Napi::Env env, int64_t steps, Napi::Value onProgress)
      : Napi::AsyncProgressQueueWorker<o3::Progress>(env, "o3.trainer.train"), op_(wrap, env), steps_(steps) {
    if (onProgress.IsFunction()) onProgress_ = Napi::Persistent(onProgress.As<Napi::Function>());
  }
  Operation op_;
  int64_t steps_;
  Napi::FunctionReference onProgress_;
  o3::TrainResult result_{};
};

}  // namespace

Napi::Function TrainerWrap::Define(Napi::Env env) {
  return DefineClass(env, "NativeTrainer",
                     {
                         InstanceMethod<&TrainerWrap::Info>("info"),
                         InstanceMethod<&TrainerWrap::Position>("position"),
                         InstanceMethod<&TrainerWrap::Train>("train"),
                         InstanceMethod<&TrainerWrap::Evaluate>("evaluate"),
                         InstanceMethod<&TrainerWrap::StateDict>("stateDict"),
                         InstanceMethod<&TrainerWrap::LoadStateDict>("loadStateDict"),
                         InstanceMethod<&TrainerWrap::StopAfterStep>("stopAfterStep"),
                         InstanceMethod<&TrainerWrap::Destroy>("destroy"),
                     });
}

Napi::Object TrainerWrap::Wrap(const Napi::FunctionReference& constructor, std::shared_ptr<o3::Trainer> trainer) {
  Handoff handoff{std::move(trainer)};
  return constructor.New({Napi::External<Handoff>::New(constructor.Env(), &handoff)});
}

TrainerWrap::TrainerWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<TrainerWrap>(info) {
  if (info.Length() != 1 || !info[0].IsExternal())
    throw Napi::TypeError::New(info.Env(), "NativeTrainer is created by createTrainer()");
  trainer_ = std::move(info[0].As<Napi::External<Handoff>>().Data()->trainer);
}

std::shared_ptr<o3::Trainer> TrainerWrap::Begin(Napi::Env env) {
  if (!trainer_) throw Napi::Error::New(env, "trainer is closed");
  if (busy_) throw Napi::Error::New(env, "trainer is busy: wait for the previous call to finish");
  busy_ = true;
  return trainer_;
}

Napi::Value TrainerWrap::Info(const Napi::CallbackInfo& info) {
  if (!trainer_) throw Napi::Error::New(info.Env(), "trainer is closed");
  return describeTrainer(info.Env(), *trainer_);
}

Napi::Value TrainerWrap::Position(const Napi::CallbackInfo& info) {
  if (!trainer_) throw Napi::Error::New(info.Env(), "trainer is closed");
  return fromPosition(info.Env(), trainer_->position());
}

// train(steps, onProgress?): steps < 0 trains to the end of the current epoch.
Napi::Value TrainerWrap::Train(const Napi::CallbackInfo& info) {
  if (!info[0].IsNumber()) throw Napi::TypeError::New(info.Env(), "steps must be a number");
  return TrainTask::Start(*this, info.Env(), info[0].As<Napi::Number>().Int64Value(), info[1]);
}

Napi::Value TrainerWrap::Evaluate(const Napi::CallbackInfo& info) {
  const o3::DataSpec data = toDataSpec(info[0], "data");
  if (!info[1].IsNumber() || info[1].As<Napi::Number>().Int64Value() < 1)
    throw Napi::TypeError::New(info.Env(), "batchSize must be a positive integer");
  const int64_t batchSize = info[1].As<Napi::Number>().Int64Value();
  return TrainerTask<o3::EvalResult>::Start(
      *this, info.Env(), [data, batchSize](o3::Trainer& t) { return t.evaluate(data, batchSize); },
      [](Napi::Env env, o3::EvalResult& r) -> Napi::Value { return fromEvalResult(env, r); });
}

Napi::Value TrainerWrap::StateDict(const Napi::CallbackInfo& info) {
  using State = std::vector<o3::StateTensor>;
  return TrainerTask<State>::Start(
      *this, info.Env(), [](o3::Trainer& t) { return t.stateDict(); },
      [](Napi::Env env, State& s) -> Napi::Value { return fromStateTensors(env, std::move(s)); });
}

Napi::Value TrainerWrap::LoadStateDict(const Napi::CallbackInfo& info) {
  if (!info[0].IsArray()) throw Napi::TypeError::New(info.Env(), "state must be an array");
  auto state = std::make_shared<std::vector<o3::StateTensor>>(toStateTensors(info[0].As<Napi::Array>()));
  return TrainerTask<bool>::Start(
      *this, info.Env(),
      [state](o3::Trainer& t) {
        t.loadStateDict(*state);
        return true;
      },
      [](Napi::Env env, bool&) -> Napi::Value { return env.Undefined(); }, info[0]);
}

Napi::Value TrainerWrap::StopAfterStep(const Napi::CallbackInfo& info) {
  if (trainer_) trainer_->stopAfterStep();
  return info.Env().Undefined();
}

// Releases the trainer now, or when the running operation (cancelled here) finishes.
Napi::Value TrainerWrap::Destroy(const Napi::CallbackInfo& info) {
  if (trainer_) trainer_->cancel();
  trainer_.reset();
  return info.Env().Undefined();
}

}  // namespace o3addon
