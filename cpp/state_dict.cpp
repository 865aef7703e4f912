// Trainer::stateDict / loadStateDict: the trainer's whole state as named byte buffers.
#include <ATen/Context.h>
#include <torch/cuda.h>
#include <torch/optim/adam.h>
#include <torch/optim/sgd.h>
#include <torch/utils.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <set>
#include <sstream>
#include <type_traits>

#include "trainer_impl.h"

namespace o3 {
namespace {

DType toDType(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat: return DType::F32;
    case torch::kDouble: return DType::F64;
    case torch::kHalf: return DType::F16;
    case torch::kBFloat16: return DType::BF16;
    case torch::kLong: return DType::I64;
    case torch::kInt: return DType::I32;
    case torch::kShort: return DType::I16;
    case torch::kChar: return DType::I8;
    case torch::kByte: return DType::U8;
    case torch::kBool: return DType::Bool;
    default: throw Error(std::string("no safetensors dtype for torch ") + c10::toString(t));
  }
}

torch::ScalarType toScalarType(DType t) {
  static const torch::ScalarType kTypes[] = {torch::kFloat, torch::kDouble, torch::kHalf, torch::kBFloat16, torch::kLong,
                                             torch::kInt,   torch::kShort,  torch::kChar, torch::kByte,     torch::kBool};
  return kTypes[size_t(t)];
}

// The optimizer keys its state by the parameter's TensorImpl: libtorch 1.x by the address printed
// as a string, 2.x by the address itself. Deduce which from the map so both compile.
template <class Map>
typename Map::key_type optimizerKey(const Map&, const torch::Tensor& param) {
  using Key = typename Map::key_type;
  if constexpr (std::is_same_v<Key, std::string>) {
    std::ostringstream s;
    s << static_cast<const void*>(param.unsafeGetTensorImpl());
    return s.str();
  } else {
    return static_cast<Key>(param.unsafeGetTensorImpl());
  }
}

StateTensor exportTensor(std::string name, const torch::Tensor& t) {
  // A private contiguous CPU copy: the caller gets a snapshot that later training leaves alone.
  const torch::Tensor copy =
      t.is_cpu() ? t.detach().clone(at::MemoryFormat::Contiguous) : t.detach().to(torch::kCPU).contiguous();
  auto owner = std::make_shared<torch::Tensor>(copy);
  StateTensor s;
  s.name = std::move(name);
  s.dtype = toDType(copy.scalar_type());
  s.shape = copy.sizes().vec();
  s.data = owner->data_ptr();
  s.bytes = size_t(copy.numel()) * copy.element_size();
  s.owner = std::move(owner);
  return s;
}

std::string describe(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// Buffers handed in need not be aligned for their element type.
int64_t readI64(const StateTensor& s, size_t i) {
  int64_t v;
  std::memcpy(&v, static_cast<const uint8_t*>(s.data) + i * sizeof v, sizeof v);
  return v;
}

// A CPU tensor over the caller's bytes (not copied); use it only to copy from.
torch::Tensor viewOf(const StateTensor& s) {
  return torch::from_blob(const_cast<void*>(s.data), s.shape, torch::TensorOptions().dtype(toScalarType(s.dtype)));
}

// The named entries of a state dict being loaded, checked one by one and then checked to have
// all been used.
class Entries {
 public:
  explicit Entries(const std::vector<StateTensor>& state) {
    for (const auto& s : state) {
      size_t elements = 1;
      for (int64_t d : s.shape) {
        if (d < 0) throw Error("state '" + s.name + "': negative dimension");
        elements *= size_t(d);
      }
      if (elements * dtypeSize(s.dtype) != s.bytes)
        throw Error("state '" + s.name + "': " + std::to_string(s.bytes) + " bytes do not hold " + dtypeName(s.dtype) + " " +
                    describe(s.shape));
      if (!byName_.emplace(s.name, &s).second) throw Error("state '" + s.name + "' appears twice");
    }
  }
  // The entry, checked against the dtype and shape it must have; null when absent and optional.
  const StateTensor* take(const std::string& name, DType dtype, const std::vector<int64_t>& shape, bool required) {
    auto it = byName_.find(name);
    if (it == byName_.end()) {
      if (required) throw Error("state dict has no '" + name + "'");
      return nullptr;
    }
    const StateTensor& s = *it->second;
    if (s.dtype != dtype || s.shape != shape)
      throw Error("state '" + name + "' is " + dtypeName(s.dtype) + " " + describe(s.shape) + ", expected " + dtypeName(dtype) +
                  " " + describe(shape));
    used_.insert(name);
    return &s;
  }
  void ignore(const std::string& name) { used_.insert(name); }
  void ignorePrefix(const std::string& prefix) {
    for (const auto& [name, _] : byName_)
      if (name.rfind(prefix, 0) == 0) used_.insert(name);
  }
  void checkAllUsed() const {
    std::vector<std::string> unknown;
    for (const auto& [name, _] : byName_)
      if (!used_.count(name)) unknown.push_back(name);
    if (unknown.empty()) return;
    std::string listed;
    for (size_t i = 0; i < std::min<size_t>(unknown.size(), 5); ++i) listed += (i ? ", " : "") + unknown[i];
    throw Error("state dict has " + std::to_string(unknown.size()) + " entries this trainer does not have: " + listed +
                (unknown.size() > 5 ? ", ..." : ""));
  }

 private:
  std::map<std::string, const StateTensor*> byName_;
  std::set<std::string> used_;
};

using NamedParams = std::vector<std::pair<std::string, torch::Tensor>>;

NamedParams namedParameters(torch::nn::Module& net) {
  NamedParams out;
  for (const auto& p : net.named_parameters()) out.emplace_back(p.key(), p.value());
  return out;
}

std::vector<StateTensor> exportOptimizer(torch::optim::Optimizer& opt, const NamedParams& params) {
  std::vector<StateTensor> out;
  auto& state = opt.state();
  for (const auto& [name, param] : params) {
    auto it = state.find(optimizerKey(state, param));
    if (it == state.end()) continue;  // no step taken yet, or no state (sgd without momentum)
    const std::string prefix = "optim." + name + ".";
    if (auto* sgd = dynamic_cast<torch::optim::SGDParamState*>(it->second.get())) {
      if (sgd->momentum_buffer().defined()) out.push_back(exportTensor(prefix + "momentum_buffer", sgd->momentum_buffer()));
    } else if (auto* adam = dynamic_cast<torch::optim::AdamParamState*>(it->second.get())) {
      out.push_back(exportTensor(prefix + "step", torch::tensor(int64_t(adam->step()), torch::kLong).reshape({})));
      out.push_back(exportTensor(prefix + "exp_avg", adam->exp_avg()));
      out.push_back(exportTensor(prefix + "exp_avg_sq", adam->exp_avg_sq()));
    }
  }
  return out;
}

// Builds the optimizer state the entries describe; applied only once everything has been checked.
using OptimizerState = std::vector<std::pair<torch::Tensor, std::unique_ptr<torch::optim::OptimizerParamState>>>;

OptimizerState readOptimizer(const OptimizerSpec& spec, const NamedParams& params, Entries& entries, torch::Device device) {
  OptimizerState out;
  auto copyTo = [&](const StateTensor& s) { return viewOf(s).to(device, /*non_blocking=*/false, /*copy=*/true); };
  for (const auto& [name, param] : params) {
    const std::string prefix = "optim." + name + ".";
    const std::vector<int64_t> shape = param.sizes().vec();
    if (spec.type == "sgd") {
      if (const StateTensor* buf = entries.take(prefix + "momentum_buffer", DType::F32, shape, false)) {
        auto st = std::make_unique<torch::optim::SGDParamState>();
        st->momentum_buffer(copyTo(*buf));
        out.emplace_back(param, std::move(st));
      }
    } else if (const StateTensor* step = entries.take(prefix + "step", DType::I64, {}, false)) {
      auto st = std::make_unique<torch::optim::AdamParamState>();
      st->step(readI64(*step, 0));
      st->exp_avg(copyTo(*entries.take(prefix + "exp_avg", DType::F32, shape, true)));
      st->exp_avg_sq(copyTo(*entries.take(prefix + "exp_avg_sq", DType::F32, shape, true)));
      out.emplace_back(param, std::move(st));
    }
  }
  return out;
}

torch::Tensor generatorState(const at::Generator& gen) {
  std::lock_guard<std::mutex> lock(const_cast<at::Generator&>(gen).mutex());
  return gen.get_state();
}

void setGeneratorState(at::Generator gen, const StateTensor& s) {
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(viewOf(s).clone());
}

// A generator's state entries: "rng.<kind>" for one process; with collectives every rank's,
// gathered, as "rng.<kind>.rank<r>".
void exportGenerator(std::vector<StateTensor>& out, Collectives* comm, torch::Device device, const std::string& kind,
                     const at::Generator& gen) {
  const torch::Tensor state = generatorState(gen);
  if (!comm) {
    out.push_back(exportTensor("rng." + kind, state));
    return;
  }
  // NCCL gathers device tensors only.
  const std::vector<torch::Tensor> all = comm->allGather(state.to(device));
  for (size_t r = 0; r < all.size(); ++r) out.push_back(exportTensor("rng." + kind + ".rank" + std::to_string(r), all[r]));
}

// This rank's generator state from a dict written by any world size: its own entry, else a
// one-process dict's (for rank 0 of a job, or a process without collectives); null when neither.
const StateTensor* takeGenerator(Entries& entries, const std::string& kind, int64_t rank, bool job,
                                 const std::vector<int64_t>& shape) {
  const StateTensor* own = entries.take("rng." + kind + ".rank" + std::to_string(rank), DType::U8, shape, false);
  if (!own && (rank == 0 || !job)) own = entries.take("rng." + kind, DType::U8, shape, false);
  entries.ignorePrefix("rng." + kind);
  return own;
}

}  // namespace

std::vector<StateTensor> Trainer::stateDict() {
  return translateTorchErrors([&] {
    Impl& m = *impl_;
    torch::NoGradGuard noGrad;
    std::vector<StateTensor> out;
    for (const auto& p : m.model.net->named_parameters()) out.push_back(exportTensor("model." + p.key(), p.value()));
    for (const auto& b : m.model.net->named_buffers()) out.push_back(exportTensor("model." + b.key(), b.value()));
    for (auto& s : exportOptimizer(*m.optimizer, namedParameters(*m.model.net))) out.push_back(std::move(s));
    exportGenerator(out, m.comm.get(), m.device, "cpu", m.cpuGenerator);
    if (m.device.is_cuda()) exportGenerator(out, m.comm.get(), m.device, "cuda", at::globalContext().defaultGenerator(m.device));
    const Position pos = m.loader->position();
    const int64_t index = toGlobalIndex(pos.index, m.loader->sampler());
    out.push_back(exportTensor("loader.position", torch::tensor({int64_t(m.loader->seed()), pos.epoch, index}, torch::kLong)));
    return out;
  });
}

void Trainer::loadStateDict(const std::vector<StateTensor>& state) {
  translateTorchErrors([&] {
    Impl& m = *impl_;
    Entries entries(state);
    torch::nn::Module& net = *m.model.net;

    std::vector<std::pair<torch::Tensor, const StateTensor*>> tensors;
    auto takeModel = [&](const std::string& name, const torch::Tensor& t) {
      tensors.emplace_back(t, entries.take("model." + name, toDType(t.scalar_type()), t.sizes().vec(), true));
    };
    for (const auto& p : net.named_parameters()) takeModel(p.key(), p.value());
    for (const auto& b : net.named_buffers()) takeModel(b.key(), b.value());
    const NamedParams params = namedParameters(net);
    OptimizerState optimizerState = readOptimizer(m.opts.optimizer, params, entries, m.device);
    const int64_t rank = m.loader->sampler().rank;
    const StateTensor* cpuRng = takeGenerator(entries, "cpu", rank, bool(m.comm), generatorState(m.cpuGenerator).sizes().vec());
    // A checkpoint moves between devices: CUDA generator state applies only when training on CUDA.
    const at::Generator cudaGenerator = m.device.is_cuda() ? at::globalContext().defaultGenerator(m.device) : at::Generator();
    const StateTensor* cudaRng =
        m.device.is_cuda() ? takeGenerator(entries, "cuda", rank, bool(m.comm), generatorState(cudaGenerator).sizes().vec())
                           : nullptr;
    entries.ignorePrefix("rng.cuda");
    const StateTensor* loaderState = entries.take("loader.position", DType::I64, {3}, true);
    const int64_t globalIndex = readI64(*loaderState, 2);
    const Position position{readI64(*loaderState, 1), toRankIndex(globalIndex, m.loader->sampler())};
    if (position.epoch < 0 || position.index < 0 || position.index > m.loader->epochSize())
      throw Error("state 'loader.position' (epoch " + std::to_string(position.epoch) + ", index " + std::to_string(globalIndex) +
                  ") is outside an epoch of " + std::to_string(m.loader->epochSize()) + " samples for this rank");
    entries.checkAllUsed();

    torch::NoGradGuard noGrad;
    for (auto& [t, s] : tensors) t.copy_(viewOf(*s));
    auto& opt = m.optimizer->state();
    opt.clear();
    for (auto& [param, st] : optimizerState) opt[optimizerKey(opt, param)] = std::move(st);
    if (cpuRng) {
      setGeneratorState(m.cpuGenerator, *cpuRng);
    } else {
      // Saved by a smaller world: a stream of this rank's own, the same on every rerun.
      std::lock_guard<std::mutex> lock(m.cpuGenerator.mutex());
      m.cpuGenerator.set_current_seed(rankSeed(m.opts.seed, rank, uint64_t(position.epoch) << 40 ^ uint64_t(globalIndex)));
    }
    if (cudaRng) setGeneratorState(cudaGenerator, *cudaRng);
    m.loader->seek(position, uint64_t(readI64(*loaderState, 0)));
    m.syncPosition();
  });
}

}  // namespace o3
