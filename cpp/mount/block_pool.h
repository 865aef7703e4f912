// Block buffers reused for the life of the mount. Full-size blocks are carved from one arena of
// `capacity` blocks, reserved at start and backed by memory only where a block is first used, then
// go back to a free list; so what the process holds follows what the budget allows (left to malloc,
// freed 1 MiB blocks stay in the heap as fragments and the RSS grows past the budget). A block's
// pages are faulted in by one call when it is first carved. The arena does not ask for transparent
// huge pages: on a virtual machine whose balloon hands free memory back to the host, the kernel
// takes huge pages from exactly the free 2 MiB runs it handed back, so each one's first touch pays
// the host for all of it (a cold 512 MiB read: 3.5 CPU-s/GiB with them, 1.1 with small pages
// faulted in per block). On another VM the 4 KiB faults themselves had been the cost (3.5 -> 1
// CPU-s/GiB with huge pages): faulting a block's pages in by one call batches those.
// Buffers past the capacity (the budget's bounded overshoot) are mapped one by one and unmapped
// again when released. Short blocks (an object's tail, small files) are allocated at their own
// size, so that a cache of small files is not charged a whole block each. Thread-safe.
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

  bool inArena(const std::byte* p) const { return arena_ && p >= arena_ && p < arena_ + arenaBytes_; }

  const size_t blockSize_;
  const size_t capacity_;
  std::byte* arena_ = nullptr;  // capacity_ blocks, or null where it could not be reserved
  size_t arenaBytes_ = 0;
  mutable std::mutex mutex_;
  std::vector<std::byte*> free_;  // arena blocks given back
  size_t carved_ = 0;             // arena blocks ever handed out
  size_t outside_ = 0;            // full-size buffers alive outside the arena
  uint64_t overflow_ = 0;
};

}  // namespace o3mount
