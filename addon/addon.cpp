// Module entry: createTrainer(options) and listImageFolder(root), both returning promises.
#include <napi.h>

#include "../cpp/dataset.h"
#include "convert.h"
#include "trainer_wrap.h"

namespace o3addon {
namespace {

struct AddonData {
  Napi::FunctionReference trainerClass;
};

// Builds the trainer (reads the data, builds the model) off the JS thread.
class CreateTask : public Napi::AsyncWorker {
 public:
  CreateTask(Napi::Env env, o3::TrainerOptions opts)
      : Napi::AsyncWorker(env, "o3.trainer.create"), opts_(std::move(opts)), deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }

 protected:
  void Execute() override { trainer_ = std::make_shared<o3::Trainer>(opts_); }
  void OnOK() override {
    deferred_.Resolve(TrainerWrap::Wrap(Env().GetInstanceData<AddonData>()->trainerClass, std::move(trainer_)));
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  o3::TrainerOptions opts_;
  Napi::Promise::Deferred deferred_;
  std::shared_ptr<o3::Trainer> trainer_;
};

class ListTask : public Napi::AsyncWorker {
 public:
  ListTask(Napi::Env env, std::string root)
      : Napi::AsyncWorker(env, "o3.listImageFolder"), root_(std::move(root)), deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }

 protected:
  void Execute() override { listing_ = o3::listImageFolder(root_); }
  void OnOK() override { deferred_.Resolve(fromListing(Env(), listing_)); }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  std::string root_;
  Napi::Promise::Deferred deferred_;
  o3::ImageFolderListing listing_;
};

Napi::Value CreateTrainer(const Napi::CallbackInfo& info) {
  if (!info[0].IsObject()) throw Napi::TypeError::New(info.Env(), "options must be an object");
  auto* task = new CreateTask(info.Env(), toTrainerOptions(info[0].As<Napi::Object>()));
  Napi::Promise promise = task->Promise();
  task->Queue();
  return promise;
}

Napi::Value ListImageFolder(const Napi::CallbackInfo& info) {
  if (!info[0].IsString()) throw Napi::TypeError::New(info.Env(), "root must be a string");
  auto* task = new ListTask(info.Env(), info[0].As<Napi::String>().Utf8Value());
  Napi::Promise promise = task->Promise();
  task->Queue();
  return promise;
}

}  // namespace

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto* data = new AddonData{Napi::Persistent(TrainerWrap::Define(env))};
  env.SetInstanceData(data);
  exports.Set("createTrainer", Napi::Function::New<CreateTrainer>(env, "createTrainer"));
  exports.Set("listImageFolder", Napi::Function::New<ListImageFolder>(env, "listImageFolder"));
  return exports;
}

}  // namespace o3addon

// The macro pastes its argument into an identifier, so it takes an unqualified name.
static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return o3addon::Init(env, exports); }
NODE_API_MODULE(o3_trainer, InitModule)
