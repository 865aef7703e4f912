#include "mount/inode_table.h"

#include <algorithm>

namespace o3mount {

InodeTable::InodeTable() {
  byIno_[kRoot] = Node{"/", 1, {}};
  byPath_["/"] = kRoot;
}

std::string InodeTable::childPath(const std::string& parent, const std::string& name) {
  return parent == "/" ? "/" + name : parent + "/" + name;
}

uint64_t InodeTable::lookup(const std::string& path) {
  std::lock_guard lock(mutex_);
  auto it = byPath_.find(path);
  uint64_t ino;
  if (it != byPath_.end()) {
    ino = it->second;
  } else {
    ino = next_++;
    byPath_.emplace(path, ino);
    byIno_[ino].path = path;
  }
  if (ino != kRoot) ++byIno_[ino].nlookup;
  return ino;
}

void InodeTable::forget(uint64_t ino, uint64_t n) {
  if (ino == kRoot) return;
  std::lock_guard lock(mutex_);
  auto it = byIno_.find(ino);
  if (it == byIno_.end()) return;
  it->second.nlookup -= std::min(n, it->second.nlookup);
  if (it->second.nlookup > 0) return;
  byPath_.erase(it->second.path);
  byIno_.erase(it);
}

std::optional<std::string> InodeTable::path(uint64_t ino) const {
  std::lock_guard lock(mutex_);
  auto it = byIno_.find(ino);
  if (it == byIno_.end()) return std::nullopt;
  return it->second.path;
}

size_t InodeTable::size() const {
  std::lock_guard lock(mutex_);
  return byIno_.size();
}

bool InodeTable::sameAsLastOpen(uint64_t ino, const std::string& version) {
  std::lock_guard lock(mutex_);
  auto it = byIno_.find(ino);
  if (it == byIno_.end()) return false;
  const bool same = it->second.lastOpened == version;
  it->second.lastOpened = version;
  return same;
}

}  // namespace o3mount
