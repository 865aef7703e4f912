// Conversions between JavaScript values and the core's types. Bad input throws Napi::TypeError
// naming the offending option.
#pragma once

#include <napi.h>

#include <vector>

#include "../cpp/trainer.h"

namespace o3addon {

o3::TrainerOptions toTrainerOptions(const Napi::Object& options);
o3::DataSpec toDataSpec(const Napi::Value& value, const std::string& path);
// Entries point into the caller's typed arrays: keep `array` referenced while they are used.
std::vector<o3::StateTensor> toStateTensors(const Napi::Array& array);

Napi::Object fromPosition(Napi::Env env, const o3::Position& p);
Napi::Object fromProgress(Napi::Env env, const o3::Progress& p);
Napi::Object fromTrainResult(Napi::Env env, const o3::TrainResult& r);
Napi::Object fromEvalResult(Napi::Env env, const o3::EvalResult& r);
// Each buffer is external memory over the tensor's private copy, released when the buffer is
// collected (copied instead where the runtime forbids external buffers).
Napi::Array fromStateTensors(Napi::Env env, std::vector<o3::StateTensor> state);
Napi::Object fromListing(Napi::Env env, const o3::ImageFolderListing& listing);
Napi::Object describeTrainer(Napi::Env env, const o3::Trainer& trainer);

}  // namespace o3addon
