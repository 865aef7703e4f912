#include "collectives.h"

#include <chrono>

#include "error.h"

#if defined(O3_WITH_GLOO) || defined(O3_WITH_NCCL)
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#endif
#ifdef O3_WITH_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#ifdef O3_WITH_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace o3 {
namespace {

using Clock = std::chrono::steady_clock;

#if defined(O3_WITH_GLOO) || defined(O3_WITH_NCCL)
// libtorch 1.13's Gloo group is a ProcessGroup, 2.x's a Backend; both have these calls.
template <class Group>
class GroupCollectives : public Collectives {
 public:
  GroupCollectives(c10::intrusive_ptr<Group> group, const DistOptions& opts)
      : group_(std::move(group)), rank_(opts.rank), worldSize_(opts.worldSize), timeoutSeconds_(opts.timeoutSeconds) {}
  ~GroupCollectives() override {
    // A group whose collective failed may have a worker thread stuck on a dead peer; destroying
    // it would wait for that thread forever. The process is about to exit: let it go.
    if (failed_) group_.release();
  }
  int64_t rank() const override { return rank_; }
  int64_t worldSize() const override { return worldSize_; }
  void broadcast(torch::Tensor& tensor) override {
    std::vector<torch::Tensor> t{tensor};
    wait("broadcast", [&] { return group_->broadcast(t); });
  }
  void allReduceSum(torch::Tensor& tensor) override {
    std::vector<torch::Tensor> t{tensor};
    wait("all-reduce", [&] { return group_->allreduce(t); });
  }
  std::vector<torch::Tensor> allGather(const torch::Tensor& tensor) override {
    std::vector<std::vector<torch::Tensor>> out(1);
    for (int64_t r = 0; r < worldSize_; ++r) out[0].push_back(torch::empty_like(tensor));
    std::vector<torch::Tensor> in{tensor};
    wait("all-gather", [&] { return group_->allgather(out, in); });
    return out[0];
  }

 private:
  template <class Start>
  void wait(const char* what, Start&& start) {
    try {
      auto work = start();
      work->wait(std::chrono::milliseconds(int64_t(timeoutSeconds_ * 1000)));
    } catch (const std::exception& e) {
      failed_ = true;
      const std::string why = e.what();
      throw Error(std::string(what) + " across " + std::to_string(worldSize_) + " ranks failed on rank " + std::to_string(rank_) +
                  " (another rank died or hung, or --dist-timeout " + std::to_string(int64_t(timeoutSeconds_)) +
                  " s passed): " + why.substr(0, why.find('\n')));
    }
  }
  c10::intrusive_ptr<Group> group_;
  int64_t rank_, worldSize_;
  double timeoutSeconds_;
  bool failed_ = false;
};

// torchrun's agent hosts a TCPStore when TORCHELASTIC_USE_AGENT_STORE=True; otherwise rank 0
// hosts one at MASTER_ADDR:MASTER_PORT. Each restart attempt keys under its own prefix.
c10::intrusive_ptr<c10d::Store> connectStore(const DistOptions& o, std::chrono::milliseconds timeout) {
  c10d::TCPStoreOptions so;
  so.port = uint16_t(o.masterPort);
  so.isServer = !o.useAgentStore && o.rank == 0;
  so.waitWorkers = false;  // the process group's own rendezvous waits for every rank
  so.timeout = timeout;
  so.multiTenant = true;
  auto store = c10::make_intrusive<c10d::TCPStore>(o.masterAddr, so);
  return c10::make_intrusive<c10d::PrefixStore>("/o3/attempt_" + std::to_string(o.restartCount), store);
}
#endif

#ifdef O3_WITH_GLOO
std::shared_ptr<::gloo::transport::Device> glooDevice(const DistOptions& o) {
  using PG = c10d::ProcessGroupGloo;
  if (!o.socketIfname.empty()) return PG::createDeviceForInterface(o.socketIfname);
  // Gloo binds to what the host name resolves to, which on a machine without a resolvable name
  // (containers, CI) is nothing useful: a job on loopback binds loopback.
  if (o.masterAddr == "localhost" || o.masterAddr.rfind("127.", 0) == 0) return PG::createDeviceForHostname("127.0.0.1");
  return PG::createDefaultDevice();
}
#endif

}  // namespace

std::unique_ptr<Collectives> Collectives::connect(const DistOptions& o, torch::Device device) {
  if (o.worldSize < 1 || o.rank < 0 || o.rank >= o.worldSize)
    throw Error("RANK " + std::to_string(o.rank) + " is outside WORLD_SIZE " + std::to_string(o.worldSize));
  if (!(o.timeoutSeconds > 0)) throw Error("the distributed timeout must be > 0 seconds");
#if defined(O3_WITH_GLOO) || defined(O3_WITH_NCCL)
  const auto timeout = std::chrono::milliseconds(int64_t(o.timeoutSeconds * 1000));
  try {
    auto store = connectStore(o, timeout);
    if (device.is_cuda()) {
#ifdef O3_WITH_NCCL
      auto options = c10d::ProcessGroupNCCL::Options::create();
      options->timeout = timeout;
      return std::make_unique<GroupCollectives<c10d::ProcessGroupNCCL>>(
          c10::make_intrusive<c10d::ProcessGroupNCCL>(store, int(o.rank), int(o.worldSize), options), o);
#else
      throw Error(
          "training on CUDA with WORLD_SIZE > 1 needs NCCL, and this libtorch (or this build of the addon) has none; use "
          "--device cpu for Gloo");
#endif
    }
#ifdef O3_WITH_GLOO
    auto options = c10d::ProcessGroupGloo::Options::create(timeout);
    options->devices.push_back(glooDevice(o));
    options->threads = 2;
    return std::make_unique<GroupCollectives<c10d::ProcessGroupGloo>>(
        c10::make_intrusive<c10d::ProcessGroupGloo>(store, int(o.rank), int(o.worldSize), options), o);
#else
    throw Error("training on the CPU with WORLD_SIZE > 1 needs Gloo, and this libtorch (or this build of the addon) has none");
#endif
  } catch (const c10::Error& e) {
    throw Error("joining the " + std::to_string(o.worldSize) + "-rank job at " + o.masterAddr + ":" +
                std::to_string(o.masterPort) + " failed: " + e.what_without_backtrace());
  }
#else
  (void)device;
  throw Error("WORLD_SIZE is " + std::to_string(o.worldSize) +
              " but this build has no distributed support (libtorch without c10d, or Gloo headers missing: install libgloo-dev "
              "and rebuild)");
#endif
}

void broadcastTensors(Collectives& comm, const std::vector<torch::Tensor>& tensors) {
  if (tensors.empty()) return;
  torch::NoGradGuard noGrad;
  std::vector<torch::Tensor> flat;
  for (const auto& t : tensors) flat.push_back(t.detach().reshape(-1).to(torch::kDouble));
  torch::Tensor all = torch::cat(flat);
  comm.broadcast(all);
  int64_t offset = 0;
  for (const auto& t : tensors) {
    t.detach().copy_(all.slice(0, offset, offset + t.numel()).view(t.sizes()));
    offset += t.numel();
  }
}

double averageGradients(Collectives& comm, const std::vector<torch::Tensor>& params, torch::Tensor& flags, int64_t bucketBytes) {
  torch::NoGradGuard noGrad;
  std::vector<torch::Tensor> grads;
  for (const auto& p : params) {
    // Every rank must put the same elements in the same buckets, used or not.
    if (!p.grad().defined()) const_cast<torch::Tensor&>(p).mutable_grad() = torch::zeros_like(p);
    grads.push_back(p.grad());
  }
  double seconds = 0;
  const double world = double(comm.worldSize());
  size_t first = 0;
  while (first < grads.size()) {
    size_t end = first;
    int64_t bytes = 0;
    while (end < grads.size() && (end == first || bytes + grads[end].nbytes() <= bucketBytes)) bytes += grads[end++].nbytes();
    const bool last = end == grads.size();
    std::vector<torch::Tensor> parts;
    for (size_t i = first; i < end; ++i) parts.push_back(grads[i].reshape(-1));
    if (last) parts.push_back(flags.reshape(-1).to(grads[first].scalar_type()));
    torch::Tensor bucket = torch::cat(parts);
    const auto started = Clock::now();
    comm.allReduceSum(bucket);
    seconds += std::chrono::duration<double>(Clock::now() - started).count();
    int64_t offset = 0;
    for (size_t i = first; i < end; ++i) {
      const int64_t n = grads[i].numel();
      grads[i].copy_(bucket.slice(0, offset, offset + n).view(grads[i].sizes()).div_(world));
      offset += n;
    }
    if (last) flags.copy_(bucket.slice(0, offset, offset + flags.numel()).view(flags.sizes()));
    first = end;
  }
  return seconds;
}

}  // namespace o3
