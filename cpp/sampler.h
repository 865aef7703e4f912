// Which samples a rank visits in an epoch, and in what order.
#pragma once

#include <cstdint>
#include <vector>

namespace o3 {

struct SamplerOptions {
  uint64_t seed = 0;
  bool shuffle = true;
  int64_t rank = 0;
  int64_t worldSize = 1;
};

// Dataset indices this rank visits in `epoch`. The order depends only on (seed, epoch) so that a
// position (epoch, index) is enough to resume, and every rank shuffles identically before taking
// its share: the indices at positions rank, rank + worldSize, ... of the epoch's permutation.
std::vector<int64_t> epochOrder(int64_t datasetSize, int64_t epoch, const SamplerOptions& opts);

// Number of samples this rank visits per epoch.
int64_t shardSize(int64_t datasetSize, const SamplerOptions& opts);

}  // namespace o3
