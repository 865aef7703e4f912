#include "state_tensor.h"

#include "error.h"

namespace o3 {
namespace {

struct DTypeInfo {
  DType type;
  const char* name;
  size_t size;
};
constexpr DTypeInfo kDTypes[] = {
    {DType::F32, "F32", 4}, {DType::F64, "F64", 8}, {DType::F16, "F16", 2}, {DType::BF16, "BF16", 2}, {DType::I64, "I64", 8},
    {DType::I32, "I32", 4}, {DType::I16, "I16", 2}, {DType::I8, "I8", 1},   {DType::U8, "U8", 1},     {DType::Bool, "BOOL", 1},
};

}  // namespace

const char* dtypeName(DType t) { return kDTypes[size_t(t)].name; }
size_t dtypeSize(DType t) { return kDTypes[size_t(t)].size; }

DType dtypeFromName(const std::string& name) {
  for (const auto& d : kDTypes)
    if (name == d.name) return d.type;
  throw Error("unknown dtype '" + name + "'");
}

}  // namespace o3
