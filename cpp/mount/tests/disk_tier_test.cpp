// The disk tier, alone and under the block cache: blocks survive a "remount" (a new cache and tier
// on the same directory), a corrupt block is deleted and fetched again, a block that passes its
// checksum but not the manifest is dropped and fetched again, two locations never share blocks,
// the size bound evicts the oldest, the directory is private and a second mount is locked out.
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "mount/block_cache.h"
#include "mount/disk_tier.h"
#include "mount/tests/fake_store.h"
#include "mount/tests/support.h"

using namespace o3mount;
using namespace o3mount::test;
namespace fs = std::filesystem;

namespace {

constexpr uint64_t MiB = 1 << 20;

std::vector<fs::path> blockFiles(const fs::path& dir) {
  std::vector<fs::path> out;
  for (const auto& e : fs::recursive_directory_iterator(dir / "blocks"))
    if (e.is_regular_file()) out.push_back(e.path());
  std::sort(out.begin(), out.end());
  return out;
}

struct TempDir {
  fs::path path;
  TempDir() {
    char tmpl[] = "/tmp/o3mount-disk-test-XXXXXX";
    path = mkdtemp(tmpl);
  }
  ~TempDir() { fs::remove_all(path); }
};

// One "mount" of the cache over a store: its own counters, tier and cache.
struct Mounted {
  FetchEngine& store;
  Counters counters;
  CollectingLog log;
  BdpSizing sizing{store, 4 * MiB, 64 * MiB, 64 * MiB};
  std::unique_ptr<DiskTier> disk;
  std::unique_ptr<BlockCache> cache;
  Mounted(FetchEngine& s, const fs::path& dir, const std::string& ns, uint64_t maxBytes = 1ull << 30) : store(s) {
    disk = DiskTier::open(dir.string(), maxBytes, ns, counters, log);
    cache = std::make_unique<BlockCache>(BlockCacheConfig{MiB, 64 * MiB, 4, 2}, s, disk.get(), sizing, counters, log);
  }
  ~Mounted() {
    cache->close();
    cache.reset();  // store still open: nothing in flight once every read was answered
    disk.reset();
  }
  bool readAll(const ObjectRef& obj, const std::vector<std::byte>& body) {
    auto r = readBlocks(*cache, obj, 0, cache->blockCount(obj));
    for (uint64_t i = 0; i < r.size(); ++i) {
      const uint64_t len = std::min(MiB, body.size() - i * MiB);
      if (!r[i].status || !sameBytes(r[i].block->bytes(), std::span(body).subspan(i * MiB, len))) return false;
    }
    return true;
  }
};

std::shared_ptr<const Leaves> leavesOf(const std::vector<std::byte>& bytes) {
  auto l = std::make_shared<Leaves>();
  for (uint64_t off = 0; off < bytes.size(); off += kLeafSize)
    l->push_back(sha256(std::span(bytes).subspan(off, std::min<uint64_t>(kLeafSize, bytes.size() - off))));
  return l;
}

void survivesRemountAndRefetchesCorruptBlocks() {
  TempDir tmp;
  const fs::path dir = tmp.path / "cache";
  FakeStore store;
  const auto body = randomBytes(8 * MiB + 5, 1);
  const ObjectPin pin = store.put("cached.bin", body);
  {
    Mounted m(store, dir, "ep\0bucket\0");
    O3_CHECK(m.readAll(ObjectRef::make(pin, "cached.bin", nullptr), body));
    m.disk->flush();
    O3_CHECK_EQ(m.counters.diskWrites.load(), 9u);
    O3_CHECK_EQ(m.counters.diskMisses.load(), 9u);
    struct stat st {};
    O3_CHECK(stat(dir.c_str(), &st) == 0 && (st.st_mode & 0777) == 0700);
  }
  const size_t fetched = store.requests().size();
  {
    Mounted m(store, dir, "ep\0bucket\0");
    O3_CHECK(m.readAll(ObjectRef::make(pin, "cached.bin", nullptr), body));
    O3_CHECK_EQ(m.counters.diskHits.load(), 9u);
    O3_CHECK_EQ(store.requests().size(), fetched);  // nothing from the store
  }
  // One byte flipped past the header of one block file.
  const fs::path victim = blockFiles(dir)[0];
  {
    std::fstream f(victim, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(16 + 1000);
    char c;
    f.get(c);
    f.seekp(16 + 1000);
    f.put(static_cast<char>(c ^ 0xff));
  }
  {
    Mounted m(store, dir, "ep\0bucket\0");
    O3_CHECK(m.readAll(ObjectRef::make(pin, "cached.bin", nullptr), body));
    O3_CHECK_EQ(m.counters.diskCorrupt.load(), 1u);
    O3_CHECK_EQ(m.counters.diskHits.load(), 8u);
    O3_CHECK_EQ(m.counters.blocksFetched.load(), 1u);
    O3_CHECK_EQ(store.requests().size(), fetched + 1);
    O3_CHECK_EQ(m.log.count("failed its checksum"), 1u);
  }
}

void leafCheckCatchesWhatTheChecksumMisses() {
  TempDir tmp;
  const fs::path dir = tmp.path / "cache";
  FakeStore store;
  const auto body = randomBytes(3 * MiB, 2);
  const ObjectPin pin = store.put("b.bin", body);
  const auto leaves = leavesOf(body);
  {
    Mounted m(store, dir, "ns");
    O3_CHECK(m.readAll(ObjectRef::make(pin, "b.bin", leaves), body));
    m.disk->flush();
  }
  // Rewrite one block with a changed byte and a checksum that matches it: only the leaf can tell.
  {
    Counters c;
    CollectingLog log;
    auto tier = DiskTier::open(dir.string(), 1ull << 30, "ns", c, log);
    const std::string id = ObjectRef::make(pin, "b.bin", nullptr).id + '\0' + std::to_string(MiB) + '\0' + "1";
    const std::string name = tier->nameOf(id);
    O3_CHECK(tier->has(name));
    auto pool = std::make_shared<BlockPool>(MiB, 4);
    auto block = pool->acquire(MiB);
    std::copy(body.begin() + MiB, body.begin() + 2 * MiB, block->bytes().begin());
    block->bytes()[777] ^= std::byte{0x80};
    tier->drop(name);
    O3_CHECK(tier->write(name, block));
    tier->flush();
  }
  Mounted m(store, dir, "ns");
  O3_CHECK(m.readAll(ObjectRef::make(pin, "b.bin", leaves), body));
  O3_CHECK_EQ(m.counters.verifyFailures.load(), 1u);
  O3_CHECK_EQ(m.counters.diskCorrupt.load(), 0u);
  O3_CHECK_EQ(m.counters.blocksFetched.load(), 1u);
  O3_CHECK_EQ(m.log.count("disk cache block does not match the manifest"), 1u);
}

void locationsNeverShareBlocks() {
  TempDir tmp;
  const fs::path dir = tmp.path / "cache";
  FakeStore store;
  const auto a = randomBytes(2 * MiB + 7, 3);
  const ObjectPin pin = store.put("shared/twin.bin", a);
  {
    Mounted m(store, dir, std::string("http://e\0bucket-a\0", 18));
    O3_CHECK(m.readAll(ObjectRef::make(pin, "twin", nullptr), a));
    m.disk->flush();
  }
  Mounted other(store, dir, std::string("http://e\0bucket-b\0", 18));
  O3_CHECK(other.readAll(ObjectRef::make(pin, "twin", nullptr), a));
  O3_CHECK_EQ(other.counters.diskHits.load(), 0u);
  O3_CHECK_EQ(other.counters.blocksFetched.load(), 3u);
}

void boundedAndLockedAndPrivate() {
  TempDir tmp;
  const fs::path dir = tmp.path / "cache";
  FakeStore store;
  const auto body = randomBytes(10 * MiB, 4);
  const ObjectPin pin = store.put("big.bin", body);
  {
    // Room for about four blocks and their headers.
    Mounted m(store, dir, "ns", 4 * MiB + 4 * DiskTier::kHeaderBytes);
    O3_CHECK(m.readAll(ObjectRef::make(pin, "big.bin", nullptr), body));
    m.disk->flush();
    O3_CHECK(m.disk->bytes() <= 4 * MiB + 4 * DiskTier::kHeaderBytes);
    O3_CHECK(eventually([&] { return blockFiles(dir).size() == 4; }));
    // A second mount on the same directory is refused while this one holds it.
    Counters c;
    CollectingLog log;
    bool refused = false;
    try {
      DiskTier::open(dir.string(), 1 << 30, "ns", c, log);
    } catch (const DiskTierError& e) {
      refused = std::string(e.what()).find("is in use by process " + std::to_string(getpid())) != std::string::npos;
    }
    O3_CHECK(refused);
  }
  // Reopened, it finds the four blocks again; a left-over temporary file is removed.
  {
    fs::create_directories(dir / "blocks" / "ab");
    std::ofstream(dir / "blocks" / "ab" / "leftover.123.tmp") << "x";
  }
  Counters c;
  CollectingLog log;
  auto tier = DiskTier::open(dir.string(), 1 << 30, "ns", c, log);
  O3_CHECK_EQ(tier->bytes(), 4 * MiB + 4 * DiskTier::kHeaderBytes);
  O3_CHECK(!fs::exists(dir / "blocks" / "ab" / "leftover.123.tmp"));
  // A directory of someone else's, or a file, is refused with a line saying so.
  const fs::path file = tmp.path / "file";
  std::ofstream(file) << "x";
  bool refused = false;
  try {
    DiskTier::open(file.string(), 1 << 30, "ns", c, log);
  } catch (const DiskTierError& e) {
    refused = std::string(e.what()).find("--cache-dir") != std::string::npos;
  }
  O3_CHECK(refused);
}

}  // namespace

int main() {
  survivesRemountAndRefetchesCorruptBlocks();
  leafCheckCatchesWhatTheChecksumMisses();
  locationsNeverShareBlocks();
  boundedAndLockedAndPrivate();
  return test::finish("disk_tier_test");
}
