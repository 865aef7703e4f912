// Data-parallel collectives between the ranks of a job started by torchrun (or anything that sets
// its environment): c10d's TCPStore for the rendezvous, Gloo on CPU, NCCL on CUDA when this
// libtorch has them. Built without them, connecting a world of more than one rank is an error.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dist_options.h"

namespace o3 {

class Collectives {
 public:
  virtual ~Collectives() = default;
  // Connects to the job's other ranks; blocks until all have joined or the timeout passes.
  // Throws o3::Error, also when this libtorch was built without what the device needs.
  static std::unique_ptr<Collectives> connect(const DistOptions& opts, torch::Device device);

  virtual int64_t rank() const = 0;
  virtual int64_t worldSize() const = 0;
  // Rank 0's values into every rank's tensor, in place.
  virtual void broadcast(torch::Tensor& tensor) = 0;
  // Element-wise sum over the ranks, in place.
  virtual void allReduceSum(torch::Tensor& tensor) = 0;
  // Every rank's `tensor` (same shape everywhere), in rank order.
  virtual std::vector<torch::Tensor> allGather(const torch::Tensor& tensor) = 0;
};

// Rank 0's values of all `tensors` into every rank's, flattened into one broadcast.
void broadcastTensors(Collectives& comm, const std::vector<torch::Tensor>& tensors);

// Averages gradients over the ranks: flattened into buckets of about `bucketBytes`, each summed
// in one all-reduce and divided by the world size (Gloo has no average). `flags` (a small tensor
// of the gradients' dtype and device) rides in the last bucket and comes back summed, so the
// ranks agree on a stop without a collective of their own. Returns the seconds spent in the
// all-reduces (on CUDA, in enqueueing them).
double averageGradients(Collectives& comm, const std::vector<torch::Tensor>& params, torch::Tensor& flags,
                        int64_t bucketBytes = 25 << 20);

}  // namespace o3
