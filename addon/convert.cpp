#include "convert.h"

#include <cmath>

#include "../cpp/error.h"
#include "../cpp/malloc_tuning.h"

namespace o3addon {
namespace {

[[noreturn]] void fail(Napi::Env env, const std::string& path, const std::string& what) {
  throw Napi::TypeError::New(env, path + " " + what);
}

Napi::Value field(const Napi::Object& o, const char* key) { return o.Get(key); }

bool present(const Napi::Value& v) { return !v.IsUndefined() && !v.IsNull(); }

std::string getString(const Napi::Object& o, const std::string& path, const char* key, const char* fallback = nullptr) {
  const Napi::Value v = field(o, key);
  if (!present(v) && fallback) return fallback;
  if (!v.IsString()) fail(o.Env(), path + "." + key, "must be a string");
  return v.As<Napi::String>().Utf8Value();
}

double getNumber(const Napi::Object& o, const std::string& path, const char* key, double fallback) {
  const Napi::Value v = field(o, key);
  if (!present(v)) return fallback;
  if (!v.IsNumber() || !std::isfinite(v.As<Napi::Number>().DoubleValue()))
    fail(o.Env(), path + "." + key, "must be a finite number");
  return v.As<Napi::Number>().DoubleValue();
}

int64_t getInteger(const Napi::Object& o, const std::string& path, const char* key, int64_t fallback, int64_t min) {
  const double v = getNumber(o, path, key, double(fallback));
  if (v != std::floor(v) || v < double(min) || v > 9007199254740991.0)
    fail(o.Env(), path + "." + key, "must be an integer >= " + std::to_string(min));
  return int64_t(v);
}

bool getBool(const Napi::Object& o, const std::string& path, const char* key, bool fallback) {
  const Napi::Value v = field(o, key);
  if (!present(v)) return fallback;
  if (!v.IsBoolean()) fail(o.Env(), path + "." + key, "must be a boolean");
  return v.As<Napi::Boolean>().Value();
}

Napi::Object getObject(const Napi::Object& o, const std::string& path, const char* key) {
  const Napi::Value v = field(o, key);
  if (!v.IsObject()) fail(o.Env(), path + "." + key, "must be an object");
  return v.As<Napi::Object>();
}

Napi::Array shapeArray(Napi::Env env, const std::vector<int64_t>& shape) {
  Napi::Array a = Napi::Array::New(env, shape.size());
  for (size_t i = 0; i < shape.size(); ++i) a.Set(uint32_t(i), Napi::Number::New(env, double(shape[i])));
  return a;
}

}  // namespace

o3::DataSpec toDataSpec(const Napi::Value& value, const std::string& path) {
  if (!value.IsObject()) fail(value.Env(), path, "must be an object");
  const Napi::Object o = value.As<Napi::Object>();
  o3::DataSpec spec;
  const std::string kind = getString(o, path, "kind");
  spec.root = getString(o, path, "root");
  if (kind == "mnist") {
    spec.kind = o3::DataSpec::Kind::Mnist;
    spec.split = getString(o, path, "split", "train");
  } else if (kind == "imagefolder" || kind == "webdataset") {
    spec.kind = kind == "imagefolder" ? o3::DataSpec::Kind::ImageFolder : o3::DataSpec::Kind::WebDataset;
    spec.imageSize = int(getInteger(o, path, "imageSize", spec.imageSize, 1));
    spec.channels = int(getInteger(o, path, "channels", spec.channels, 1));
    if (kind == "webdataset") spec.shards = getString(o, path, "shards", "");
  } else {
    fail(o.Env(), path + ".kind", "must be 'mnist', 'imagefolder' or 'webdataset'");
  }
  return spec;
}

o3::TrainerOptions toTrainerOptions(const Napi::Object& o) {
  const std::string path = "options";
  o3::TrainerOptions opts;
  opts.model.name = getString(o, path, "model");
  const Napi::Value config = field(o, "modelConfig");
  if (present(config)) {
    if (!config.IsObject()) fail(o.Env(), path + ".modelConfig", "must be an object");
    const Napi::Object c = config.As<Napi::Object>();
    const Napi::Array keys = c.GetPropertyNames();
    for (uint32_t i = 0; i < keys.Length(); ++i) {
      const std::string key = keys.Get(i).As<Napi::String>().Utf8Value();
      opts.model.config[key] = getNumber(c, path + ".modelConfig", key.c_str(), 0);
    }
  }
  opts.device = getString(o, path, "device", "auto");
  opts.seed = uint64_t(getInteger(o, path, "seed", 0, 0));
  opts.threads = int(getInteger(o, path, "threads", 0, 0));
  const Napi::Object optimizer = getObject(o, path, "optimizer");
  opts.optimizer.type = getString(optimizer, path + ".optimizer", "type");
  opts.optimizer.lr = getNumber(optimizer, path + ".optimizer", "lr", opts.optimizer.lr);
  opts.optimizer.momentum = getNumber(optimizer, path + ".optimizer", "momentum", 0);
  opts.optimizer.weightDecay = getNumber(optimizer, path + ".optimizer", "weightDecay", 0);
  opts.data = toDataSpec(field(o, "data"), path + ".data");
  opts.batchSize = getInteger(o, path, "batchSize", 0, 1);
  opts.shuffle = getBool(o, path, "shuffle", true);
  opts.shuffleWindow = getInteger(o, path, "shuffleWindow", opts.shuffleWindow, 1);
  opts.rank = getInteger(o, path, "rank", 0, 0);
  opts.worldSize = getInteger(o, path, "worldSize", 1, 1);
  const Napi::Value dist = field(o, "distributed");
  if (present(dist)) {
    if (!dist.IsObject()) fail(o.Env(), path + ".distributed", "must be an object");
    const Napi::Object d = dist.As<Napi::Object>();
    const std::string dp = path + ".distributed";
    opts.dist.enabled = true;
    opts.dist.rank = getInteger(d, dp, "rank", 0, 0);
    opts.dist.worldSize = getInteger(d, dp, "worldSize", 0, 1);
    opts.dist.localRank = getInteger(d, dp, "localRank", 0, 0);
    opts.dist.masterAddr = getString(d, dp, "masterAddr");
    opts.dist.masterPort = int(getInteger(d, dp, "masterPort", 0, 1));
    opts.dist.restartCount = getInteger(d, dp, "restartCount", 0, 0);
    opts.dist.useAgentStore = getBool(d, dp, "useAgentStore", false);
    opts.dist.socketIfname = getString(d, dp, "socketIfname", "");
    opts.dist.timeoutSeconds = getNumber(d, dp, "timeoutSeconds", opts.dist.timeoutSeconds);
  }
  const std::string lastBatch = getString(o, path, "lastBatch", opts.dist.enabled && opts.dist.worldSize > 1 ? "drop" : "short");
  try {
    opts.lastBatch = o3::lastBatchFromName(lastBatch);
  } catch (const o3::Error& e) {
    fail(o.Env(), path + ".lastBatch", e.what());
  }
  opts.progressEvery = int(getInteger(o, path, "progressEvery", opts.progressEvery, 1));
  opts.prefetch = int(getInteger(o, path, "prefetch", opts.prefetch, 1));
  opts.workers = int(getInteger(o, path, "workers", opts.workers, 1));
  return opts;
}

std::vector<o3::StateTensor> toStateTensors(const Napi::Array& array) {
  const Napi::Env env = array.Env();
  std::vector<o3::StateTensor> out;
  for (uint32_t i = 0; i < array.Length(); ++i) {
    const std::string path = "state[" + std::to_string(i) + "]";
    const Napi::Value item = array.Get(i);
    if (!item.IsObject()) fail(env, path, "must be an object");
    const Napi::Object o = item.As<Napi::Object>();
    o3::StateTensor s;
    s.name = getString(o, path, "name");
    try {
      s.dtype = o3::dtypeFromName(getString(o, path, "dtype"));
    } catch (const o3::Error& e) {
      fail(env, path + ".dtype", e.what());
    }
    const Napi::Value shape = field(o, "shape");
    if (!shape.IsArray()) fail(env, path + ".shape", "must be an array");
    const Napi::Array dims = shape.As<Napi::Array>();
    for (uint32_t d = 0; d < dims.Length(); ++d) {
      const Napi::Value dim = dims.Get(d);
      if (!dim.IsNumber()) fail(env, path + ".shape", "must hold numbers");
      s.shape.push_back(dim.As<Napi::Number>().Int64Value());
    }
    const Napi::Value data = field(o, "data");
    if (!data.IsTypedArray()) fail(env, path + ".data", "must be a Buffer or typed array");
    const Napi::TypedArray bytes = data.As<Napi::TypedArray>();
    s.data = static_cast<const uint8_t*>(bytes.ArrayBuffer().Data()) + bytes.ByteOffset();
    s.bytes = bytes.ByteLength();
    out.push_back(std::move(s));
  }
  return out;
}

Napi::Object fromPosition(Napi::Env env, const o3::Position& p) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("epoch", double(p.epoch));
  o.Set("index", double(p.index));
  return o;
}

Napi::Object fromProgress(Napi::Env env, const o3::Progress& p) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("step", double(p.step));
  o.Set("samples", double(p.samples));
  o.Set("loss", p.loss);
  o.Set("epoch", double(p.position.epoch));
  o.Set("index", double(p.position.index));
  o.Set("total", double(p.total));
  return o;
}

Napi::Object fromTrainResult(Napi::Env env, const o3::TrainResult& r) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("loss", r.loss);
  o.Set("steps", double(r.steps));
  o.Set("samples", double(r.samples));
  o.Set("seconds", r.seconds);
  o.Set("epochEnded", r.epochEnded);
  o.Set("epoch", double(r.epoch));
  o.Set("commSeconds", r.commSeconds);
  o.Set("stopped", r.stopped);
  return o;
}

Napi::Object fromEvalResult(Napi::Env env, const o3::EvalResult& r) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("loss", r.loss);
  o.Set("accuracy", r.accuracy);
  o.Set("samples", double(r.samples));
  return o;
}

Napi::Array fromStateTensors(Napi::Env env, std::vector<o3::StateTensor> state) {
  using Owner = std::shared_ptr<const void>;
  Napi::Array out = Napi::Array::New(env, state.size());
  for (size_t i = 0; i < state.size(); ++i) {
    o3::StateTensor& s = state[i];
    Napi::Object o = Napi::Object::New(env);
    o.Set("name", s.name);
    o.Set("dtype", o3::dtypeName(s.dtype));
    o.Set("shape", shapeArray(env, s.shape));
    if (s.bytes == 0) {
      o.Set("data", Napi::Buffer<uint8_t>::New(env, 0));
    } else {
      // The buffer's memory is outside the JS heap; tell V8 so that GC pressure reflects it.
      Napi::MemoryManagement::AdjustExternalMemory(env, int64_t(s.bytes));
      const size_t bytes = s.bytes;
      o.Set("data", Napi::Buffer<uint8_t>::NewOrCopy(
                        env, static_cast<uint8_t*>(const_cast<void*>(s.data)), s.bytes,
                        [bytes](Napi::Env e, uint8_t*, Owner* owner) {
                          delete owner;
                          Napi::MemoryManagement::AdjustExternalMemory(e, -int64_t(bytes));
                        },
                        new Owner(std::move(s.owner))));
    }
    out.Set(uint32_t(i), o);
  }
  return out;
}

Napi::Object fromListing(Napi::Env env, const o3::ImageFolderListing& listing) {
  Napi::Object o = Napi::Object::New(env);
  Napi::Array classes = Napi::Array::New(env, listing.classes.size());
  for (size_t i = 0; i < listing.classes.size(); ++i) classes.Set(uint32_t(i), listing.classes[i]);
  Napi::Array samples = Napi::Array::New(env, listing.samples.size());
  for (size_t i = 0; i < listing.samples.size(); ++i) {
    Napi::Object s = Napi::Object::New(env);
    s.Set("path", listing.samples[i].path);
    s.Set("label", double(listing.samples[i].label));
    samples.Set(uint32_t(i), s);
  }
  o.Set("classes", classes);
  o.Set("samples", samples);
  return o;
}

Napi::Object describeTrainer(Napi::Env env, const o3::Trainer& trainer) {
  Napi::Object device = Napi::Object::New(env);
  device.Set("type", trainer.device().type);
  device.Set("name", trainer.device().name);
  Napi::Object config = Napi::Object::New(env);
  for (const auto& [key, value] : trainer.model().config) config.Set(key, value);
  Napi::Object model = Napi::Object::New(env);
  model.Set("name", trainer.model().name);
  model.Set("config", config);
  const o3::DatasetInfo d = trainer.dataset();
  Napi::Object dataset = Napi::Object::New(env);
  dataset.Set("size", double(d.size));
  dataset.Set("epochSize", double(d.epochSize));
  dataset.Set("stepsPerEpoch", double(d.stepsPerEpoch));
  dataset.Set("globalBatch", double(d.globalBatch));
  dataset.Set("classes", double(d.classes));
  dataset.Set("shape", shapeArray(env, {d.shape.channels, d.shape.height, d.shape.width}));
  Napi::Array classNames = Napi::Array::New(env, d.classNames.size());
  for (size_t i = 0; i < d.classNames.size(); ++i) classNames.Set(uint32_t(i), d.classNames[i]);
  dataset.Set("classNames", classNames);
  Napi::Object normalize = Napi::Object::New(env);
  normalize.Set("mul", o3::kInputMul);
  normalize.Set("sub", o3::kInputSub);
  dataset.Set("normalize", normalize);
  Napi::Object o = Napi::Object::New(env);
  o.Set("device", device);
  o.Set("model", model);
  o.Set("dataset", dataset);
  const o3::WorldInfo w = trainer.world();
  Napi::Object world = Napi::Object::New(env);
  world.Set("rank", double(w.rank));
  world.Set("worldSize", double(w.worldSize));
  world.Set("localRank", double(w.localRank));
  world.Set("collectives", w.collectives);
  o.Set("world", world);
  const o3::MallocTuning& t = o3::tuneMallocForTraining();
  Napi::Object malloc = Napi::Object::New(env);
  malloc.Set("setBy", t.setBy);
  if (t.setBy == "o3") {
    malloc.Set("mmapThreshold", double(t.mmapThreshold));
    malloc.Set("trimThreshold", double(t.trimThreshold));
  }
  o.Set("malloc", malloc);
  return o;
}

}  // namespace o3addon
