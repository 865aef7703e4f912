// Unit tests of the tar reader against hostile and truncated archives, built alone (no torch) under
// AddressSanitizer and UBSan by scripts/test-native: whatever the bytes, the reader either lists
// the members or throws an o3::Error naming the file and an offset; it never reads out of bounds,
// overflows or allocates by a size the file cannot hold.
#include <stdlib.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "../error.h"
#include "../tar_reader.h"

namespace {

int failures = 0, checks = 0;

void check(bool ok, const std::string& what) {
  ++checks;
  if (!ok) {
    ++failures;
    std::fprintf(stderr, "FAIL: %s\n", what.c_str());
  }
}

constexpr size_t kBlock = 512;

std::string octal(uint64_t v, size_t width) {  // width includes the NUL
  std::string s(width - 1, '0');
  for (size_t i = width - 1; i-- > 0; v >>= 3) s[i] = char('0' + (v & 7));
  return s + '\0';
}

// A ustar header block; `size` is the raw 12-byte size field.
std::string header(const std::string& name, char type, const std::string& sizeField) {
  std::string h(kBlock, '\0');
  h.replace(0, name.size(), name);
  h.replace(100, 8, octal(0644, 8));
  h.replace(108, 8, octal(0, 8));
  h.replace(116, 8, octal(0, 8));
  h.replace(124, 12, sizeField);
  h.replace(136, 12, octal(0, 12));
  h[156] = type;
  h.replace(257, 6, std::string("ustar\0", 6));
  h.replace(263, 2, "00");
  h.replace(148, 8, "        ");
  unsigned sum = 0;
  for (unsigned char c : h) sum += c;
  h.replace(148, 8, octal(sum, 7) + ' ');
  return h;
}

std::string header(const std::string& name, char type, uint64_t size) { return header(name, type, octal(size, 12)); }

// GNU's base-256 size field: 0x80, then the value big-endian in the remaining 11 bytes.
std::string base256(uint64_t v) {
  std::string f(12, '\0');
  f[0] = char(0x80);
  for (size_t i = 11; i >= 4; --i, v >>= 8) f[i] = char(v & 0xff);
  return f;
}

std::string pad(const std::string& data) { return data + std::string((kBlock - data.size() % kBlock) % kBlock, '\0'); }

std::string member(const std::string& name, const std::string& data) { return header(name, '0', data.size()) + pad(data); }

std::string paxRecord(const std::string& key, const std::string& value) {
  const std::string body = " " + key + "=" + value + "\n";
  size_t len = body.size() + 1;
  while (std::to_string(len).size() + body.size() != len) ++len;
  return std::to_string(len) + body;
}

std::string pax(const std::string& records) { return header("PaxHeader", 'x', records.size()) + pad(records); }

const std::string kEnd(2 * kBlock, '\0');

std::string tmpDir;
int fileNumber = 0;

std::string writeFile(const std::string& bytes) {
  const std::string path = tmpDir + "/t" + std::to_string(fileNumber++) + ".tar";
  std::ofstream(path, std::ios::binary).write(bytes.data(), std::streamsize(bytes.size()));
  return path;
}

struct Listing {
  std::vector<std::string> members;  // "name size"
  std::vector<std::string> data;     // the data of every member read
  std::string error;                 // the o3::Error's message, when one was thrown
  std::string path;
};

// Lists an archive, reading every member's data (or skipping it when `read` is false).
Listing list(const std::string& bytes, bool read = true) {
  Listing out;
  out.path = writeFile(bytes);
  try {
    o3::TarReader tar(out.path);
    o3::TarMember m;
    while (tar.next(m)) {
      out.members.push_back(m.name + " " + std::to_string(m.size));
      if (read) {
        const std::vector<uint8_t> d = tar.read(1 << 20, "a test member");
        out.data.emplace_back(d.begin(), d.end());
      }
    }
  } catch (const o3::Error& e) {
    out.error = e.what();
  }
  ::unlink(out.path.c_str());
  return out;
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// An error naming the file and containing every part.
void expectError(const std::string& name, const std::string& bytes, const std::vector<std::string>& parts) {
  for (bool read : {true, false}) {
    const Listing l = list(bytes, read);
    check(!l.error.empty(), name + ": throws (got " + std::to_string(l.members.size()) + " members)");
    check(l.error.rfind(l.path + ": ", 0) == 0, name + ": the error starts with the file's path: " + l.error);
    for (const auto& p : parts) check(contains(l.error, p), name + ": '" + p + "' in: " + l.error);
  }
}

const uint64_t kMax = uint64_t(INT64_MAX);

void validArchives() {
  const std::string a = member("a.cls", "3\n") + member("a.png", std::string(700, 'p')) + kEnd;
  Listing l = list(a);
  check(l.error.empty(), "valid: no error: " + l.error);
  check(l.members == std::vector<std::string>{"a.cls 2", "a.png 700"}, "valid: both members");
  check(l.data.size() == 2 && l.data[0] == "3\n" && l.data[1] == std::string(700, 'p'), "valid: their data");
  l = list(a, false);
  check(l.error.empty() && l.members.size() == 2, "valid, data skipped: both members");

  // A pax path, a GNU long name, a directory and a small base-256 size, as tarfile writes them.
  const std::string longName(150, 'd');
  const std::string b = pax(paxRecord("path", longName + "/x.cls")) + header("ignored", '0', 2) + pad("7\n") +
                        header("././@LongLink", 'L', longName.size() + 6) + pad(longName + "/y.cl") + header("ignored", '0', 1) +
                        pad("8") + header("dir/", '5', 0) + header("z.cls", '0', base256(3)) + pad("9\n\n") + kEnd;
  l = list(b);
  check(l.error.empty(), "pax, long name, base-256: no error: " + l.error);
  check(l.members == std::vector<std::string>{longName + "/x.cls 2", longName + "/y.cl 1", "z.cls 3"},
        "pax, long name, base-256: the members and names");
  check(l.data == std::vector<std::string>{"7\n", "8", "9\n\n"}, "pax, long name, base-256: their data");
}

void hostileSizes() {
  // Sizes no file can hold, on a directory entry and on a regular member, through pax and base-256.
  const std::string after = member("b.cls", "1\n") + kEnd;
  expectError("pax size INT64_MAX on a directory", pax(paxRecord("size", std::to_string(kMax))) + header("d/", '5', 0) + after,
              {"offset 1024"});
  expectError("pax size INT64_MAX on a member", pax(paxRecord("size", std::to_string(kMax))) + header("a.cls", '0', 0) + after,
              {"offset 1024"});
  expectError("pax size INT64_MAX - 100 on a member",
              pax(paxRecord("size", std::to_string(kMax - 100))) + header("a.cls", '0', 0) + after, {"offset 1024"});
  expectError("base-256 size INT64_MAX on a directory", header("d/", '5', base256(kMax)) + after, {"offset 0"});
  expectError("base-256 size INT64_MAX - 511 on a member", header("a.png", '0', base256(kMax - 511)) + after, {"offset 0"});
  expectError("base-256 size 2^64 - 1", header("a.png", '0', base256(UINT64_MAX)) + after, {"offset 0"});
  std::string negative = base256(1);
  negative[0] = char(0xff);
  expectError("negative base-256 size", header("a.png", '0', negative) + after, {"offset 0"});
  expectError("4 GiB declared in a small file", member("a.cls", "1\n") + header("b.png", '0', 4ull << 30) + pad("x") + kEnd,
              {"offset 1024"});
  expectError("60 GiB declared in a small file", header("b.cls", '0', base256(60ull << 30)) + pad("x") + kEnd, {"offset 0"});
  expectError("pax size past int64", pax(paxRecord("size", "99999999999999999999")) + header("a.cls", '0', 0) + after,
              {"offset 0", "pax size"});
  expectError("negative pax size", pax(paxRecord("size", "-1")) + header("a.cls", '0', 0) + after, {"offset 0", "pax size"});
  expectError("a pax header bigger than the file", header("PaxHeader", 'x', 900 << 10) + pad("x") + kEnd, {"offset 0"});
  expectError("a pax header over 1 MiB", header("PaxHeader", 'x', 2 << 20) + pad("x") + kEnd, {"offset 0"});
}

void hostilePax() {
  const std::string after = header("a.cls", '0', 2) + pad("1\n") + kEnd;
  const auto raw = [&](const std::string& records) { return pax(records) + after; };
  expectError("a pax record length past size_t", raw("99999999999999999999999999 path=x\n"), {"offset 0", "pax"});
  expectError("a pax record length past the header", raw("40 path=x\n"), {"offset 0", "pax"});
  expectError("a pax record of length 0", raw("0 path=x\n"), {"offset 0", "pax"});
  expectError("a pax record without its newline", raw("11 path=xyz"), {"offset 0", "pax"});
  expectError("a pax record without '='", raw("9 pathx\n\n"), {"offset 0", "pax"});
}

void truncations() {
  // Prefixes of a valid archive (around every block boundary, and every 13th byte between): an
  // error naming an offset, or (past the end marker's first block) the complete listing.
  const std::string full = pax(paxRecord("path", std::string(120, 'd') + "/a.cls")) + header("a", '0', 2) + pad("5\n") +
                           member("a.png", std::string(1500, 'q')) + kEnd;
  const Listing whole = list(full);
  check(whole.error.empty() && whole.members.size() == 2, "the archive to cut is valid: " + whole.error);
  const size_t marker = full.size() - kEnd.size();
  for (size_t n = 0; n < full.size(); ++n) {
    if (n % 13 != 0 && (n + 1) % kBlock > 2) continue;
    for (bool read : {true, false}) {
      const Listing l = list(full.substr(0, n), read);
      const std::string what = "cut at " + std::to_string(n) + (read ? "" : " (skipping data)");
      if (n < marker + kBlock) {
        check(contains(l.error, "truncated tar: the file ends at offset ") || contains(l.error, "corrupt"),
              what + ": " + l.error);
      } else {
        check(l.error.empty() && l.members == whole.members, what + ": the whole listing");
      }
    }
  }
}

// Recomputes a header's checksum, so that a corrupted field gets past the checksum to the parser.
void reseal(std::string& bytes, size_t at) {
  std::string h = bytes.substr(at, kBlock);
  h.replace(148, 8, "        ");
  unsigned sum = 0;
  for (unsigned char c : h) sum += c;
  h.replace(148, 8, octal(sum, 7) + ' ');
  bytes.replace(at, kBlock, h);
}

void corruptions() {
  // Every byte of the size and type fields, and of a pax record, set to values that matter to the
  // parsers: nothing but an o3::Error or a listing may come out, and ASan/UBSan watch the rest.
  const std::string base = pax(paxRecord("size", "2") + paxRecord("path", "p/a.cls")) + header("a", '0', 0) + pad("5\n") +
                           header("b.png", '0', 700) + pad(std::string(700, 'q')) + kEnd;
  const std::vector<size_t> headers = {0, 1024, 2048};
  const unsigned char values[] = {0x00, 0xff, 0x80, '7', '9', ' ', '\n', 'x', 'L'};
  size_t cases = 0;
  for (size_t h : headers) {
    std::vector<size_t> offsets;
    for (size_t i = 124; i < 136; ++i) offsets.push_back(h + i);
    offsets.push_back(h + 156);
    if (h == 0)
      for (size_t i = 512; i < 512 + 30; ++i) offsets.push_back(i);  // the pax records
    for (size_t at : offsets)
      for (unsigned char v : values) {
        std::string bytes = base;
        bytes[at] = char(v);
        if (at < 512 || at >= 1024) reseal(bytes, at / kBlock * kBlock);  // a header, not the pax records
        for (bool read : {true, false}) {
          const Listing l = list(bytes, read);
          ++cases;
          if (!l.error.empty())
            check(contains(l.error, "offset"), "corrupt byte " + std::to_string(at) + ": names an offset: " + l.error);
        }
      }
  }
  check(cases > 1000, "corruptions: " + std::to_string(cases) + " cases ran");
}

void readRules() {
  const std::string a = member("a.cls", "3\n") + kEnd;
  const std::string path = writeFile(a);
  o3::TarReader tar(path);
  o3::TarMember m;
  check(tar.next(m), "read twice: a member");
  tar.read(2, "a label");
  bool threw = false;
  try {
    tar.read(2, "a label");
  } catch (const o3::Error& e) {
    threw = contains(e.what(), "read twice");
  }
  check(threw, "a member's data is read once");
  check(!tar.next(m), "read twice: then the end");
  ::unlink(path.c_str());

  // A member over the caller's cap is refused before its buffer is allocated, naming it.
  const std::string big = writeFile(member("a.cls", "1\n") + member("b.cls", std::string(5000, '7')) + kEnd);
  o3::TarReader capped(big);
  check(capped.next(m) && capped.read(4096, "a label").size() == 2, "under the cap: read");
  std::string error;
  try {
    check(capped.next(m), "over the cap: a member");
    capped.read(4096, "a label");
  } catch (const o3::Error& e) {
    error = e.what();
  }
  check(
      error ==
          big +
              ": member b.cls at offset 1024 declares 5000 bytes, more than a label may hold (4096): the shard is corrupt or was "
              "not written for training",
      "over the cap: " + error);
  ::unlink(big.c_str());
}

}  // namespace

int main() {
  char dir[] = "/tmp/o3-tar-test-XXXXXX";
  if (!::mkdtemp(dir)) {
    std::perror("mkdtemp");
    return 2;
  }
  tmpDir = dir;
  const std::vector<std::pair<const char*, std::function<void()>>> tests = {
      {"valid archives", validArchives}, {"hostile sizes", hostileSizes}, {"hostile pax records", hostilePax},
      {"truncations", truncations},      {"corruptions", corruptions},    {"read rules", readRules},
  };
  for (const auto& [name, run] : tests) {
    const int before = failures;
    try {
      run();
    } catch (const std::exception& e) {
      check(false, std::string(name) + ": escaped: " + e.what());
    }
    std::printf("%s - %s\n", failures == before ? "ok" : "not ok", name);
  }
  ::rmdir(dir);
  std::printf("%d checks, %d failed\n", checks, failures);
  return failures ? 1 : 0;
}
