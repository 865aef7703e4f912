// Checks blocks against the leaf digests of a dataset manifest: the SHA-256 of each 1 MiB leaf of
// the file's UnixFS CID (lib/content/dataset-manifest.ts). A block holds whole leaves (verified
// mounts use blocks of at least 1 MiB, a multiple of the leaf size), except the file's last,
// shorter one. Hashing (OpenSSL, about 1.7 GB/s with SHA-NI) runs on the block cache's workers,
// never on the fetch engine's thread and never on a FUSE thread.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace o3mount {

// The leaf size of the manifests' CIDs (lib/content/cid.ts CID_BLOCK_SIZE).
inline constexpr uint64_t kLeafSize = 1 << 20;

using Digest = std::array<uint8_t, 32>;
using Leaves = std::vector<Digest>;

std::string hex(const Digest& d);
Digest sha256(std::span<const std::byte> data);

struct LeafMismatch {
  uint64_t leaf = 0;     // index of the leaf in the file
  std::string expected;  // hex, or "(none)" where the manifest has no leaf at that index
  std::string actual;    // hex
};

// The first leaf of block `index` (of `blockSize` bytes, a multiple of kLeafSize) whose bytes do
// not hash to the manifest's digest, or nothing when every leaf matches.
std::optional<LeafMismatch> checkLeaves(const Leaves& leaves, uint64_t blockSize, uint64_t index,
                                        std::span<const std::byte> data);

// The manifest's digests for block `index`, as the bytes a cache key can carry: a block verified
// against them is never served to an open expecting other digests, nor to one expecting none to be
// confused with one that has them (issue 22 item 9).
std::string blockDigestKey(const Leaves& leaves, uint64_t blockSize, uint64_t index);

}  // namespace o3mount
