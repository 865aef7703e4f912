// How this process joins a data-parallel job; torch-free so that the binding can fill it in.
#pragma once

#include <cstdint>
#include <string>

namespace o3 {

// What torchrun tells each worker, plus our own timeout.
struct DistOptions {
  bool enabled = false;  // false: one process, no collectives
  int64_t rank = 0;
  int64_t worldSize = 1;
  int64_t localRank = 0;
  std::string masterAddr = "127.0.0.1";
  int masterPort = 29500;
  int64_t restartCount = 0;     // a fresh key prefix per restart attempt: stale keys never match
  bool useAgentStore = false;   // torchrun's agent hosts the store; else rank 0 does
  std::string socketIfname;     // Gloo's network interface; empty: MASTER_ADDR's route
  double timeoutSeconds = 300;  // any collective or store wait longer than this fails the rank
};

}  // namespace o3
