// A forward-only reader of tar archives (ustar, pax and GNU long names, as Python's tarfile and
// GNU tar write them), for WebDataset shards read in one sequential pass. Torch-free.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "error.h"

namespace o3 {

struct TarMember {
  std::string name;    // full path inside the archive (pax path, GNU long name or ustar prefix/name)
  int64_t header = 0;  // offset of the member's own header block
  int64_t offset = 0;  // offset of its data
  int64_t size = 0;
};

class TarReader {
 public:
  // Opens `path`, a regular file; throws an openError when it cannot.
  explicit TarReader(const std::string& path);
  ~TarReader();
  TarReader(const TarReader&) = delete;
  TarReader& operator=(const TarReader&) = delete;

  // Advances to the next regular file, skipping directories, links and metadata entries. Returns
  // false at the end-of-archive marker. A bad header checksum, a bad number field, a size larger
  // than what is left of the file or a file that ends before the marker throws a fileError naming
  // the archive and the offset.
  bool next(TarMember& member);
  // The current member's data (read once, before the next call to next()). A member larger than
  // `maxBytes` throws (checkMemberSize) before anything is allocated.
  std::vector<uint8_t> read(int64_t maxBytes, const char* kind);

 private:
  bool refill();  // false at the end of the file
  void fill(uint8_t* out, int64_t n, const char* what);
  void skip(int64_t n, const char* what);
  // Throws unless `size` bytes of `what`, declared by the header at offset `header`, fit in the rest of the file.
  void checkFits(int64_t size, int64_t header, const char* what) const;
  Error truncated(const char* what, const std::string& why = "") const;

  std::string path_;
  int fd_ = -1;
  int64_t fileSize_ = 0;  // from fstat at open: every size a header declares is checked against it
  std::vector<uint8_t> buf_;
  size_t bufPos_ = 0, bufEnd_ = 0;
  int64_t pos_ = 0;      // archive offset of buf_[bufPos_]
  int64_t pending_ = 0;  // bytes of the current member's data (plus padding) not yet consumed
  TarMember current_;
  bool dataRead_ = true;
};

// Throws a fileError naming the archive, the member and its offset when `m` declares more than
// `maxBytes`, what `kind` ("a class label", "an image") may hold: a size is checked before a buffer
// is sized by it.
void checkMemberSize(const std::string& path, const TarMember& m, int64_t maxBytes, const char* kind);

}  // namespace o3
