// Block buffers reused for the life of the mount. Full-size blocks come from mmap and go back to a
// free list, so that what the process holds follows what the budget allows (left to malloc, freed
// 1 MiB blocks stay in the heap as fragments and the RSS grows past the budget); the pool keeps at
// most `capacity` of them, and buffers past it (the budget's bounded overshoot) are unmapped again
// when released. Short blocks (an object's tail, small files) are allocated at their own size, so
// that a cache of small files is not charged a whole block each. Thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

namespace o3mount {

class BlockPool;

// The bytes of one block of one object; immutable once handed to the cache.
// A block keeps its pool alive: the last holder may be a disk write or a reply that outlives the
// cache.
class Block {
 public:
  Block(std::shared_ptr<BlockPool> pool, std::byte* data, size_t size) : pool_(std::move(pool)), data_(data), size_(size) {}
  ~Block();
  Block(const Block&) = delete;
  Block& operator=(const Block&) = delete;
  std::span<std::byte> bytes() { return {data_, size_}; }
  std::span<const std::byte> bytes() const { return {data_, size_}; }
  size_t size() const { return size_; }

 private:
  std::shared_ptr<BlockPool> pool_;
  std::byte* data_;
  size_t size_;
};

class BlockPool : public std::enable_shared_from_this<BlockPool> {
 public:
  // Create with std::make_shared: blocks hold on to their pool.
  BlockPool(size_t blockSize, size_t capacity);
  ~BlockPool();
  BlockPool(const BlockPool&) = delete;
  BlockPool& operator=(const BlockPool&) = delete;

  // A buffer of exactly `length` bytes (1..blockSize), given back when the last reference goes.
  // Throws std::bad_alloc when the system has no memory.
  std::shared_ptr<Block> acquire(size_t length);

  size_t blockSize() const { return blockSize_; }
  // Full-size buffers ever allocated past the capacity.
  uint64_t overflow() const;

 private:
  friend class Block;
  void release(std::byte* data, size_t size);

  const size_t blockSize_;
  const size_t capacity_;
  mutable std::mutex mutex_;
  std::vector<std::byte*> free_;
  size_t total_ = 0;  // full-size buffers alive, free or in use
  uint64_t overflow_ = 0;
};

}  // namespace o3mount
