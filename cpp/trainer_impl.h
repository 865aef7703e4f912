// Trainer's torch-side state, shared by the files that implement Trainer (training, state dict).
#pragma once

#include <torch/optim/optimizer.h>

#include <atomic>
#include <memory>
#include <mutex>

#include "batch_loader.h"
#include "collectives.h"
#include "error.h"
#include "models.h"
#include "trainer.h"

namespace o3 {

struct Trainer::Impl {
  TrainerOptions opts;
  torch::Device device{torch::kCPU};
  DeviceInfo deviceInfo;
  at::Generator cpuGenerator;  // the trainer's own: dropout on CPU draws from it
  BuiltModel model;
  std::unique_ptr<torch::optim::Optimizer> optimizer;
  std::unique_ptr<BatchLoader> loader;
  std::unique_ptr<Collectives> comm;  // null: no other ranks to talk to
  std::atomic<bool> cancelled{false};
  std::atomic<bool> stopRequested{false};  // cleared when the train call it stopped returns

  mutable std::mutex positionMutex;  // position is read from other threads while training
  Position position;
  void syncPosition() {
    std::lock_guard<std::mutex> lock(positionMutex);
    position = loader->position();
  }

  // Where batches are assembled: pinned memory when the copy to the device can be asynchronous.
  HostAllocator allocator() const;
};

// The seed of a rank's own generator (dropout). Rank 0 with no salt keeps the run's seed, so that
// one process trains as it always did; other ranks, and a rank restored without its generator
// state (salted with its data position), draw other streams.
uint64_t rankSeed(uint64_t seed, int64_t rank, uint64_t salt = 0);

// Runs f, turning torch's errors (whose what() carries a C++ backtrace) into one-line o3::Errors.
template <class F>
auto translateTorchErrors(F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const c10::Error& e) {
    throw Error(e.what_without_backtrace());
  }
}

}  // namespace o3
