#include "tar_reader.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "error.h"

namespace o3 {
namespace {

constexpr int64_t kBlock = 512;
// Large enough that a shard on a FUSE mount is read in a few big requests, not 512-byte ones.
constexpr size_t kBufferBytes = 1 << 20;
// pax and GNU long-name payloads are names and numbers; anything bigger is a corrupt header.
constexpr int64_t kMaxMetaBytes = 1 << 20;

// Only for sizes already checked against the file's length, so that it cannot overflow.
int64_t padded(int64_t n) { return (n + kBlock - 1) / kBlock * kBlock; }

std::string cString(const uint8_t* p, size_t max) {
  if (max == 0) return std::string();  // an empty record's data() may be null
  return std::string(reinterpret_cast<const char*>(p), strnlen(reinterpret_cast<const char*>(p), max));
}

// Octal as ustar writes it (leading spaces or zeros, ended by a space or NUL), or GNU's base-256
// for sizes past 8 GiB (0x80, then the value big-endian; 0xff starts a negative one). Returns -1
// when it is neither, negative, or past INT64_MAX.
int64_t parseNumber(const uint8_t* p, size_t n) {
  if (p[0] & 0x80) {
    if (p[0] != 0x80) return -1;
    int64_t v = 0;
    for (size_t i = 1; i < n; ++i) {
      if (v > (INT64_MAX >> 8)) return -1;
      v = (v << 8) | p[i];
    }
    return v;
  }
  size_t i = 0;
  while (i < n && p[i] == ' ') ++i;
  int64_t v = 0;
  bool digits = false;
  for (; i < n && p[i] >= '0' && p[i] <= '7'; ++i, digits = true) {
    if (v > (INT64_MAX >> 3)) return -1;
    v = v * 8 + (p[i] - '0');
  }
  if (!digits) return -1;
  for (; i < n; ++i)
    if (p[i] != ' ' && p[i] != 0) return -1;
  return v;
}

// Both conventions are in use: POSIX sums unsigned bytes, some old writers signed ones.
bool checksumMatches(const uint8_t* h) {
  const int64_t stored = parseNumber(h + 148, 8);
  int64_t unsignedSum = 0, signedSum = 0;
  for (int64_t i = 0; i < kBlock; ++i) {
    const bool inField = i >= 148 && i < 156;
    unsignedSum += inField ? ' ' : h[i];
    signedSum += inField ? ' ' : int8_t(h[i]);
  }
  return stored == unsignedSum || stored == signedSum;
}

// A non-negative decimal number, else -1 (also past INT64_MAX).
int64_t parseDecimal(const std::string& s) {
  if (s.empty()) return -1;
  int64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9' || v > (INT64_MAX - (c - '0')) / 10) return -1;
    v = v * 10 + (c - '0');
  }
  return v;
}

// pax extended header records: "<length> <key>=<value>\n", the length counting the whole record.
void applyPax(const std::vector<uint8_t>& data, std::string& name, int64_t& size, const std::string& where) {
  size_t i = 0;
  while (i < data.size()) {
    size_t sp = i;
    size_t len = 0;
    // The length is bounded by what is left of the payload before it can overflow.
    while (sp < data.size() && data[sp] >= '0' && data[sp] <= '9' && len <= data.size() - i)
      len = len * 10 + size_t(data[sp++] - '0');
    if (sp >= data.size() || data[sp] != ' ' || len <= sp - i || len > data.size() - i || data[i + len - 1] != '\n')
      throw Error(where + ": malformed pax header record");
    const std::string record(data.begin() + long(sp + 1), data.begin() + long(i + len - 1));
    const size_t eq = record.find('=');
    if (eq == std::string::npos) throw Error(where + ": malformed pax header record");
    const std::string key = record.substr(0, eq), value = record.substr(eq + 1);
    if (key == "path") name = value;
    if (key == "size") {
      size = parseDecimal(value);
      if (size < 0) throw Error(where + ": bad pax size '" + value.substr(0, 40) + "'");
    }
    i += len;
  }
}

}  // namespace

TarReader::TarReader(const std::string& path) : path_(path), buf_(kBufferBytes) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) throw openError(path);
  struct stat st;
  if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd_);
    throw fileError(path, "not a regular file");
  }
  fileSize_ = int64_t(st.st_size);
}

Error TarReader::truncated(const char* what, const std::string& why) const {
  return fileError(path_, "truncated tar: the file ends at offset " + std::to_string(fileSize_) + " inside " + what + why);
}

void TarReader::checkFits(int64_t size, int64_t header, const char* what) const {
  if (size > fileSize_ - pos_)
    throw truncated(what,
                    " (the tar header at offset " + std::to_string(header) + " declares " + std::to_string(size) + " bytes)");
}

TarReader::~TarReader() { ::close(fd_); }

bool TarReader::refill() {
  ssize_t got;
  do got = ::read(fd_, buf_.data(), buf_.size());
  while (got < 0 && errno == EINTR);
  if (got < 0) throw fileError(path_, "read error at offset " + std::to_string(pos_) + ": " + std::strerror(errno));
  bufPos_ = 0;
  bufEnd_ = size_t(got);
  return got > 0;
}

void TarReader::fill(uint8_t* out, int64_t n, const char* what) {
  while (n > 0) {
    if (bufPos_ == bufEnd_ && !refill())
      throw fileError(path_, "truncated tar: the file ends at offset " + std::to_string(pos_) + " inside " + what);
    const size_t take = std::min(size_t(n), bufEnd_ - bufPos_);
    if (out) {
      std::memcpy(out, buf_.data() + bufPos_, take);
      out += take;
    }
    bufPos_ += take;
    pos_ += int64_t(take);
    n -= int64_t(take);
  }
}

// Skips what is buffered, then seeks past the rest, so large members are never read when unused.
void TarReader::skip(int64_t n, const char* what) {
  const int64_t buffered = std::min(n, int64_t(bufEnd_ - bufPos_));
  bufPos_ += size_t(buffered);
  pos_ += buffered;
  n -= buffered;
  if (n == 0) return;
  if (n > fileSize_ - pos_) throw truncated(what);
  if (::lseek(fd_, pos_ + n, SEEK_SET) < 0)
    throw fileError(path_, "seek error at offset " + std::to_string(pos_) + ": " + std::strerror(errno));
  pos_ += n;
}

bool TarReader::next(TarMember& member) {
  if (pending_ > 0) skip(pending_, "a member's data");
  pending_ = 0;
  std::string longName;
  int64_t paxSize = -1;
  bool pax = false;
  for (;;) {
    uint8_t h[kBlock];
    const int64_t at = pos_;
    // A clean end of file between members still lacks the end-of-archive marker: a shard cut
    // short at a member boundary must not pass for a complete one.
    if (bufPos_ == bufEnd_ && !refill())
      throw fileError(path_,
                      "truncated tar: the file ends at offset " + std::to_string(at) + " without the end-of-archive marker");
    fill(h, kBlock, "a header");
    if (std::all_of(h, h + kBlock, [](uint8_t b) { return b == 0; })) return false;
    const std::string where = path_ + ": tar header at offset " + std::to_string(at);
    if (!checksumMatches(h)) throw Error(where + " is corrupt (checksum mismatch)");
    int64_t size = parseNumber(h + 124, 12);
    if (size < 0) throw Error(where + " is corrupt (bad size field)");
    const char type = char(h[156]);
    if (type == 'x' || type == 'L') {
      if (size > kMaxMetaBytes) throw Error(where + " is corrupt (a " + std::to_string(size) + "-byte name record)");
      checkFits(size, at, "a pax or long-name record");
      std::vector<uint8_t> data(size_t(size), 0);
      fill(data.data(), size, "a pax or long-name record");
      skip(padded(size) - size, "a pax or long-name record");
      if (type == 'L') {
        longName = cString(data.data(), data.size());
      } else {
        pax = true;
        applyPax(data, longName, paxSize, where);
      }
      continue;
    }
    if (pax && paxSize >= 0) size = paxSize;
    // Before any arithmetic on it: no member's data reaches past the end of the file.
    checkFits(size, at, "a member's data");
    if (type != '0' && type != '\0' && type != '7') {  // directories, links, devices, global pax headers
      skip(padded(size), "a member's data");
      longName.clear();
      paxSize = -1;
      pax = false;
      continue;
    }
    if (!longName.empty()) {
      member.name = longName;
    } else {
      member.name = cString(h, 100);
      const bool posix = std::memcmp(h + 257, "ustar\0", 6) == 0;  // GNU's "ustar  " has no prefix field
      const std::string prefix = posix ? cString(h + 345, 155) : std::string();
      if (!prefix.empty()) member.name = prefix + "/" + member.name;
    }
    member.header = at;
    member.offset = pos_;
    member.size = size;
    current_ = member;
    pending_ = padded(size);
    dataRead_ = false;
    return true;
  }
}

std::vector<uint8_t> TarReader::read(int64_t maxBytes, const char* kind) {
  if (dataRead_) throw Error(path_ + ": tar member data read twice");
  checkMemberSize(path_, current_, maxBytes, kind);
  std::vector<uint8_t> data(static_cast<size_t>(current_.size));
  fill(data.data(), current_.size, "a member's data");
  skip(pending_ - current_.size, "a member's padding");
  pending_ = 0;
  dataRead_ = true;
  return data;
}

void checkMemberSize(const std::string& path, const TarMember& m, int64_t maxBytes, const char* kind) {
  if (m.size > maxBytes)
    throw fileError(path, "member " + m.name + " at offset " + std::to_string(m.header) + " declares " + std::to_string(m.size) +
                              " bytes, more than " + kind + " may hold (" + std::to_string(maxBytes) +
                              "): the shard is corrupt or was not written for training");
}

}  // namespace o3
