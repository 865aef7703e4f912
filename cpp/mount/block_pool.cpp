#include "mount/block_pool.h"

#include <sys/mman.h>

#include <cstdlib>
#include <new>

namespace o3mount {

namespace {

std::byte* mapAnonymous(size_t bytes, int extraFlags) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | extraFlags, -1, 0);
  return p == MAP_FAILED ? nullptr : static_cast<std::byte*>(p);
}

}  // namespace

Block::~Block() { pool_->release(data_, size_); }

BlockPool::BlockPool(size_t blockSize, size_t capacity) : blockSize_(blockSize), capacity_(capacity) {
  if (capacity_ == 0 || blockSize_ > SIZE_MAX / capacity_) return;
  arenaBytes_ = capacity_ * blockSize_;
  // Reserved, not committed (MAP_NORESERVE): pages are backed as blocks are first used.
  arena_ = mapAnonymous(arenaBytes_, MAP_NORESERVE);
  // Without it every block is mapped on its own, as past the capacity.
  if (!arena_) arenaBytes_ = 0;
}

BlockPool::~BlockPool() {
  if (arena_) munmap(arena_, arenaBytes_);
}

std::shared_ptr<Block> BlockPool::acquire(size_t length) {
  std::byte* data = nullptr;
  bool fresh = false;
  if (length != blockSize_) {
    data = static_cast<std::byte*>(std::malloc(length));
    if (!data) throw std::bad_alloc();
  } else {
    {
      std::lock_guard lock(mutex_);
      if (!free_.empty()) {
        data = free_.back();
        free_.pop_back();
      } else if (arena_ && carved_ < capacity_) {
        data = arena_ + carved_++ * blockSize_;
        fresh = true;
      } else {
        if (carved_ + ++outside_ > capacity_) ++overflow_;
      }
    }
    // A block's first use faults its pages in with one call rather than one fault per 4 KiB page
    // as the body lands. Advice only: a kernel before 5.14 faults them in as they are written.
    if (fresh) madvise(data, blockSize_, MADV_POPULATE_WRITE);
    if (!data) {
      data = mapAnonymous(blockSize_, 0);
      if (!data) {
        std::lock_guard lock(mutex_);
        --outside_;
        throw std::bad_alloc();
      }
    }
  }
  try {
    return std::make_shared<Block>(shared_from_this(), data, length);
  } catch (...) {
    release(data, length);
    throw;
  }
}

void BlockPool::release(std::byte* data, size_t size) {
  if (size != blockSize_) {
    std::free(data);
    return;
  }
  if (inArena(data)) {
    std::lock_guard lock(mutex_);
    free_.push_back(data);
    return;
  }
  {
    std::lock_guard lock(mutex_);
    --outside_;
  }
  munmap(data, blockSize_);
}

uint64_t BlockPool::overflow() const {
  std::lock_guard lock(mutex_);
  return overflow_;
}

}  // namespace o3mount
