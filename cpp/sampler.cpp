#include "sampler.h"

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
  do x = rng(); while (x >= limit);
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

}  // namespace

int64_t shardSize(int64_t datasetSize, const SamplerOptions& opts) {
  return (datasetSize - opts.rank + opts.worldSize - 1) / opts.worldSize;
}

std::vector<int64_t> epochOrder(int64_t datasetSize, int64_t epoch, const SamplerOptions& opts) {
  std::vector<int64_t> all(static_cast<size_t>(datasetSize));
  for (int64_t i = 0; i < datasetSize; ++i) all[size_t(i)] = i;
  if (opts.shuffle) {
    std::mt19937_64 rng = seededRng({opts.seed, uint64_t(epoch)});
    shuffle(all.begin(), all.end(), rng);
  }
  if (opts.worldSize == 1) return all;
  std::vector<int64_t> mine;
  mine.reserve(size_t(shardSize(datasetSize, opts)));
  for (size_t i = size_t(opts.rank); i < all.size(); i += size_t(opts.worldSize)) mine.push_back(all[i]);
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
