// One named tensor of a trainer's state as plain bytes, the unit of stateDict()/loadStateDict().
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace o3 {

// Element types, named as safetensors names them.
enum class DType { F32, F64, F16, BF16, I64, I32, I16, I8, U8, Bool };

const char* dtypeName(DType t);
// Throws o3::Error for a name that is not one of the above.
DType dtypeFromName(const std::string& name);
size_t dtypeSize(DType t);

struct StateTensor {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;  // empty for a scalar
  const void* data = nullptr;  // contiguous, row-major, little-endian
  size_t bytes = 0;
  // Keeps `data` alive: a private CPU copy for exported state, so the bytes are a snapshot that
  // later training does not change; empty for state handed in (the caller keeps it alive).
  std::shared_ptr<const void> owner;
};

}  // namespace o3
