#include "sampler.h"

#include <random>

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

}  // namespace

int64_t shardSize(int64_t datasetSize, const SamplerOptions& opts) {
  return (datasetSize - opts.rank + opts.worldSize - 1) / opts.worldSize;
}

std::vector<int64_t> epochOrder(int64_t datasetSize, int64_t epoch, const SamplerOptions& opts) {
  std::vector<int64_t> all(static_cast<size_t>(datasetSize));
  for (int64_t i = 0; i < datasetSize; ++i) all[size_t(i)] = i;
  if (opts.shuffle) {
    std::seed_seq seq{uint32_t(opts.seed), uint32_t(opts.seed >> 32), uint32_t(epoch), uint32_t(uint64_t(epoch) >> 32)};
    std::mt19937_64 rng(seq);
    for (size_t i = all.size(); i > 1; --i) std::swap(all[i - 1], all[below(rng, i)]);
  }
  if (opts.worldSize == 1) return all;
  std::vector<int64_t> mine;
  mine.reserve(size_t(shardSize(datasetSize, opts)));
  for (size_t i = size_t(opts.rank); i < all.size(); i += size_t(opts.worldSize)) mine.push_back(all[i]);
  return mine;
}

}  // namespace o3
