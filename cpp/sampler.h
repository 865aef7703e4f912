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
  int64_t window = 1000;  // sharded datasets: samples shuffled together (consecutive in the shards)
};

// Dataset indices this rank visits in `epoch`. The order depends only on (seed, epoch) so that a
// position (epoch, index) is enough to resume, and every rank shuffles identically before taking
// its share: the indices at positions rank, rank + worldSize, ... of the epoch's permutation.
std::vector<int64_t> epochOrder(int64_t datasetSize, int64_t epoch, const SamplerOptions& opts);

// Number of samples this rank visits per epoch.
int64_t shardSize(int64_t datasetSize, const SamplerOptions& opts);

// The order for a dataset stored in shards of consecutive samples (`shardSizes`, as WebDataset
// tar shards), which keeps every read close to the previous one instead of jumping across the data:
// - rank r of worldSize takes shards r, r + worldSize, ... (the same ones every epoch, so that an
//   epoch's length is fixed);
// - each epoch visits the rank's shards in an order drawn from (seed, epoch), members in stored order;
// - each window of `window` consecutive samples of that stream is shuffled by a permutation drawn
//   from (seed, epoch, window number): a bounded shuffle buffer whose contents never depend on
//   what was read before.
// The order is a function of (seed, epoch) alone, so a position (epoch, sample count) resumes it
// exactly without replaying anything. Unshuffled: shards and members in stored order.
std::vector<int64_t> shardedEpochOrder(const std::vector<int64_t>& shardSizes, int64_t epoch, const SamplerOptions& opts);

// Number of samples this rank visits per epoch of a sharded dataset. Throws when a rank gets no shard.
int64_t shardedEpochSize(const std::vector<int64_t>& shardSizes, const SamplerOptions& opts);

}  // namespace o3
