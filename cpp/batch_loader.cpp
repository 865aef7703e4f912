#include "batch_loader.h"

#include <algorithm>
#include <unordered_set>

#include "error.h"

namespace o3 {

BatchLoader::BatchLoader(std::shared_ptr<const Dataset> dataset, LoaderOptions opts, HostAllocator allocate)
    : dataset_(std::move(dataset)), opts_(opts), allocate_(std::move(allocate)), epochSize_(0), pool_(std::max(1, opts.workers)) {
  SamplerOptions& s = opts_.sampler;
  if (opts_.batchSize < 1) throw Error("batchSize must be at least 1");
  s.batchSize = opts_.batchSize;
  if (s.worldSize < 1 || s.rank < 0 || s.rank >= s.worldSize) throw Error("rank must be in [0, worldSize)");
  opts_.prefetch = std::max(1, opts_.prefetch);
  shardSizes_ = dataset_->shardSizes();
  epochSize_ = shardSizes_.empty() ? shardSize(dataset_->size(), s) : shardedEpochSize(shardSizes_, s);
  if (epochSize_ < 1) throw Error("rank " + std::to_string(s.rank) + " of " + std::to_string(s.worldSize) + " has no samples");
}

BatchLoader::~BatchLoader() { drain(); }

std::shared_ptr<const std::vector<int64_t>> BatchLoader::orderFor(int64_t epoch) {
  if (orderEpoch_ != epoch) {
    order_ =
        std::make_shared<const std::vector<int64_t>>(shardSizes_.empty() ? epochOrder(dataset_->size(), epoch, opts_.sampler)
                                                                         : shardedEpochOrder(shardSizes_, epoch, opts_.sampler));
    orderEpoch_ = epoch;
  }
  return order_;
}

std::vector<std::string> BatchLoader::filesAhead(Position from) {
  std::vector<std::string> out;
  if (from.epoch < 0 || from.index < 0 || from.index >= epochSize_ || dataset_->fileOf(0) < 0) return out;
  const auto order = orderFor(from.epoch);
  // Samples of one file come together (a shard's) or a file repeats (padding): each file once.
  std::unordered_set<int64_t> seen;
  for (size_t i = size_t(from.index); i < order->size(); ++i) {
    const int64_t file = dataset_->fileOf((*order)[i]);
    if (seen.insert(file).second) out.push_back(dataset_->filePath(file));
  }
  return out;
}

void BatchLoader::fill() {
  while (pending_.size() < size_t(opts_.prefetch)) {
    Pending p;
    p.start = planned_;
    p.count = std::min(opts_.batchSize, epochSize_ - planned_.index);
    p.next = planned_.index + p.count == epochSize_ ? Position{planned_.epoch + 1, 0}
                                                    : Position{planned_.epoch, planned_.index + p.count};
    p.result = pool_.submit(
        [dataset = dataset_, order = orderFor(planned_.epoch), first = planned_.index, count = p.count, allocate = allocate_] {
          const int64_t sampleBytes = dataset->shape().bytes();
          HostBuffer buf = allocate(size_t(count) * (sizeof(int64_t) + size_t(sampleBytes)));
          auto* labels = reinterpret_cast<int64_t*>(buf.data);
          uint8_t* images = buf.data + count * int64_t(sizeof(int64_t));
          for (int64_t i = 0; i < count; ++i) labels[i] = dataset->load((*order)[size_t(first + i)], images + i * sampleBytes);
          return buf;
        });
    planned_ = p.next;
    pending_.push_back(std::move(p));
  }
}

void BatchLoader::drain() {
  for (auto& p : pending_) p.result.wait();
  pending_.clear();
  planned_ = consumed_;
}

Batch BatchLoader::next() {
  fill();
  Pending p = std::move(pending_.front());
  pending_.pop_front();
  fill();  // keep the pool busy while the caller trains on this batch
  Batch b;
  try {
    b.storage = p.result.get();
  } catch (...) {
    drain();
    throw;
  }
  b.count = p.count;
  b.start = p.start;
  b.next = p.next;
  consumed_ = p.next;
  return b;
}

void BatchLoader::seek(Position pos, uint64_t seed) {
  if (pos.epoch < 0 || pos.index < 0 || pos.index > epochSize_)
    throw Error("loader position (" + std::to_string(pos.epoch) + ", " + std::to_string(pos.index) + ") is outside an epoch of " +
                std::to_string(epochSize_) + " samples");
  if (pos.index == epochSize_) pos = {pos.epoch + 1, 0};
  consumed_ = pos;
  drain();
  opts_.sampler.seed = seed;
  orderEpoch_ = -1;
}

}  // namespace o3
