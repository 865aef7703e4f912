#include "idx_file.h"

#include <zlib.h>

#include <algorithm>
#include <memory>

#include "error.h"

namespace o3 {
namespace {

struct GzCloser {
  void operator()(gzFile f) const { gzclose(f); }
};
using GzHandle = std::unique_ptr<std::remove_pointer_t<gzFile>, GzCloser>;

// zlib's message, without the "<path>: " prefix it adds (fileError adds the path itself).
std::string gzMessage(gzFile f, const std::string& path) {
  int code = 0;
  std::string msg = gzerror(f, &code);
  if (msg.rfind(path + ": ", 0) == 0) msg.erase(0, path.size() + 2);
  return code == Z_OK ? std::string() : msg;
}

// gzread reads plain files transparently, so one code path serves .gz and uncompressed idx.
void readExactly(gzFile f, const std::string& path, uint8_t* out, size_t n, const char* part) {
  size_t done = 0;
  while (done < n) {
    // gzread takes an unsigned int count; read in bounded chunks.
    const unsigned chunk = static_cast<unsigned>(std::min<size_t>(n - done, 1u << 30));
    const int got = gzread(f, out + done, chunk);
    if (got < 0) throw fileError(path, std::string("corrupt data in ") + part + ": " + gzMessage(f, path));
    if (got == 0) {
      const std::string why = gzMessage(f, path);
      throw fileError(path, std::string("truncated ") + part + ": expected " + std::to_string(n) + " bytes, got " +
                                std::to_string(done) + (why.empty() ? "" : " (" + why + ")"));
    }
    done += static_cast<size_t>(got);
  }
}

}  // namespace

IdxArray readIdxFile(const std::string& path) {
  GzHandle f(gzopen(path.c_str(), "rb"));
  if (!f) throw openError(path);
  gzbuffer(f.get(), 1 << 20);

  uint8_t magic[4];
  readExactly(f.get(), path, magic, 4, "header");
  if (magic[0] != 0 || magic[1] != 0) throw fileError(path, "not an idx file (bad magic)");
  if (magic[2] != 0x08) throw fileError(path, "unsupported idx element type (only unsigned bytes)");
  const int rank = magic[3];
  if (rank < 1 || rank > 4) throw fileError(path, "bad idx rank " + std::to_string(rank));

  IdxArray out;
  uint64_t total = 1;
  for (int i = 0; i < rank; ++i) {
    uint8_t be[4];
    readExactly(f.get(), path, be, 4, "header");
    const int64_t d = (int64_t(be[0]) << 24) | (int64_t(be[1]) << 16) | (int64_t(be[2]) << 8) | be[3];
    out.dims.push_back(d);
    total *= static_cast<uint64_t>(d);
  }
  if (total > (uint64_t(1) << 36)) throw fileError(path, "idx header claims an implausible size");
  out.data.resize(total);
  readExactly(f.get(), path, out.data.data(), out.data.size(), "data");

  uint8_t extra;
  const int more = gzread(f.get(), &extra, 1);
  if (more < 0) throw fileError(path, "corrupt data: " + gzMessage(f.get(), path));
  if (more > 0) throw fileError(path, "trailing bytes after the idx data");
  return out;
}

}  // namespace o3
