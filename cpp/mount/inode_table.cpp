#include "mount/inode_table.h"

#include <algorithm>
#include <functional>

namespace o3mount {

InodeTable::InodeTable() {
  byIno_[kRoot] = Node{{"/", 0, true, 0, 0}, 1, {}};
  byPath_["/"] = kRoot;
}

uint64_t InodeTable::identityOf(const EntryInfo& e) { return e.isDir ? 0 : identityOf(e.etag, e.mtimeMs); }

uint64_t InodeTable::identityOf(const std::string& listedEtag, int64_t mtimeMs) {
  return std::hash<std::string>{}(listedEtag + '\0' + std::to_string(mtimeMs));
}

std::string InodeTable::childPath(const std::string& parent, const std::string& name) {
  return parent == "/" ? "/" + name : parent + "/" + name;
}

uint64_t InodeTable::lookup(const std::string& path, const EntryInfo& entry) {
  const uint64_t identity = identityOf(entry);
  std::lock_guard lock(mutex_);
  auto it = byPath_.find(path);
  uint64_t ino;
  if (it != byPath_.end() && byIno_.at(it->second).named.identity == identity) {
    ino = it->second;
  } else {
    ino = next_++;
    byPath_[path] = ino;
    byIno_[ino].named = Named{path, identity, entry.isDir, 0, 0};
  }
  Node& node = byIno_.at(ino);
  node.named.size = entry.size;
  node.named.mtimeMs = entry.mtimeMs;
  if (ino != kRoot) ++node.nlookup;
  return ino;
}

void InodeTable::forget(uint64_t ino, uint64_t n) {
  if (ino == kRoot) return;
  std::lock_guard lock(mutex_);
  auto it = byIno_.find(ino);
  if (it == byIno_.end()) return;
  it->second.nlookup -= std::min(n, it->second.nlookup);
  if (it->second.nlookup > 0) return;
  // A replaced object's path already names a newer inode.
  if (auto p = byPath_.find(it->second.named.path); p != byPath_.end() && p->second == ino) byPath_.erase(p);
  byIno_.erase(it);
}

std::optional<std::string> InodeTable::path(uint64_t ino) const {
  std::lock_guard lock(mutex_);
  auto it = byIno_.find(ino);
  if (it == byIno_.end()) return std::nullopt;
  return it->second.named.path;
}

std::optional<InodeTable::Named> InodeTable::named(uint64_t ino) const {
  std::lock_guard lock(mutex_);
  auto it = byIno_.find(ino);
  if (it == byIno_.end()) return std::nullopt;
  return it->second.named;
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
