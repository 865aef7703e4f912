// Inode numbers of the mount: the kernel names files by inode, the control plane by path. An
// inode lives while the kernel holds lookups on it (nlookup, given back by forget); numbers are
// never reused within a mount, so a stale kernel reference can never reach another file. The root
// is inode 1 and never forgotten. Thread-safe.
#pragma once

#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

namespace o3mount {

class InodeTable {
 public:
  static constexpr uint64_t kRoot = 1;

  InodeTable();

  // The inode of `path` ("/a/b"), created if new; counts one kernel lookup on it.
  uint64_t lookup(const std::string& path);
  // Gives back n kernel lookups; the inode is dropped when none is left.
  void forget(uint64_t ino, uint64_t n);
  std::optional<std::string> path(uint64_t ino) const;
  size_t size() const;

  // Whether `version` (what identifies the object's bytes: ETag, size, mtime) is the one the inode
  // had at its previous open, recording it: the kernel may then keep the pages it cached.
  bool sameAsLastOpen(uint64_t ino, const std::string& version);

  // "/" + name under "/", else parent + "/" + name.
  static std::string childPath(const std::string& parent, const std::string& name);

 private:
  struct Node {
    std::string path;
    uint64_t nlookup = 0;
    std::string lastOpened;
  };
  mutable std::mutex mutex_;
  std::unordered_map<uint64_t, Node> byIno_;
  std::unordered_map<std::string, uint64_t> byPath_;
  uint64_t next_ = kRoot + 1;
};

}  // namespace o3mount
