#include "mount/block_pool.h"

#include <sys/mman.h>

#include <cstdlib>
#include <new>

namespace o3mount {

Block::~Block() { pool_->release(data_, size_); }

BlockPool::BlockPool(size_t blockSize, size_t capacity) : blockSize_(blockSize), capacity_(capacity) {}

BlockPool::~BlockPool() {
  for (std::byte* p : free_) munmap(p, blockSize_);
}

std::shared_ptr<Block> BlockPool::acquire(size_t length) {
  std::byte* data = nullptr;
  if (length != blockSize_) {
    data = static_cast<std::byte*>(std::malloc(length));
    if (!data) throw std::bad_alloc();
  } else {
    {
      std::lock_guard lock(mutex_);
      if (!free_.empty()) {
        data = free_.back();
        free_.pop_back();
      } else if (++total_ > capacity_) {
        ++overflow_;
      }
    }
    if (!data) {
      void* p = mmap(nullptr, blockSize_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) {
        std::lock_guard lock(mutex_);
        --total_;
        throw std::bad_alloc();
      }
      data = static_cast<std::byte*>(p);
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
  {
    std::lock_guard lock(mutex_);
    if (total_ <= capacity_) {
      free_.push_back(data);
      return;
    }
    --total_;
  }
  munmap(data, blockSize_);
}

uint64_t BlockPool::overflow() const {
  std::lock_guard lock(mutex_);
  return overflow_;
}

}  // namespace o3mount
