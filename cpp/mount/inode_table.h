// Inode numbers of the mount: the kernel names files by inode, the control plane by path. An
// inode lives while the kernel holds lookups on it (nlookup, given back by forget); numbers are
// never reused within a mount, so a stale kernel reference can never reach another file. An inode
// names one object for life: when the object at a path is replaced, the next lookup makes a new
// inode, so the kernel keeps each version's pages and size apart (an open of the old version goes
// on reading it, past the new one's size too, while new opens read the new one). The root is
// inode 1 and never forgotten. Thread-safe.
#pragma once

#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

#include "mount/control_plane.h"

namespace o3mount {

class InodeTable {
 public:
  static constexpr uint64_t kRoot = 1;

  InodeTable();

  // What tells one object at a path from another: a hash of the ETag the listing names and its
  // LastModified (0 for a directory). Lookups and opens both compute it from the listing, never from
  // a manifest's pinned version, so the two agree while the object stays. A hash keeps an inode
  // small (a mount may hold hundreds of thousands); two versions of one path colliding in 64 bits is
  // not a case to design for.
  static uint64_t identityOf(const EntryInfo& e);
  static uint64_t identityOf(const std::string& listedEtag, int64_t mtimeMs);
  // The inode of `path` ("/a/b") as `entry` describes it: the path's inode while it names the same
  // object, else a new one (the old stays, reachable by number, until the kernel forgets it).
  // Counts one kernel lookup on it.
  uint64_t lookup(const std::string& path, const EntryInfo& entry);
  // Gives back n kernel lookups; the inode is dropped when none is left.
  void forget(uint64_t ino, uint64_t n);
  std::optional<std::string> path(uint64_t ino) const;
  struct Named {
    std::string path;
    uint64_t identity = 0;
    // The object as its last lookup described it.
    bool isDir = false;
    uint64_t size = 0;
    int64_t mtimeMs = 0;
    EntryInfo entry() const { return EntryInfo{isDir, size, mtimeMs, {}}; }
  };
  std::optional<Named> named(uint64_t ino) const;
  size_t size() const;

  // Whether `version` (what identifies the object's bytes: ETag, size, mtime) is the one the inode
  // had at its previous open, recording it: the kernel may then keep the pages it cached.
  bool sameAsLastOpen(uint64_t ino, const std::string& version);

  // "/" + name under "/", else parent + "/" + name.
  static std::string childPath(const std::string& parent, const std::string& name);

 private:
  struct Node {
    Named named;
    uint64_t nlookup = 0;
    std::string lastOpened;
  };
  mutable std::mutex mutex_;
  std::unordered_map<uint64_t, Node> byIno_;
  std::unordered_map<std::string, uint64_t> byPath_;
  uint64_t next_ = kRoot + 1;
};

}  // namespace o3mount
