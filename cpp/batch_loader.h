// Assembles batches on a thread pool ahead of the training loop, in a resumable, seeded order.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "dataset.h"
#include "sampler.h"
#include "thread_pool.h"

namespace o3 {

// Memory a batch is assembled in. The allocator is the trainer's: pinned host memory when
// training on CUDA (so the copy to the GPU is asynchronous), plain memory otherwise.
struct HostBuffer {
  uint8_t* data = nullptr;
  std::shared_ptr<void> owner;
};
using HostAllocator = std::function<HostBuffer(size_t bytes)>;

// Where the loader stands: the next sample is number `index` of this rank's share of `epoch`.
struct Position {
  int64_t epoch = 0;
  int64_t index = 0;
};

struct Batch {
  int64_t count = 0;
  Position start;      // position of the batch's first sample
  Position next;       // position after the batch (the next epoch's start after its last batch)
  HostBuffer storage;  // count int64 labels, then count samples of CHW uint8
  const int64_t* labels() const { return reinterpret_cast<const int64_t*>(storage.data); }
  const uint8_t* images() const { return storage.data + count * int64_t(sizeof(int64_t)); }
};

struct LoaderOptions {
  int64_t batchSize = 64;
  SamplerOptions sampler;
  int prefetch = 4;  // batches assembled ahead of the consumer
  int workers = 2;   // threads assembling them
};

class BatchLoader {
 public:
  BatchLoader(std::shared_ptr<const Dataset> dataset, LoaderOptions opts, HostAllocator allocate);
  ~BatchLoader();
  BatchLoader(const BatchLoader&) = delete;
  BatchLoader& operator=(const BatchLoader&) = delete;

  // The batch at position(); the last batch of an epoch may be short. Rethrows a failed read
  // (the position stays at that batch, so a retry reads it again).
  Batch next();
  Position position() const { return consumed_; }
  uint64_t seed() const { return opts_.sampler.seed; }
  // Restarts from `pos` with shuffling seeded by `seed`; batches prefetched so far are dropped.
  void seek(Position pos, uint64_t seed);
  int64_t epochSize() const { return epochSize_; }
  // The files this rank reads from `from` to the end of its epoch, each once, in the order of their
  // first read, as paths relative to the dataset's root; empty for data held in memory. Not
  // reentrant with next() or seek() (the caller runs one at a time, as for next()).
  std::vector<std::string> filesAhead(Position from);
  const SamplerOptions& sampler() const { return opts_.sampler; }
  const Dataset& dataset() const { return *dataset_; }

 private:
  struct Pending {
    Position start, next;
    int64_t count;
    std::future<HostBuffer> result;
  };
  void fill();
  void drain();
  std::shared_ptr<const std::vector<int64_t>> orderFor(int64_t epoch);

  std::shared_ptr<const Dataset> dataset_;
  LoaderOptions opts_;
  HostAllocator allocate_;
  std::vector<int64_t> shardSizes_;  // the dataset's, when it is stored in shards
  int64_t epochSize_;
  Position consumed_, planned_;
  std::shared_ptr<const std::vector<int64_t>> order_;
  int64_t orderEpoch_ = -1;
  std::deque<Pending> pending_;
  ThreadPool pool_;  // last: destroyed first, after drain() has waited for its tasks
};

}  // namespace o3
