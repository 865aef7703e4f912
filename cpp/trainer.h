// The training core: a model, its optimizer and its data loader on one device. Torch-free
// interface (the torch parts live behind Impl) so that the binding compiles without torch headers.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "batch_loader.h"
#include "dataset.h"
#include "dist_options.h"
#include "model_spec.h"
#include "state_tensor.h"

namespace o3 {

struct OptimizerSpec {
  std::string type = "adam";  // "sgd" or "adam"
  double lr = 1e-3;
  double momentum = 0;  // sgd only
  double weightDecay = 0;
};

struct TrainerOptions {
  ModelSpec model;
  std::string device = "auto";  // "auto" (cuda when available), "cpu" or "cuda"
  uint64_t seed = 0;
  int threads = 0;  // torch intra-op threads (process-wide); 0 leaves torch's default
  OptimizerSpec optimizer;
  DataSpec data;
  int64_t batchSize = 64;
  bool shuffle = true;
  int64_t shuffleWindow = 1000;  // sharded (webdataset) data: samples shuffled together
  // Without `dist`: this process's share of each epoch, with no communication (rank, worldSize).
  // With it: ranks, world size and collectives come from the job.
  int64_t rank = 0;
  int64_t worldSize = 1;
  DistOptions dist;
  LastBatch lastBatch = LastBatch::Short;  // Short is refused with dist: ranks would disagree on steps
  int progressEvery = 10;                  // steps between reads of the loss (each read waits for the GPU)
  int prefetch = 4;
  int workers = 2;
};

struct DeviceInfo {
  std::string type;  // "cpu" or "cuda"
  std::string name;  // GPU or CPU model
};

struct WorldInfo {
  int64_t rank, worldSize, localRank;
  bool collectives;  // false: one process, or a share of the data without communication
};

// How a sample's bytes become the model's input, in float32: x = byte * kInputMul - kInputSub (bytes
// to [-1, 1]). Checkpoints record it, so that other code (examples/pytorch) prepares inputs alike.
constexpr double kInputMul = 2.0 / 255, kInputSub = 1.0;

struct DatasetInfo {
  int64_t size;       // samples in the whole dataset
  int64_t epochSize;  // samples this rank visits per epoch
  int64_t stepsPerEpoch;
  int64_t globalBatch;  // batch size x world size
  int64_t classes;
  SampleShape shape;
  std::vector<std::string> classNames;  // by label, where the data names its classes (Dataset::classNames)
};

struct Progress {
  int64_t step;     // steps done in this call
  int64_t samples;  // samples done in this call
  double loss;      // mean loss of this step's batch (this rank's share of it)
  Position position;
  int64_t total;  // samples per epoch (this rank)
};
using ProgressFn = std::function<void(const Progress&)>;

struct TrainResult {
  double loss;  // mean over the samples trained in this call
  int64_t steps;
  int64_t samples;
  double seconds;
  bool epochEnded;     // the last step trained the last batch of its epoch
  int64_t epoch;       // the epoch of the last step (the one that ended), or the current one if none ran
  double commSeconds;  // of which in gradient all-reduces
  bool stopped;        // ended early by stopAfterStep() (agreed by every rank) or cancel()
};

struct EvalResult {
  double loss;
  double accuracy;
  int64_t samples;
};

class Trainer {
 public:
  // Opens the data, builds the model (seeded) and optimizer on the chosen device. Throws o3::Error.
  explicit Trainer(const TrainerOptions& opts);
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  // The methods below are not reentrant: the caller runs one at a time. position() and cancel()
  // may be called from any thread at any time.
  const DeviceInfo& device() const;
  const ModelSpec& model() const;  // with every default filled in
  DatasetInfo dataset() const;
  WorldInfo world() const;
  Position position() const;

  // Trains up to `maxSteps` batches (no limit when < 0), crossing epoch boundaries unless
  // `toEpochEnd`, which ends the call after the last batch of the current epoch: the sampler
  // knows where epochs end, so callers need not count batches. `onProgress` (may be empty) is
  // called on the training thread every progressEvery steps and after the call's last step.
  // With collectives, every rank must make the same calls with the same arguments.
  TrainResult train(int64_t maxSteps, bool toEpochEnd, const ProgressFn& onProgress);
  // Loss and accuracy of the model (in eval mode, no gradients) over a whole dataset, in order;
  // with collectives each rank evaluates its share and the sums are all-reduced.
  EvalResult evaluate(const DataSpec& data, int64_t batchSize);

  // Every model parameter and buffer ("model.*"), optimizer state ("optim.<param>.<field>"),
  // random generator state ("rng.cpu", and "rng.cuda" on CUDA) and loader state
  // ("loader.position": I64 [seed, epoch, index into the epoch's global order]), as private CPU
  // copies. With collectives every rank must call it; each rank's generator state is gathered
  // into every rank's dict as "rng.cpu.rank<r>" (and "rng.cuda.rank<r>") instead of "rng.cpu".
  std::vector<StateTensor> stateDict();
  // Restores all of the above. Checks every name, dtype and shape before changing anything. A rank
  // whose generator state the dict lacks (it came from a smaller world) seeds it from the seed,
  // its rank and the position.
  void loadStateDict(const std::vector<StateTensor>& state);

  // Makes a running train call, and any later one, return after at most one more step.
  void cancel();
  // Makes the running (or next) train call return after its current step; later calls run normally.
  void stopAfterStep();

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace o3
