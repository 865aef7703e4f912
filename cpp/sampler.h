// Which samples a rank visits in an epoch, and in what order.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace o3 {

// What happens to the last global batch of an epoch when it is incomplete. With collectives every
// rank must take the same number of steps, so only drop and pad are allowed there.
enum class LastBatch { Short, Drop, Pad };
LastBatch lastBatchFromName(const std::string& name);  // "short", "drop" or "pad"; throws o3::Error

struct SamplerOptions {
  uint64_t seed = 0;
  bool shuffle = true;
  int64_t rank = 0;
  int64_t worldSize = 1;
  int64_t window = 1000;  // sharded datasets: samples shuffled together (consecutive in the shards)
  int64_t batchSize = 1;  // per rank; a global batch is batchSize x worldSize samples
  LastBatch lastBatch = LastBatch::Short;
};

// Dataset indices this rank visits in `epoch`. The order depends only on (seed, epoch): every rank
// shuffles identically, global step k covers the permutation's samples [k*G, (k+1)*G) and rank r
// takes [k*G + r*B, k*G + (r+1)*B) of them. A position (epoch, global step) is therefore the same
// place in the data whatever the world size.
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
// A rank's index into its share of an epoch as an index into the epoch's permutation, and back:
// what a checkpoint records, so that it resumes with another world size and the same global batch.
// Throws o3::Error when the global index is not on a global batch boundary of a multi-rank run.
int64_t toGlobalIndex(int64_t rankIndex, const SamplerOptions& opts);
int64_t toRankIndex(int64_t globalIndex, const SamplerOptions& opts);

}  // namespace o3
