#include "trainer.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <torch/cuda.h>
#include <torch/nn/functional/loss.h>
#include <torch/optim/adam.h>
#include <torch/optim/sgd.h>
#include <torch/utils.h>

#ifdef O3_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#endif

#include <chrono>
#include <fstream>
#include <random>

#include "malloc_tuning.h"
#include "trainer_impl.h"

namespace o3 {
namespace {

namespace F = torch::nn::functional;

std::string cpuModelName() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("model name", 0) == 0 && line.find(':') != std::string::npos) return line.substr(line.find(':') + 2);
  return "cpu";
}

std::string gpuName(torch::Device device) {
#ifdef O3_WITH_CUDA
  return at::cuda::getDeviceProperties(device.index())->name;
#else
  return "cuda:" + std::to_string(device.index());
#endif
}

torch::Device chooseDevice(const std::string& requested, int64_t localRank) {
  if (requested == "cpu") return torch::kCPU;
  if (requested != "auto" && requested != "cuda") throw Error("device must be 'auto', 'cpu' or 'cuda', not '" + requested + "'");
  if (torch::cuda::is_available()) {
    if (localRank >= int64_t(torch::cuda::device_count()))
      throw Error("LOCAL_RANK " + std::to_string(localRank) + " has no GPU: " + std::to_string(torch::cuda::device_count()) +
                  " visible");
    return torch::Device(torch::kCUDA, c10::DeviceIndex(localRank));
  }
  if (requested == "cuda") throw Error("device 'cuda' requested, but this libtorch has no CUDA support or no GPU is visible");
  return torch::kCPU;
}

// Parameter initialisation draws from torch's process-wide default generator; holding this while
// seeding it and building makes a model depend on its seed only, even with trainers created
// concurrently.
std::mutex& modelInitMutex() {
  static std::mutex m;
  return m;
}

std::unique_ptr<torch::optim::Optimizer> makeOptimizer(const OptimizerSpec& s, const std::vector<torch::Tensor>& params) {
  if (!(s.lr > 0)) throw Error("optimizer lr must be > 0");
  if (!(s.weightDecay >= 0)) throw Error("optimizer weightDecay must be >= 0");
  if (!(s.momentum >= 0)) throw Error("optimizer momentum must be >= 0");
  if (s.type == "sgd")
    return std::make_unique<torch::optim::SGD>(params,
                                               torch::optim::SGDOptions(s.lr).momentum(s.momentum).weight_decay(s.weightDecay));
  if (s.type == "adam") {
    if (s.momentum != 0) throw Error("momentum applies to sgd only (adam uses its betas)");
    return std::make_unique<torch::optim::Adam>(params, torch::optim::AdamOptions(s.lr).weight_decay(s.weightDecay));
  }
  throw Error("optimizer type must be 'sgd' or 'adam', not '" + s.type + "'");
}

struct BatchTensors {
  torch::Tensor images, labels;
};

// Where both name their classes (ImageFolder trees), label i must mean the same class in the
// evaluation data as in the training data: a test tree lacking one class directory would
// otherwise shift every label after it and score the model against the wrong answers. (That the
// evaluation data has no more classes than the model is checked before.)
void checkClassNames(const std::vector<std::string>& evaluated, const std::vector<std::string>& trained) {
  for (size_t i = 0; i < evaluated.size() && i < trained.size(); ++i)
    if (evaluated[i] != trained[i])
      throw Error("evaluation class " + std::to_string(i) + " is '" + evaluated[i] + "' but the model's class " +
                  std::to_string(i) + " is '" + trained[i] + "': the evaluation tree needs the " +
                  std::to_string(trained.size()) + " class directories the model was trained on");
}

// Views the batch's host buffer as tensors on `device`, images scaled to [-1, 1]. The buffer is
// the allocator's tensor, so a CUDA copy from pinned memory is asynchronous and the caching host
// allocator knows not to reuse the buffer before the copy is done.
BatchTensors toDevice(const Batch& batch, const SampleShape& shape, torch::Device device) {
  const torch::Tensor bytes = *std::static_pointer_cast<torch::Tensor>(batch.storage.owner);
  const int64_t labelBytes = batch.count * int64_t(sizeof(int64_t));
  torch::Tensor labels = bytes.slice(0, 0, labelBytes).view(torch::kInt64);
  torch::Tensor images = bytes.slice(0, labelBytes).view({batch.count, shape.channels, shape.height, shape.width});
  const bool async = device.is_cuda();
  return {images.to(device, async).to(torch::kFloat).mul_(kInputMul).sub_(kInputSub), labels.to(device, async)};
}

TrainResult runTraining(Trainer::Impl& m, int64_t maxSteps, bool toEpochEnd, const ProgressFn& onProgress) {
  const auto started = std::chrono::steady_clock::now();
  const SampleShape shape = m.loader->dataset().shape();
  auto& net = *m.model.net;
  net.train();
  const std::vector<torch::Tensor> params = net.parameters();
  // Summed on the device: reading each step's loss would make a CUDA step wait for the GPU.
  torch::Tensor lossSum = torch::zeros({}, torch::TensorOptions().dtype(torch::kDouble).device(m.device));
  // Whether any rank wants to stop, summed with the gradients and read with the loss: every rank
  // reads it after the same steps, so all stop after the same one.
  torch::Tensor stopFlags = torch::zeros({1}, torch::TensorOptions().dtype(torch::kFloat).device(m.device));
  const int64_t every = std::max(1, m.opts.progressEvery);
  TrainResult r{0, 0, 0, 0, false, m.loader->position().epoch, 0, false};
  while ((maxSteps < 0 || r.steps < maxSteps) && !r.stopped) {
    if (!m.comm && (m.cancelled || m.stopRequested)) {
      r.stopped = true;
      break;
    }
    const Batch batch = m.loader->next();
    const BatchTensors t = toDevice(batch, shape, m.device);
    m.optimizer->zero_grad();
    const torch::Tensor loss = F::cross_entropy(net.forward(t.images), t.labels);
    loss.backward();
    if (m.comm) {
      stopFlags.fill_(m.cancelled || m.stopRequested ? 1.0 : 0.0);
      r.commSeconds += averageGradients(*m.comm, params, stopFlags);
    }
    m.optimizer->step();
    lossSum.add_(loss.detach(), double(batch.count));
    r.steps += 1;
    r.samples += batch.count;
    m.syncPosition();
    r.epochEnded = batch.next.epoch != batch.start.epoch;
    r.epoch = batch.start.epoch;
    const bool lastOfCall = (toEpochEnd && r.epochEnded) || r.steps == maxSteps;
    if (r.steps % every == 0 || lastOfCall) {
      if (m.comm) r.stopped = stopFlags.item<float>() > 0;
      if (onProgress) onProgress({r.steps, r.samples, loss.item<double>(), batch.next, m.loader->epochSize()});
    }
    if (toEpochEnd && r.epochEnded) break;
  }
  if (r.stopped || !m.comm) m.stopRequested = false;
  r.loss = r.samples ? lossSum.item<double>() / double(r.samples) : 0;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  return r;
}

// Puts the model in eval mode for its lifetime, then back in training mode.
class EvalMode {
 public:
  explicit EvalMode(torch::nn::Module& net) : net_(net) { net_.eval(); }
  ~EvalMode() { net_.train(); }

 private:
  torch::nn::Module& net_;
};

}  // namespace

// Seeds a rank's own generator (dropout): rank 0 keeps the run's seed, so that one process trains
// as it always did; other ranks draw other masks.
uint64_t rankSeed(uint64_t seed, int64_t rank, uint64_t salt) {
  if (rank == 0 && salt == 0) return seed;
  std::seed_seq seq{uint32_t(seed), uint32_t(seed >> 32), uint32_t(rank), uint32_t(salt), uint32_t(salt >> 32)};
  uint64_t out[1];
  seq.generate(reinterpret_cast<uint32_t*>(out), reinterpret_cast<uint32_t*>(out + 1));
  return out[0];
}

HostAllocator Trainer::Impl::allocator() const {
  const bool pinned = device.is_cuda();
  return [pinned](size_t bytes) {
    auto t = std::make_shared<torch::Tensor>(
        torch::empty({int64_t(bytes)}, torch::TensorOptions().dtype(torch::kUInt8).pinned_memory(pinned)));
    return HostBuffer{t->data_ptr<uint8_t>(), t};
  };
}

Trainer::Trainer(const TrainerOptions& opts) : impl_(std::make_unique<Impl>()) {
  translateTorchErrors([&] {
    Impl& m = *impl_;
    m.opts = opts;
    tuneMallocForTraining();
    if (opts.threads > 0) at::set_num_threads(opts.threads);
    const bool dist = opts.dist.enabled;
    if (dist && opts.dist.worldSize > 1 && opts.lastBatch == LastBatch::Short)
      throw Error("lastBatch 'short' would give the ranks different numbers of steps: use 'drop' or 'pad'");
    m.device = chooseDevice(opts.device, dist ? opts.dist.localRank : 0);
    m.deviceInfo = m.device.is_cuda() ? DeviceInfo{"cuda", gpuName(m.device)} : DeviceInfo{"cpu", cpuModelName()};
    if (m.device.is_cuda()) at::globalContext().setBenchmarkCuDNN(true);

    if (dist) m.comm = Collectives::connect(opts.dist, m.device);
    const int64_t rank = dist ? opts.dist.rank : opts.rank, worldSize = dist ? opts.dist.worldSize : opts.worldSize;

    auto dataset = openDataset(opts.data);
    m.cpuGenerator = at::detail::createCPUGenerator(rankSeed(opts.seed, rank));
    const at::Generator dropoutGenerator = m.device.is_cuda() ? at::globalContext().defaultGenerator(m.device) : m.cpuGenerator;
    {
      std::lock_guard<std::mutex> lock(modelInitMutex());
      torch::manual_seed(opts.seed);
      m.model = makeModel(opts.model, dataset->shape(), dataset->numClasses(), dropoutGenerator);
    }
    m.model.net->to(m.device);
    if (m.comm) {
      // Identical already when every rank has the same seed; this makes it so whatever they have.
      std::vector<torch::Tensor> state = m.model.net->parameters();
      for (const auto& b : m.model.net->buffers()) state.push_back(b);
      broadcastTensors(*m.comm, state);
    }
    m.optimizer = makeOptimizer(opts.optimizer, m.model.net->parameters());

    LoaderOptions lo;
    lo.batchSize = opts.batchSize;
    lo.sampler = {opts.seed, opts.shuffle, rank, worldSize, opts.shuffleWindow, opts.batchSize, opts.lastBatch};
    lo.prefetch = opts.prefetch;
    lo.workers = opts.workers;
    m.loader = std::make_unique<BatchLoader>(std::move(dataset), lo, m.allocator());
    m.syncPosition();
  });
}

Trainer::~Trainer() = default;

const DeviceInfo& Trainer::device() const { return impl_->deviceInfo; }
const ModelSpec& Trainer::model() const { return impl_->model.resolved; }

std::vector<std::string> Trainer::filesAhead() { return impl_->loader->filesAhead(impl_->loader->position()); }

DatasetInfo Trainer::dataset() const {
  const Dataset& d = impl_->loader->dataset();
  const SamplerOptions& s = impl_->loader->sampler();
  const int64_t epochSize = impl_->loader->epochSize();
  return {d.size(),  epochSize,     (epochSize + s.batchSize - 1) / s.batchSize, s.batchSize * s.worldSize, d.numClasses(),
          d.shape(), d.classNames()};
}

WorldInfo Trainer::world() const {
  const SamplerOptions& s = impl_->loader->sampler();
  return {s.rank, s.worldSize, impl_->opts.dist.enabled ? impl_->opts.dist.localRank : 0, bool(impl_->comm)};
}

Position Trainer::position() const {
  std::lock_guard<std::mutex> lock(impl_->positionMutex);
  return impl_->position;
}

void Trainer::cancel() { impl_->cancelled = true; }
void Trainer::stopAfterStep() { impl_->stopRequested = true; }

TrainResult Trainer::train(int64_t maxSteps, bool toEpochEnd, const ProgressFn& onProgress) {
  if (maxSteps < 0 && !toEpochEnd) throw Error("training without a step limit must stop at the epoch end");
  return translateTorchErrors([&] { return runTraining(*impl_, maxSteps, toEpochEnd, onProgress); });
}

EvalResult Trainer::evaluate(const DataSpec& data, int64_t batchSize) {
  return translateTorchErrors([&] {
    Impl& m = *impl_;
    LoaderOptions lo;
    lo.batchSize = batchSize;
    lo.sampler.shuffle = false;
    lo.sampler.batchSize = batchSize;
    if (m.comm) {
      lo.sampler.rank = m.comm->rank();
      lo.sampler.worldSize = m.comm->worldSize();
    }
    lo.prefetch = m.opts.prefetch;
    lo.workers = m.opts.workers;
    auto dataset = openDataset(data);
    const int64_t share = shardSize(dataset->size(), lo.sampler);
    const SampleShape want = m.loader->dataset().shape(), got = dataset->shape();
    if (want.channels != got.channels || want.height != got.height || want.width != got.width)
      throw Error("evaluation images are " + std::to_string(got.channels) + "x" + std::to_string(got.height) + "x" +
                  std::to_string(got.width) + " but the model takes " + std::to_string(want.channels) + "x" +
                  std::to_string(want.height) + "x" + std::to_string(want.width));
    if (dataset->numClasses() > m.loader->dataset().numClasses()) throw Error("evaluation data has more classes than the model");
    checkClassNames(dataset->classNames(), m.loader->dataset().classNames());

    torch::NoGradGuard noGrad;
    EvalMode evalMode(*m.model.net);
    const auto acc = torch::TensorOptions().dtype(torch::kDouble).device(m.device);
    torch::Tensor lossSum = torch::zeros({}, acc), correct = torch::zeros({}, acc);
    int64_t samples = 0;
    if (share > 0) {  // a rank of a large world may have none of a small test set
      BatchLoader loader(std::move(dataset), lo, m.allocator());
      do {
        const Batch batch = loader.next();
        const BatchTensors t = toDevice(batch, got, m.device);
        const torch::Tensor logits = m.model.net->forward(t.images);
        lossSum.add_(F::cross_entropy(logits, t.labels, F::CrossEntropyFuncOptions().reduction(torch::kSum)));
        correct.add_(logits.argmax(1).eq(t.labels).sum());
        samples += batch.count;
      } while (loader.position().epoch == 0);
    }
    if (m.comm) {
      torch::Tensor sums = torch::stack({lossSum, correct, torch::full({}, double(samples), acc)});
      m.comm->allReduceSum(sums);
      lossSum = sums[0], correct = sums[1];
      samples = int64_t(sums[2].item<double>());
    }
    return EvalResult{lossSum.item<double>() / double(samples), correct.item<double>() / double(samples), samples};
  });
}

}  // namespace o3
