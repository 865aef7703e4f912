// The block cache against the fake store and the failing one: exact bytes, one fetch per block for
// all readers, the memory budget under many readers, demand before readahead, what a readahead has
// on its way, version pins, leaf verification (a bad block fails and is never cached; an
// unverified block never serves a verified open), errors of every kind, announced files, and
// closing with work in flight.
#include <random>
#include <set>

#include "mount/block_cache.h"
#include "mount/tests/fake_store.h"
#include "mount/tests/support.h"

using namespace o3mount;
using namespace o3mount::test;

namespace {

constexpr uint64_t MiB = 1 << 20;

struct Rig {
  FakeStore store;
  Counters counters;
  CollectingLog log;
  BdpSizing sizing;
  BlockCache cache;
  Rig(uint64_t memory = 64 * MiB, int connections = 8, uint64_t partSize = 4 * MiB, uint64_t blockSize = MiB)
      : sizing(store, partSize, 64 * MiB, memory),
        cache({blockSize, memory, connections, 2}, store, nullptr, sizing, counters, log) {}
  ~Rig() {
    // As the mount stops: nothing new, the engine's running fetches cancelled, then the cache drains.
    cache.close();
    store.close();
  }
};

ObjectRef open(const ObjectPin& pin, std::shared_ptr<const Leaves> leaves = nullptr) {
  return ObjectRef::make(pin, pin.key, leaves);
}

std::shared_ptr<const Leaves> leavesOf(const std::vector<std::byte>& bytes) {
  auto l = std::make_shared<Leaves>();
  for (uint64_t off = 0; off < bytes.size() || off == 0; off += kLeafSize)
    l->push_back(sha256(std::span(bytes).subspan(off, std::min<uint64_t>(kLeafSize, bytes.size() - off))));
  return l;
}

void exactBytesInAnyOrder() {
  Rig rig;
  const auto body = randomBytes(10 * MiB + 123, 1);
  const ObjectRef obj = open(rig.store.put("a.bin", body));
  std::vector<uint64_t> order(11);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937(2));
  for (uint64_t i : order) {
    auto r = readBlocks(rig.cache, obj, i, i + 1);
    O3_CHECK(r[0].status);
    const uint64_t len = std::min(MiB, body.size() - i * MiB);
    O3_CHECK(r[0].block && sameBytes(r[0].block->bytes(), std::span(body).subspan(i * MiB, len)));
  }
  // A second pass is all memory hits, no requests.
  const size_t before = rig.store.requests().size();
  auto all = readBlocks(rig.cache, obj, 0, 11);
  for (auto& r : all) O3_CHECK(r.status && r.block);
  O3_CHECK_EQ(rig.store.requests().size(), before);
  O3_CHECK_EQ(rig.counters.memHits.load(), 11u);
  O3_CHECK_EQ(rig.counters.blocksFetched.load(), 11u);
  O3_CHECK_EQ(rig.counters.bytesFetched.load(), body.size());
  O3_CHECK_EQ(rig.cache.stats().inflightBytes, 0u);
}

void singleFlight() {
  Rig rig;
  const auto body = randomBytes(3 * MiB, 3);
  const ObjectRef obj = open(rig.store.put("s.bin", body));
  rig.store.hold(true);
  std::vector<std::thread> readers;
  std::vector<std::vector<BlockResult>> got(16);
  for (int k = 0; k < 16; ++k) readers.emplace_back([&, k] { got[k] = readBlocks(rig.cache, obj, 1, 3); });
  // All sixteen are waiting on one request per run of blocks.
  O3_CHECK(eventually([&] { return rig.counters.memMisses.load() == 32; }));
  rig.store.hold(false);
  for (auto& t : readers) t.join();
  O3_CHECK_EQ(rig.store.requests().size(), 1u);
  for (auto& g : got) {
    O3_CHECK(g[0].status && g[1].status);
    O3_CHECK(g[0].block == got[0][0].block);  // the very same block
  }
  O3_CHECK(sameBytes(got[5][1].block->bytes(), std::span(body).subspan(2 * MiB, MiB)));
}

void budgetHoldsUnderManyReaders() {
  // 16 MiB for 40 files of 3 MiB read at once, with readahead: the cache and what is in flight stay
  // within the budget, past it only by the demand overshoot the budget documents.
  const uint64_t budget = 16 * MiB;
  const int connections = 4;
  Rig rig(budget, connections, 2 * MiB);
  std::vector<std::vector<std::byte>> bodies;
  std::vector<ObjectRef> objs;
  for (int i = 0; i < 40; ++i) {
    bodies.push_back(randomBytes(3 * MiB + 17 * i, 100 + i));
    objs.push_back(open(rig.store.put("f" + std::to_string(i), bodies.back())));
  }
  std::vector<std::thread> readers;
  std::atomic<int> bad{0};
  for (int i = 0; i < 40; ++i)
    readers.emplace_back([&, i] {
      for (uint64_t b = 0; b < rig.cache.blockCount(objs[i]); ++b) {
        rig.cache.prefetch(objs[i], b + 1, b + 3);
        auto r = readBlocks(rig.cache, objs[i], b, b + 1);
        const uint64_t len = std::min(MiB, bodies[i].size() - b * MiB);
        if (!r[0].status || !sameBytes(r[0].block->bytes(), std::span(bodies[i]).subspan(b * MiB, len))) ++bad;
      }
    });
  for (auto& t : readers) t.join();
  O3_CHECK_EQ(bad.load(), 0);
  const BlockCacheStats s = rig.cache.stats();
  const uint64_t overshoot = connections * (MiB + MiB);
  O3_CHECK(s.peakUsedBytes <= budget + overshoot);
  O3_CHECK(s.cacheBytes <= budget);
  O3_CHECK(eventually([&] { return rig.cache.stats().inflightBytes == 0; }));
  O3_CHECK(rig.counters.prefetchWasted.load() <= rig.counters.blocksPrefetched.load());
}

void demandBeforeReadahead() {
  // One connection: readahead queued behind a running fetch; a reader then asks for a block of a
  // queued readahead run, which moves up and is fetched next.
  Rig rig(64 * MiB, 1, 4 * MiB);
  const auto body = randomBytes(16 * MiB, 4);
  const ObjectRef obj = open(rig.store.put("q.bin", body));
  rig.store.hold(true);
  O3_CHECK_EQ(rig.cache.prefetch(obj, 0, 16), 16u);  // [0,4) [4,8) [8,12) [12,16), the first running
  std::thread reader([&] {
    auto r = readBlocks(rig.cache, obj, 13, 14);
    O3_CHECK(r[0].status && sameBytes(r[0].block->bytes(), std::span(body).subspan(13 * MiB, MiB)));
  });
  O3_CHECK(eventually([&] { return rig.counters.memMisses.load() == 1; }));
  rig.store.hold(false);
  reader.join();
  O3_CHECK(eventually([&] { return rig.store.requests().size() == 4; }));
  auto reqs = rig.store.requests();
  O3_CHECK_EQ(reqs[0].offset, 0u);
  O3_CHECK_EQ(reqs[1].offset, 12 * MiB);  // promoted ahead of [4,8) and [8,12)
  O3_CHECK(eventually([&] { return rig.counters.blocksFetched.load() == 16; }));
  O3_CHECK_EQ(rig.counters.blocksPrefetched.load(), 15u);  // all but the one a reader waited on
}

void aShortReadaheadGoesOutInParallel() {
  // 16 MiB parts: a window's early step of 14 blocks goes out as four GETs, a long range in parts.
  Rig rig(128 * MiB, 8, 16 * MiB);
  const ObjectRef obj = open(rig.store.put("r.bin", randomBytes(96 * MiB, 5)));
  O3_CHECK_EQ(rig.cache.prefetch(obj, 2, 16), 16u);
  O3_CHECK(eventually([&] { return rig.store.requests().size() == 4; }));
  std::vector<uint64_t> lengths;
  for (const Request& r : rig.store.requests()) lengths.push_back(r.length / MiB);
  O3_CHECK(lengths == std::vector<uint64_t>({4, 4, 4, 2}));
  O3_CHECK_EQ(rig.cache.prefetch(obj, 16, 96), 96u);
  O3_CHECK(eventually([&] { return rig.store.requests().size() == 9; }));
  for (size_t i = 4; i < 9; i++) O3_CHECK_EQ(rig.store.requests()[i].length, 16 * MiB);
  O3_CHECK_EQ(readaheadRunBlocks(1, 16), 1u);
  O3_CHECK_EQ(readaheadRunBlocks(0, 16), 1u);
}

void readaheadCountsWhatIsOnItsWay() {
  // A readahead's blocks count in its InFlight from the request until they arrive or fail; blocks
  // already cached are not its own.
  Rig rig;
  const auto body = randomBytes(10 * MiB + 123, 9);
  const ObjectRef obj = open(rig.store.put("f.bin", body));
  O3_CHECK(readBlocks(rig.cache, obj, 0, 1)[0].status);
  auto inflight = std::make_shared<InFlight>();
  rig.store.hold(true);
  O3_CHECK_EQ(rig.cache.prefetch(obj, 0, 11, inflight), 11u);
  O3_CHECK_EQ(inflight->bytes.load(), 9 * MiB + 123);
  rig.store.hold(false);
  O3_CHECK(eventually([&] { return inflight->bytes.load() == 0; }));
  // Replaced meanwhile: every block fails, and none is left counted.
  const ObjectRef old = open(rig.store.put("g.bin", randomBytes(6 * MiB, 10)));
  rig.store.put("g.bin", randomBytes(6 * MiB, 11));
  O3_CHECK_EQ(rig.cache.prefetch(old, 0, 6, inflight), 6u);
  O3_CHECK(eventually([&] { return inflight->bytes.load() == 0 && rig.cache.stats().inflightBytes == 0; }));
}

void replacedObjectNeverMixes() {
  Rig rig;
  const auto v1 = randomBytes(6 * MiB, 5);
  const ObjectRef obj = open(rig.store.put("r.bin", v1));
  O3_CHECK(readBlocks(rig.cache, obj, 0, 1)[0].status);
  rig.store.put("r.bin", randomBytes(6 * MiB, 6));
  auto r = readBlocks(rig.cache, obj, 4, 5);
  O3_CHECK_EQ(r[0].status.kind, ErrorKind::Integrity);
  O3_CHECK(!r[0].block);
  // What was cached of the pinned version is still served; nothing of the new one was cached.
  auto cached = readBlocks(rig.cache, obj, 0, 1);
  O3_CHECK(cached[0].status && sameBytes(cached[0].block->bytes(), std::span(v1).subspan(0, MiB)));
  O3_CHECK_EQ(readBlocks(rig.cache, obj, 4, 5)[0].status.kind, ErrorKind::Integrity);
  O3_CHECK_EQ(rig.cache.stats().inflightBytes, 0u);
}

void versionPinKeepsTheOpenVersion() {
  // Where the bucket keeps versions, the first response teaches the pin its version id; later reads
  // ask for exactly that version and get its bytes after the key was overwritten.
  Rig rig;
  const auto v1 = randomBytes(4 * MiB, 7);
  const ObjectRef obj = open(rig.store.put("v.bin", v1, true));
  O3_CHECK(readBlocks(rig.cache, obj, 0, 1)[0].status);
  // Learnt when the response has ended, which may be just after its block was handed over.
  O3_CHECK(eventually([&] { return obj.pin->get().versionId == "v1"; }));
  rig.store.put("v.bin", randomBytes(4 * MiB, 8), true);
  auto r = readBlocks(rig.cache, obj, 3, 4);
  O3_CHECK(r[0].status && sameBytes(r[0].block->bytes(), std::span(v1).subspan(3 * MiB, MiB)));
  O3_CHECK_EQ(rig.store.requests().back().pin.versionId, std::string("v1"));
}

void verificationFailsBadBlocksAndNeverCachesThem() {
  Rig rig;
  const auto body = randomBytes(5 * MiB + 5, 9);
  const ObjectPin pin = rig.store.put("flip/a.bin", body);
  rig.store.corrupt("flip/a.bin", 2 * MiB + 10);
  const ObjectRef obj = ObjectRef::make(pin, "a.bin", leavesOf(body));
  auto all = readBlocks(rig.cache, obj, 0, 6);
  for (uint64_t i = 0; i < 6; ++i) {
    if (i == 2) continue;
    O3_CHECK(all[i].status);
  }
  O3_CHECK_EQ(all[2].status.kind, ErrorKind::Integrity);
  O3_CHECK(all[2].leafMismatch);
  O3_CHECK_EQ(rig.counters.verifyFailures.load(), 1u);
  O3_CHECK_EQ(rig.counters.blocksVerified.load(), 5u);
  // One line naming key, block, leaf and both digests.
  bool found = false;
  for (const Line& l : rig.log.lines()) {
    if (l.message.find("does not match the manifest") == std::string::npos) continue;
    found = true;
    O3_CHECK(std::get<std::string>(*l.field("key")) == "a.bin");
    O3_CHECK_EQ(std::get<int64_t>(*l.field("block")), 2);
    O3_CHECK_EQ(std::get<int64_t>(*l.field("leaf")), 2);
    auto bad = body;
    bad[2 * MiB + 10] ^= std::byte{1};
    O3_CHECK(std::get<std::string>(*l.field("expected")) == hex(sha256(std::span(body).subspan(2 * MiB, MiB))));
    O3_CHECK(std::get<std::string>(*l.field("actual")) == hex(sha256(std::span(bad).subspan(2 * MiB, MiB))));
  }
  O3_CHECK(found);
  // Not cached: asked again, fetched again, failed again.
  const size_t before = rig.store.requests().size();
  O3_CHECK(readBlocks(rig.cache, obj, 2, 3)[0].leafMismatch);
  O3_CHECK_EQ(rig.store.requests().size(), before + 1);
  O3_CHECK_EQ(rig.cache.stats().inflightBytes, 0u);
}

void unverifiedBlocksNeverServeAVerifiedOpen() {
  // Issue 22 item 9: an open without manifest coverage caches a (wrong) block; an open with leaf
  // digests must not be served that block from memory: it is fetched and checked.
  Rig rig;
  const auto body = randomBytes(3 * MiB, 10);
  const ObjectPin pin = rig.store.put("k.bin", body);
  rig.store.corrupt("k.bin", MiB + 1);
  const ObjectRef plain = ObjectRef::make(pin, "k.bin", nullptr);
  auto r = readBlocks(rig.cache, plain, 1, 2);
  O3_CHECK(r[0].status);  // unverified: the bytes the server sent
  const ObjectRef verified = ObjectRef::make(pin, "k.bin", leavesOf(body));
  const size_t before = rig.store.requests().size();
  auto v = readBlocks(rig.cache, verified, 1, 2);
  O3_CHECK(v[0].leafMismatch);
  O3_CHECK_EQ(rig.store.requests().size(), before + 1);
  // And a block verified against some digests is not served to an open expecting others.
  auto other = std::make_shared<Leaves>(*leavesOf(body));
  (*other)[0][0] ^= 1;
  O3_CHECK(readBlocks(rig.cache, ObjectRef::make(pin, "k.bin", leavesOf(body)), 0, 1)[0].status);
  O3_CHECK(readBlocks(rig.cache, ObjectRef::make(pin, "k.bin", other), 0, 1)[0].leafMismatch);
}

void everyErrorKindReachesTheReader() {
  for (ErrorKind kind : {ErrorKind::NotFound, ErrorKind::Auth, ErrorKind::Stream, ErrorKind::Unreachable, ErrorKind::Timeout}) {
    FailingStore store(kind);
    Counters counters;
    CollectingLog log;
    BdpSizing sizing(store, 4 * MiB, 64 * MiB, 64 * MiB);
    BlockCache cache({MiB, 64 * MiB, 4, 2}, store, nullptr, sizing, counters, log);
    const ObjectRef obj = open({"x.bin", "e", "", 8 * MiB});
    cache.prefetch(obj, 2, 8);
    auto r = readBlocks(cache, obj, 0, 2);
    O3_CHECK_EQ(r[0].status.kind, kind);
    O3_CHECK_EQ(r[1].status.kind, kind);
    O3_CHECK(eventually([&] { return cache.stats().inflightBytes == 0 && cache.stats().runningJobs == 0; }));
    O3_CHECK_EQ(cache.stats().cacheBytes, 0u);
    O3_CHECK(log.count("block fetch failed") >= 1);
    cache.close();
    store.close();
  }
}

void announcedFilesArriveInOrder() {
  Rig rig(64 * MiB, 1);
  std::vector<ObjectRef> files;
  std::vector<std::vector<std::byte>> bodies;
  for (int i = 0; i < 6; ++i) {
    bodies.push_back(randomBytes(64 * 1024 + i, 20 + i));
    files.push_back(open(rig.store.put("small/" + std::to_string(i), bodies.back())));
  }
  rig.cache.announce(files);
  O3_CHECK(eventually([&] { return rig.counters.blocksFetched.load() == 6; }));
  auto reqs = rig.store.requests();
  for (int i = 0; i < 6; ++i) O3_CHECK_EQ(reqs[i].pin.key, "small/" + std::to_string(i));
  for (int i = 0; i < 6; ++i) {
    auto r = readBlocks(rig.cache, files[i], 0, 1);
    O3_CHECK(r[0].status && sameBytes(r[0].block->bytes(), bodies[i]));
  }
  O3_CHECK_EQ(rig.counters.memHits.load(), 6u);
  O3_CHECK_EQ(rig.counters.prefetchWasted.load(), 0u);
  // Announced far beyond half the budget, the queue waits for readers instead of evicting its own.
  Rig tight(16 * MiB, 2);
  std::vector<ObjectRef> big;
  for (int i = 0; i < 8; ++i) big.push_back(open(tight.store.put("big/" + std::to_string(i), randomBytes(2 * MiB, 40 + i))));
  tight.cache.announce(big);
  O3_CHECK(eventually([&] { return tight.counters.blocksFetched.load() == 8; }));
  O3_CHECK_EQ(tight.counters.prefetchWasted.load(), 0u);
  O3_CHECK_EQ(tight.cache.stats().announcedFiles, 4u);  // 8 MiB of 16 fetched ahead; the rest waits
  for (int i = 0; i < 8; ++i) O3_CHECK(readBlocks(tight.cache, big[i], 0, 2)[1].status);
  O3_CHECK(eventually([&] { return tight.cache.stats().announcedFiles == 0; }));
}

// Two clients announcing at once (two ranks on one mount) are served in turns, each in its order.
void announcingStreamsTakeTurns() {
  Rig rig(64 * MiB, 1);
  std::vector<ObjectRef> a, b;
  for (int i = 0; i < 4; ++i) {
    a.push_back(open(rig.store.put("a/" + std::to_string(i), randomBytes(64 * 1024, 60 + i))));
    b.push_back(open(rig.store.put("b/" + std::to_string(i), randomBytes(64 * 1024, 70 + i))));
  }
  rig.store.hold(true);
  rig.cache.announce(a, 1);
  O3_CHECK(eventually([&] { return rig.store.requests().size() == 1; }));
  rig.cache.announce(b, 2);
  O3_CHECK_EQ(rig.cache.stats().announcedFiles, 7u);  // a/0 is on its way, no longer waiting
  rig.store.hold(false);
  O3_CHECK(eventually([&] { return rig.counters.blocksFetched.load() == 8; }));
  const std::vector<std::string> expected{"a/0", "b/0", "a/1", "b/1", "a/2", "b/2", "a/3", "b/3"};
  auto reqs = rig.store.requests();
  O3_CHECK_EQ(reqs.size(), expected.size());
  for (size_t i = 0; i < std::min(reqs.size(), expected.size()); ++i) O3_CHECK_EQ(reqs[i].pin.key, expected[i]);
  O3_CHECK_EQ(rig.counters.filesAnnounced.load(), 8u);
  O3_CHECK(eventually([&] { return rig.counters.filesPrefetched.load() == 8; }));
}

// A file its reader opened before the queue got to it is passed over (its reader fetches it), and
// the counters tell prefetched, skipped and used files apart.
void filesReadBeforeTheirTurnArePassedOver() {
  Rig rig(64 * MiB, 1);
  std::vector<ObjectRef> files;
  for (int i = 0; i < 4; ++i) files.push_back(open(rig.store.put("f/" + std::to_string(i), randomBytes(2 * MiB, 80 + i))));
  rig.store.hold(true);
  rig.cache.announce(files, 1);
  O3_CHECK(eventually([&] { return rig.store.requests().size() == 1; }));
  // The reader of f/2 reads its first block while the queue still waits on f/0.
  std::atomic<bool> read{false};
  rig.cache.read(files[2], 0, 1, [&](uint64_t, BlockResult r) { read = static_cast<bool>(r.status); });
  rig.store.hold(false);
  O3_CHECK(eventually([&] { return read.load() && rig.cache.stats().announcedFiles == 0; }));
  O3_CHECK(eventually([&] { return rig.counters.blocksFetched.load() == 7; }));
  for (const Request& r : rig.store.requests()) O3_CHECK(!(r.pin.key == "f/2" && r.offset > 0));
  O3_CHECK_EQ(rig.counters.filesPrefetched.load(), 3u);
  O3_CHECK_EQ(rig.counters.filesSkipped.load(), 1u);
  for (int i : {0, 1, 3}) O3_CHECK(readBlocks(rig.cache, files[size_t(i)], 0, 2)[1].status);
  O3_CHECK_EQ(rig.counters.filesPrefetchUsed.load(), 3u);
  O3_CHECK_EQ(rig.counters.announcedBlocksUsed.load(), 6u);
  O3_CHECK_EQ(rig.counters.prefetchWasted.load(), 0u);
}

void closingCancelsWhatIsQueued() {
  FakeStore store;
  Counters counters;
  CollectingLog log;
  BdpSizing sizing(store, MiB, 64 * MiB, 64 * MiB);
  auto cache = std::make_unique<BlockCache>(BlockCacheConfig{MiB, 64 * MiB, 1, 2}, store, nullptr, sizing, counters, log);
  const ObjectRef obj = open(store.put("c.bin", randomBytes(8 * MiB, 11)));
  store.hold(true);
  std::atomic<int> cancelled{0};
  cache->read(obj, 0, 8, [&](uint64_t, BlockResult r) { cancelled += r.status.kind == ErrorKind::Cancelled; });
  O3_CHECK(eventually([&] { return store.requests().size() == 1; }));
  cache->close();
  store.close();
  cache.reset();
  O3_CHECK_EQ(cancelled.load(), 8);
  O3_CHECK_EQ(log.count("block fetch failed"), 0u);  // closing is no failure to log
}

}  // namespace

void sizingFollowsTheMeasuredLatency() {
  FakeStore store;
  BdpSizing sizing(store, 16 * MiB, 256 * MiB, 512 * MiB);
  // Nothing measured yet: no floor, the window grows from its first request.
  O3_CHECK_EQ(sizing.windowFloor(), 0u);
  // 50 ms to the first byte, then 40 MB/s on a connection: four connections kept busy through the
  // wait need 4 x 40 MB/s x 0.05 s in flight.
  store.measured(50'000, 40'000'000);
  O3_CHECK_EQ(sizing.windowFloor(), 8'000'000u);
  // Never past --readahead-max, however far the server.
  store.measured(2'000'000, 1'000'000'000);
  O3_CHECK_EQ(sizing.windowFloor(), 256 * MiB);
  // The cap shares half the budget among the open files, up to --readahead-max; parts are --part-size.
  O3_CHECK_EQ(sizing.windowCap(1), 256 * MiB);
  O3_CHECK_EQ(sizing.windowCap(4), 64 * MiB);
  O3_CHECK_EQ(BdpSizing(store, 16 * MiB, 128 * MiB, 512 * MiB).windowCap(1), 128 * MiB);
  O3_CHECK_EQ(sizing.partSize(), 16 * MiB);
  store.close();
}

int main() {
  exactBytesInAnyOrder();
  singleFlight();
  budgetHoldsUnderManyReaders();
  demandBeforeReadahead();
  aShortReadaheadGoesOutInParallel();
  readaheadCountsWhatIsOnItsWay();
  replacedObjectNeverMixes();
  versionPinKeepsTheOpenVersion();
  verificationFailsBadBlocksAndNeverCachesThem();
  unverifiedBlocksNeverServeAVerifiedOpen();
  everyErrorKindReachesTheReader();
  announcedFilesArriveInOrder();
  announcingStreamsTakeTurns();
  filesReadBeforeTheirTurnArePassedOver();
  closingCancelsWhatIsQueued();
  sizingFollowsTheMeasuredLatency();
  return test::finish("block_cache_test");
}
