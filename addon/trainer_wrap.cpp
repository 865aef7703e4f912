#include "trainer_wrap.h"

#include <functional>
#include <memory>
#include <string>

#include "convert.h"
#include "promise_worker.h"

namespace o3addon {
namespace {

// The external value TrainerWrap's constructor receives from Wrap(), so that JS cannot construct
// a trainer without going through createTrainer().
struct Handoff {
  std::shared_ptr<o3::Trainer> trainer;
};

// Runs one operation of `wrap`'s trainer on a worker (see PromiseWorker). Until its promise
// settles the trainer is busy and the wrapper referenced (so not collected); so is `keepAlive`,
// JS memory the work reads (loadStateDict's buffers).
template <class Result, class Progress = NoProgress>
Napi::Promise runOperation(TrainerWrap& wrap, Napi::Env env, const char* name,
                           std::function<Result(o3::Trainer&, const typename PromiseWorker<Result, Progress>::Report&)> work,
                           typename PromiseWorker<Result, Progress>::Convert convert,
                           typename PromiseWorker<Result, Progress>::ProgressHook onProgress = {},
                           Napi::Value keepAlive = Napi::Value()) {
  using Worker = PromiseWorker<Result, Progress>;
  std::shared_ptr<o3::Trainer> trainer = wrap.Begin(env);
  auto self = std::make_shared<Napi::ObjectReference>(Napi::Persistent(wrap.Value()));
  auto kept = std::make_shared<Napi::ObjectReference>();
  if (!keepAlive.IsEmpty() && keepAlive.IsObject()) *kept = Napi::Persistent(keepAlive.As<Napi::Object>());
  return Worker::Start(
      env, name, [trainer, work = std::move(work)](const typename Worker::Report& report) { return work(*trainer, report); },
      std::move(convert), {std::move(onProgress), [&wrap, self, kept] { wrap.End(); }});
}

}  // namespace

Napi::Function TrainerWrap::Define(Napi::Env env) {
  return DefineClass(env, "NativeTrainer",
                     {
                         InstanceMethod<&TrainerWrap::Info>("info"),
                         InstanceMethod<&TrainerWrap::Position>("position"),
                         InstanceMethod<&TrainerWrap::FilesAhead>("filesAhead"),
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

// filesAhead(): the paths, joined by NUL (no path holds one), so that tens of thousands of them
// cost the JS thread one string rather than one each.
Napi::Value TrainerWrap::FilesAhead(const Napi::CallbackInfo& info) {
  return runOperation<std::string>(
      *this, info.Env(), "o3.trainer.filesAhead",
      [](o3::Trainer& t, const auto&) {
        std::string joined;
        for (const std::string& f : t.filesAhead()) {
          if (!joined.empty()) joined.push_back('\0');
          joined += f;
        }
        return joined;
      },
      [](Napi::Env env, std::string& s) -> Napi::Value { return Napi::String::New(env, s); });
}

// train(maxSteps, toEpochEnd, onProgress?): maxSteps < 0 sets no step limit.
Napi::Value TrainerWrap::Train(const Napi::CallbackInfo& info) {
  if (!info[0].IsNumber()) throw Napi::TypeError::New(info.Env(), "maxSteps must be a number");
  if (!info[1].IsBoolean()) throw Napi::TypeError::New(info.Env(), "toEpochEnd must be a boolean");
  const int64_t maxSteps = info[0].As<Napi::Number>().Int64Value();
  const bool toEpochEnd = info[1].As<Napi::Boolean>().Value();
  PromiseWorker<o3::TrainResult, o3::Progress>::ProgressHook onProgress;
  if (info[2].IsFunction()) {
    auto callback = std::make_shared<Napi::FunctionReference>(Napi::Persistent(info[2].As<Napi::Function>()));
    onProgress = [callback](Napi::Env env, const o3::Progress& p) {
      // A throwing callback must not take the process down; the TypeScript layer reports it.
      try {
        callback->Call({fromProgress(env, p)});
      } catch (const Napi::Error&) {
      }
    };
  }
  return runOperation<o3::TrainResult, o3::Progress>(
      *this, info.Env(), "o3.trainer.train",
      [maxSteps, toEpochEnd](o3::Trainer& t, const o3::ProgressFn& report) { return t.train(maxSteps, toEpochEnd, report); },
      [](Napi::Env env, o3::TrainResult& r) -> Napi::Value { return fromTrainResult(env, r); }, std::move(onProgress));
}

Napi::Value TrainerWrap::Evaluate(const Napi::CallbackInfo& info) {
  const o3::DataSpec data = toDataSpec(info[0], "data");
  if (!info[1].IsNumber() || info[1].As<Napi::Number>().Int64Value() < 1)
    throw Napi::TypeError::New(info.Env(), "batchSize must be a positive integer");
  const int64_t batchSize = info[1].As<Napi::Number>().Int64Value();
  return runOperation<o3::EvalResult>(
      *this, info.Env(), "o3.trainer.evaluate",
      [data, batchSize](o3::Trainer& t, const auto&) { return t.evaluate(data, batchSize); },
      [](Napi::Env env, o3::EvalResult& r) -> Napi::Value { return fromEvalResult(env, r); });
}

Napi::Value TrainerWrap::StateDict(const Napi::CallbackInfo& info) {
  using State = std::vector<o3::StateTensor>;
  return runOperation<State>(
      *this, info.Env(), "o3.trainer.stateDict", [](o3::Trainer& t, const auto&) { return t.stateDict(); },
      [](Napi::Env env, State& s) -> Napi::Value { return fromStateTensors(env, std::move(s)); });
}

Napi::Value TrainerWrap::LoadStateDict(const Napi::CallbackInfo& info) {
  if (!info[0].IsArray()) throw Napi::TypeError::New(info.Env(), "state must be an array");
  auto state = std::make_shared<std::vector<o3::StateTensor>>(toStateTensors(info[0].As<Napi::Array>()));
  return runOperation<bool>(
      *this, info.Env(), "o3.trainer.loadStateDict",
      [state](o3::Trainer& t, const auto&) {
        t.loadStateDict(*state);
        return true;
      },
      [](Napi::Env env, bool&) -> Napi::Value { return env.Undefined(); }, {}, info[0]);
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
