// What the byte path asks of the control plane (the TypeScript side of the mount, through the
// binding in addon/mount/): metadata, listings and the pin and leaf digests of a file being opened.
// Every call is answered asynchronously: `done` is called later, once, from whatever thread the
// answer arrives on (the JavaScript thread, through the binding), so no FUSE thread ever waits on
// JavaScript. Reads and releases never cross; a read whose blocks are cached never leaves C++.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "mount/error.h"
#include "mount/leaf_verifier.h"
#include "mount/object_pin.h"

namespace o3mount {

// A file or directory as the metadata cache knows it.
struct EntryInfo {
  bool isDir = false;
  uint64_t size = 0;    // files
  int64_t mtimeMs = 0;  // files: the object's LastModified
  std::string etag;     // files, normalised
};

struct DirEntry {
  std::string name;
  bool isDir = false;
};

// What an open pins: the object version every block read through this open must come from, and
// the leaf digests from the dataset manifest that names the file (null when none does).
struct OpenInfo {
  ObjectPin pin;
  int64_t mtimeMs = 0;
  std::shared_ptr<const Leaves> leaves;
  // The ETag the listing names now, as lookups report it (the pin's may be an older version's, the
  // one a manifest records): with mtimeMs, which object the path names (InodeTable::identityOf).
  std::string listedEtag;
};

// Status kinds the control plane answers with (mapped to errno by filesystem.cpp, in one place):
// NotFound for a path that does not exist, Auth for a refusal (the server's, or --verify required
// for a file no manifest names: EACCES), Integrity for a file that contradicts its manifest or a
// bad manifest above it (EIO), Timeout / Stream / Unreachable for the rest (EIO).
class ControlPlane {
 public:
  virtual ~ControlPlane() = default;
  // `path` is "/a/b" below the mount's root. A path that does not exist: Ok with no entry.
  virtual void lookup(const std::string& path, std::function<void(Status, std::optional<EntryInfo>)> done) = 0;
  virtual void readdir(const std::string& path, std::function<void(Status, std::vector<DirEntry>)> done) = 0;
  virtual void open(const std::string& path, std::function<void(Status, OpenInfo)> done) = 0;
  // The object at `path` was found replaced while open: forget what is cached about it.
  virtual void invalidate(const std::string& path) = 0;
};

}  // namespace o3mount
