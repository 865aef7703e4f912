// Reader for the idx format of (Fashion-)MNIST, gzipped or not.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace o3 {

struct IdxArray {
  std::vector<int64_t> dims;
  std::vector<uint8_t> data;  // row-major, dims multiplied out
};

// Reads an idx file of unsigned bytes (type 0x08). Throws fileError naming `path` when the file is
// missing, truncated, corrupt (bad gzip stream, bad magic) or longer than its header says.
IdxArray readIdxFile(const std::string& path);

}  // namespace o3
