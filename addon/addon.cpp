// Module entry: createTrainer(options), listImageFolder(root) and decodeSample(bytes, channels,
// size), all returning promises.
#include <napi.h>

#include <memory>

#include "../cpp/dataset.h"
#include "../cpp/image_decode.h"
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

// The sample an encoded image becomes (CHW bytes), by the loaders' own path: for checking other
// implementations of it, such as examples/pytorch, byte for byte.
Napi::Value DecodeSample(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
    throw Napi::TypeError::New(env, "bytes must be a Uint8Array or Buffer");
  if (!info[1].IsNumber() || !info[2].IsNumber()) throw Napi::TypeError::New(env, "channels and size must be numbers");
  const Napi::Uint8Array bytes = info[0].As<Napi::Uint8Array>();
  o3::DataSpec spec;
  spec.channels = info[1].As<Napi::Number>().Int32Value();
  spec.imageSize = info[2].As<Napi::Number>().Int32Value();
  // Copied: the caller's buffer may change or go while the worker runs.
  return PromiseWorker<std::vector<uint8_t>>::Start(
      env, "o3.decodeSample",
      [data = std::vector<uint8_t>(bytes.Data(), bytes.Data() + bytes.ByteLength()), spec](const auto&) {
        o3::checkImageSpec(spec);
        std::vector<uint8_t> out(size_t(spec.channels) * size_t(spec.imageSize) * size_t(spec.imageSize));
        o3::decodeSample(data, "image", spec.channels, spec.imageSize, out.data());
        return out;
      },
      [](Napi::Env env, std::vector<uint8_t>& out) -> Napi::Value {
        return Napi::Buffer<uint8_t>::Copy(env, out.data(), out.size());
      });
}

}  // namespace

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto* data = new AddonData{Napi::Persistent(TrainerWrap::Define(env))};
  env.SetInstanceData(data);
  exports.Set("createTrainer", Napi::Function::New<CreateTrainer>(env, "createTrainer"));
  exports.Set("listImageFolder", Napi::Function::New<ListImageFolder>(env, "listImageFolder"));
  exports.Set("decodeSample", Napi::Function::New<DecodeSample>(env, "decodeSample"));
  return exports;
}

}  // namespace o3addon

// The macro pastes its argument into an identifier, so it takes an unqualified name.
static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return o3addon::Init(env, exports); }
NODE_API_MODULE(o3_trainer, InitModule)
