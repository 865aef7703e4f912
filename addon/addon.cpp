// Module entry: createTrainer(options), listImageFolder(root) and listWebDatasetShards(root, pattern), all returning promises.
#include <napi.h>

#include <memory>
#include <string>
#include <vector>

#include "../cpp/dataset.h"
#include "../cpp/webdataset.h"
#include "convert.h"
#include "promise_worker.h"
#include "trainer_wrap.h"

namespace o3addon {
namespace {

struct AddonData {
  Napi::FunctionReference trainerClass;
};

// Builds the trainer (reads the data, builds the model) off the JS thread.
Napi::Value CreateTrainer(const Napi::CallbackInfo& info) {
  if (!info[0].IsObject()) throw Napi::TypeError::New(info.Env(), "options must be an object");
  o3::TrainerOptions opts = toTrainerOptions(info[0].As<Napi::Object>());
  using Created = std::shared_ptr<o3::Trainer>;
  return PromiseWorker<Created>::Start(
      info.Env(), "o3.trainer.create", [opts = std::move(opts)](const auto&) { return std::make_shared<o3::Trainer>(opts); },
      [](Napi::Env env, Created& trainer) -> Napi::Value {
        return TrainerWrap::Wrap(env.GetInstanceData<AddonData>()->trainerClass, std::move(trainer));
      });
}

Napi::Value ListImageFolder(const Napi::CallbackInfo& info) {
  if (!info[0].IsString()) throw Napi::TypeError::New(info.Env(), "root must be a string");
  return PromiseWorker<o3::ImageFolderListing>::Start(
      info.Env(), "o3.listImageFolder",
      [root = info[0].As<Napi::String>().Utf8Value()](const auto&) { return o3::listImageFolder(root); },
      [](Napi::Env env, o3::ImageFolderListing& listing) -> Napi::Value { return fromListing(env, listing); });
}

Napi::Value ListWebDatasetShards(const Napi::CallbackInfo& info) {
  if (!info[0].IsString() || !info[1].IsString()) throw Napi::TypeError::New(info.Env(), "root and pattern must be strings");
  using Paths = std::vector<std::string>;
  return PromiseWorker<Paths>::Start(
      info.Env(), "o3.listWebDatasetShards",
      [root = info[0].As<Napi::String>().Utf8Value(), pattern = info[1].As<Napi::String>().Utf8Value()](const auto&) {
        return o3::webDatasetShards(root, pattern);
      },
      [](Napi::Env env, Paths& paths) -> Napi::Value {
        Napi::Array out = Napi::Array::New(env, paths.size());
        for (size_t i = 0; i < paths.size(); ++i) out.Set(uint32_t(i), paths[i]);
        return out;
      });
}

}  // namespace

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto* data = new AddonData{Napi::Persistent(TrainerWrap::Define(env))};
  env.SetInstanceData(data);
  exports.Set("createTrainer", Napi::Function::New<CreateTrainer>(env, "createTrainer"));
  exports.Set("listImageFolder", Napi::Function::New<ListImageFolder>(env, "listImageFolder"));
  exports.Set("listWebDatasetShards", Napi::Function::New<ListWebDatasetShards>(env, "listWebDatasetShards"));
  return exports;
}

}  // namespace o3addon

// The macro pastes its argument into an identifier, so it takes an unqualified name.
static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return o3addon::Init(env, exports); }
NODE_API_MODULE(o3_trainer, InitModule)
