#include "mount/leaf_verifier.h"

#include <openssl/evp.h>

#include <stdexcept>

namespace o3mount {

std::string hex(const Digest& d) {
  static const char* kHex = "0123456789abcdef";
  std::string out(64, '0');
  for (size_t i = 0; i < d.size(); ++i) {
    out[2 * i] = kHex[d[i] >> 4];
    out[2 * i + 1] = kHex[d[i] & 15];
  }
  return out;
}

Digest sha256(std::span<const std::byte> data) {
  Digest d{};
  unsigned int n = 0;
  if (EVP_Digest(data.data(), data.size(), d.data(), &n, EVP_sha256(), nullptr) != 1 || n != d.size())
    throw std::runtime_error("SHA-256 failed in libcrypto");
  return d;
}

std::optional<LeafMismatch> checkLeaves(const Leaves& leaves, uint64_t blockSize, uint64_t index,
                                        std::span<const std::byte> data) {
  const uint64_t first = index * (blockSize / kLeafSize);
  for (uint64_t off = 0, i = 0; off < data.size(); off += kLeafSize, ++i) {
    const Digest actual = sha256(data.subspan(off, std::min<uint64_t>(kLeafSize, data.size() - off)));
    const uint64_t leaf = first + i;
    if (leaf >= leaves.size()) return LeafMismatch{leaf, "(none)", hex(actual)};
    if (actual != leaves[leaf]) return LeafMismatch{leaf, hex(leaves[leaf]), hex(actual)};
  }
  return std::nullopt;
}

std::string blockDigestKey(const Leaves& leaves, uint64_t blockSize, uint64_t index) {
  const uint64_t perBlock = blockSize / kLeafSize;
  std::string key;
  for (uint64_t i = index * perBlock; i < (index + 1) * perBlock && i < leaves.size(); ++i)
    key.append(reinterpret_cast<const char*>(leaves[i].data()), leaves[i].size());
  return key;
}

}  // namespace o3mount
