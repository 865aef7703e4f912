#include "sampler.h"

#include <algorithm>
#include <random>
#include <string>

#include "error.h"

namespace o3 {
namespace {

// An unbiased draw in [0, bound) by rejection; written out rather than using
// std::uniform_int_distribution, whose algorithm the standard leaves to the library, so that a
// checkpoint resumes with the same order on any toolchain.
uint64_t below(std::mt19937_64& rng, uint64_t bound) {
  const uint64_t limit = UINT64_MAX - UINT64_MAX % bound;
  uint64_t x;
  do x = rng();
  while (x >= limit);
  return x % bound;
}

std::mt19937_64 seededRng(std::initializer_list<uint64_t> values) {
  std::vector<uint32_t> words;
  for (uint64_t v : values) words.insert(words.end(), {uint32_t(v), uint32_t(v >> 32)});
  std::seed_seq seq(words.begin(), words.end());
  return std::mt19937_64(seq);
}

template <class T>
void shuffle(T first, T last, std::mt19937_64& rng) {
  for (auto n = size_t(last - first); n > 1; --n) std::swap(first[n - 1], first[below(rng, n)]);
}

// Global steps in an epoch, the last one possibly incomplete (Short, Pad) or none of it (Drop).
int64_t globalSteps(int64_t datasetSize, const SamplerOptions& opts) {
  const int64_t global = opts.batchSize * opts.worldSize;
  return opts.lastBatch == LastBatch::Drop ? datasetSize / global : (datasetSize + global - 1) / global;
}

}  // namespace

LastBatch lastBatchFromName(const std::string& name) {
  if (name == "short") return LastBatch::Short;
  if (name == "drop") return LastBatch::Drop;
  if (name == "pad") return LastBatch::Pad;
  throw Error("lastBatch must be 'short', 'drop' or 'pad', not '" + name + "'");
}

int64_t shardSize(int64_t datasetSize, const SamplerOptions& opts) {
  const int64_t steps = globalSteps(datasetSize, opts);
  if (opts.lastBatch != LastBatch::Short || steps == 0) return steps * opts.batchSize;
  // The last global batch's samples go to the lowest ranks first.
  const int64_t last = datasetSize - (steps - 1) * opts.batchSize * opts.worldSize;
  return (steps - 1) * opts.batchSize + std::clamp(last - opts.rank * opts.batchSize, int64_t(0), opts.batchSize);
}

int64_t toGlobalIndex(int64_t rankIndex, const SamplerOptions& opts) {
  return rankIndex / opts.batchSize * opts.batchSize * opts.worldSize + rankIndex % opts.batchSize;
}

int64_t toRankIndex(int64_t globalIndex, const SamplerOptions& opts) {
  if (opts.worldSize == 1) return globalIndex;
  const int64_t global = opts.batchSize * opts.worldSize;
  if (globalIndex % global != 0)
    throw Error("data position " + std::to_string(globalIndex) + " is not on a boundary of the global batch of " +
                std::to_string(global));
  return globalIndex / global * opts.batchSize;
}

std::vector<int64_t> epochOrder(int64_t datasetSize, int64_t epoch, const SamplerOptions& opts) {
  std::vector<int64_t> all(static_cast<size_t>(datasetSize));
  for (int64_t i = 0; i < datasetSize; ++i) all[size_t(i)] = i;
  if (opts.shuffle) {
    std::mt19937_64 rng = seededRng({opts.seed, uint64_t(epoch)});
    shuffle(all.begin(), all.end(), rng);
  }
  const int64_t steps = globalSteps(datasetSize, opts), global = opts.batchSize * opts.worldSize;
  std::vector<int64_t> mine;
  mine.reserve(size_t(shardSize(datasetSize, opts)));
  for (int64_t k = 0; k < steps; ++k) {
    const int64_t first = k * global + opts.rank * opts.batchSize;
    for (int64_t i = first; i < first + opts.batchSize; ++i) {
      if (i < datasetSize) mine.push_back(all[size_t(i)]);
      // Padding repeats the epoch's first samples, as PyTorch's DistributedSampler does.
      else if (opts.lastBatch == LastBatch::Pad)
        mine.push_back(all[size_t(i % datasetSize)]);
    }
  }
  return mine;
}

int64_t shardedEpochSize(const std::vector<int64_t>& shardSizes, const SamplerOptions& opts) {
  if (int64_t(shardSizes.size()) < opts.worldSize)
    throw Error(std::to_string(shardSizes.size()) + " shards for " + std::to_string(opts.worldSize) +
                " ranks: write at least one shard per rank");
  int64_t n = 0;
  for (size_t s = size_t(opts.rank); s < shardSizes.size(); s += size_t(opts.worldSize)) n += shardSizes[s];
  return n;
}

std::vector<int64_t> shardedEpochOrder(const std::vector<int64_t>& shardSizes, int64_t epoch, const SamplerOptions& opts) {
  std::vector<int64_t> first(shardSizes.size() + 1, 0);  // index of each shard's first sample
  for (size_t s = 0; s < shardSizes.size(); ++s) first[s + 1] = first[s] + shardSizes[s];
  std::vector<size_t> mine;
  for (size_t s = size_t(opts.rank); s < shardSizes.size(); s += size_t(opts.worldSize)) mine.push_back(s);
  if (opts.shuffle) {
    std::mt19937_64 rng = seededRng({opts.seed, uint64_t(epoch)});
    shuffle(mine.begin(), mine.end(), rng);
  }
  std::vector<int64_t> order;
  for (size_t s : mine)
    for (int64_t i = first[s]; i < first[s + 1]; ++i) order.push_back(i);
  if (opts.shuffle && opts.window > 1) {
    for (size_t start = 0, w = 0; start < order.size(); start += size_t(opts.window), ++w) {
      std::mt19937_64 rng = seededRng({opts.seed, uint64_t(epoch), w});
      shuffle(order.begin() + long(start), order.begin() + long(std::min(order.size(), start + size_t(opts.window))), rng);
    }
  }
  return order;
}

}  // namespace o3
