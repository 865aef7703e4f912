// The JavaScript object over one o3::Trainer. Every method that can take time runs on a worker
// thread and returns a promise; at most one runs at a time per trainer.
#pragma once

#include <napi.h>

#include <memory>

#include "../cpp/trainer.h"

namespace o3addon {

class TrainerWrap : public Napi::ObjectWrap<TrainerWrap> {
 public:
  static Napi::Function Define(Napi::Env env);
  // Wraps a trainer built by createTrainer(); `constructor` is the class Define() returned.
  static Napi::Object Wrap(const Napi::FunctionReference& constructor, std::shared_ptr<o3::Trainer> trainer);
  explicit TrainerWrap(const Napi::CallbackInfo& info);

  // The trainer for a new operation; throws if closed or if another operation is running.
  std::shared_ptr<o3::Trainer> Begin(Napi::Env env);
  void End() { busy_ = false; }

 private:
  Napi::Value Info(const Napi::CallbackInfo& info);
  Napi::Value Position(const Napi::CallbackInfo& info);
  Napi::Value FilesAhead(const Napi::CallbackInfo& info);
  Napi::Value Train(const Napi::CallbackInfo& info);
  Napi::Value Evaluate(const Napi::CallbackInfo& info);
  Napi::Value StateDict(const Napi::CallbackInfo& info);
  Napi::Value LoadStateDict(const Napi::CallbackInfo& info);
  Napi::Value StopAfterStep(const Napi::CallbackInfo& info);
  Napi::Value Destroy(const Napi::CallbackInfo& info);

  // Workers hold their own reference, so destroying the wrapper mid-operation is safe.
  std::shared_ptr<o3::Trainer> trainer_;
  bool busy_ = false;  // touched on the JS thread only
};

}  // namespace o3addon
