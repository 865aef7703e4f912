// The byte path's pure policies, each against a model and under random sequences: the memory
// budget (reserve always progresses, try_reserve never passes its share or the limit), readahead
// (a small first request, growing eightfold, the floor from latency, the cap, seeks, kernel readahead out of
// order) and the inode table (lookups and forgets of the kernel).
#include <algorithm>
#include <deque>
#include <map>
#include <random>

#include "mount/inode_table.h"
#include "mount/memory_budget.h"
#include "mount/readahead.h"
#include "mount/tests/check.h"

using namespace o3mount;

namespace {

constexpr uint64_t MiB = 1 << 20;

// Cached entries of random sizes, evicted oldest first.
struct FakeCache : Reclaimable {
  std::deque<uint64_t> entries;
  uint64_t held = 0;
  uint64_t heldBytes() const override { return held; }
  bool evictOne() override {
    if (entries.empty()) return false;
    held -= entries.front();
    entries.pop_front();
    return true;
  }
  void add(uint64_t n) {
    entries.push_back(n);
    held += n;
  }
};

void budgetRandomized() {
  std::mt19937 rng(1);
  for (int round = 0; round < 50; ++round) {
    FakeCache cache;
    const uint64_t limit = (8 + rng() % 64) * MiB;
    MemoryBudget budget(limit, cache);
    std::vector<uint64_t> inflight;  // reservations not yet released
    uint64_t model = 0, peak = 0;
    for (int step = 0; step < 2000; ++step) {
      const uint64_t n = 1 + rng() % (2 * MiB);
      switch (rng() % 4) {
        case 0: {  // readahead asks politely
          const uint64_t before = budget.usedBytes();
          if (budget.tryReserve(n)) {
            inflight.push_back(n);
            model += n;
            O3_CHECK(budget.inflightBytes() <= limit * MemoryBudget::kMaxSpeculativeShare);
            O3_CHECK(budget.usedBytes() <= limit);
          } else {
            // Refused: nothing reserved (though evicting may have freed room).
            O3_CHECK(budget.usedBytes() <= before);
          }
          break;
        }
        case 1:  // a reader always gets its bytes
          budget.reserve(n);
          inflight.push_back(n);
          model += n;
          // Past the limit only when nothing cached is left to evict.
          if (budget.usedBytes() > limit) O3_CHECK_EQ(cache.held, 0u);
          break;
        default:
          if (inflight.empty()) break;
          {
            const size_t i = rng() % inflight.size();
            const uint64_t m = inflight[i];
            inflight.erase(inflight.begin() + static_cast<long>(i));
            budget.release(m);
            model -= m;
            // A finished fetch becomes a cached block, as in the block cache.
            if (rng() % 2) cache.add(m);
          }
      }
      O3_CHECK_EQ(budget.inflightBytes(), model);
      peak = std::max(peak, budget.usedBytes());
      O3_CHECK(budget.peakBytes() >= budget.inflightBytes());
    }
    for (uint64_t m : inflight) budget.release(m);
    O3_CHECK_EQ(budget.inflightBytes(), 0u);
    O3_CHECK(budget.peakBytes() <= peak);
  }
}

struct Reads {
  std::vector<PrefetchRange> prefetched;
};

ReadaheadConfig config(uint64_t cap, uint64_t tolerance = 8 * MiB) {
  return {MiB, 2 * MiB, tolerance, [cap] { return cap; }, {}};
}

void readaheadSequential() {
  const uint64_t size = 100 * MiB;
  Readahead ra(config(16 * MiB));
  // The first read: a small window (2 MiB), not the cap.
  auto r = ra.onRead(0, 128 * 1024, size, 0);
  O3_CHECK(r.has_value());
  O3_CHECK_EQ(r->from, 0u);
  O3_CHECK_EQ(r->to, 3u);  // up to 128 KiB + 2 MiB, rounded up to blocks
  O3_CHECK_EQ(ra.windowBytes(), 2 * MiB);
  ra.issuedTo(r->to, size);
  // Reading on: the window grows eightfold each time half of it has been consumed, up to the cap.
  std::vector<uint64_t> windows{ra.windowBytes()};
  uint64_t issued = r->to;
  for (uint64_t off = 128 * 1024; off < size; off += 128 * 1024) {
    auto p = ra.onRead(off, 128 * 1024, size, 0);
    if (!p) continue;
    O3_CHECK(p->from >= issued - 1);  // never behind what was already asked, beyond the block being read
    O3_CHECK(p->to <= (size + MiB - 1) / MiB);
    issued = std::max(issued, p->to);
    ra.issuedTo(p->to, size);
    windows.push_back(ra.windowBytes());
  }
  O3_CHECK_EQ(issued, 100u);
  for (size_t i = 1; i < windows.size(); ++i) {
    O3_CHECK(windows[i] >= windows[i - 1]);
    O3_CHECK(windows[i] <= 16 * MiB);
  }
  O3_CHECK_EQ(windows.back(), 16 * MiB);
}

void readaheadRandomAccessFetchesNothing() {
  const uint64_t size = 1024 * MiB;
  Readahead ra(config(64 * MiB));
  std::mt19937 rng(2);
  int prefetches = 0;
  // A first read away from 0 is not sequential; nor is any read far from the last one.
  for (int i = 0; i < 1000; ++i) {
    const uint64_t off = (static_cast<uint64_t>(rng()) * 4096) % size;
    if (ra.onRead(off, 4096, size, 0)) ++prefetches;
  }
  // Random reads more than the tolerance apart never prefetch, save the few that land near the last.
  O3_CHECK(prefetches < 30);
  O3_CHECK_EQ(ra.windowBytes() <= 2 * MiB, true);
}

void readaheadOutOfOrderKernelReads() {
  // The kernel's readahead: 1 MiB requests served by several threads, arriving shuffled within a
  // window; they must keep counting as sequential, and together the prefetches cover the file.
  const uint64_t size = 256 * MiB;
  std::mt19937 rng(3);
  for (int round = 0; round < 20; ++round) {
    Readahead ra(config(32 * MiB, 16 * MiB));
    std::vector<bool> covered(size / MiB, false);
    uint64_t resets = 0;
    for (uint64_t base = 0; base < size; base += 8 * MiB) {
      std::vector<uint64_t> offs;
      for (uint64_t o = base; o < base + 8 * MiB; o += MiB) offs.push_back(o);
      std::shuffle(offs.begin(), offs.end(), rng);
      for (uint64_t off : offs) {
        const uint64_t before = ra.windowBytes();
        if (auto p = ra.onRead(off, MiB, size, 0)) {
          for (uint64_t b = p->from; b < p->to; ++b) covered[b] = true;
          ra.issuedTo(p->to, size);
        }
        if (before > 0 && ra.windowBytes() == 0) ++resets;
        covered[off / MiB] = true;  // read (a demand fetch)
      }
    }
    O3_CHECK_EQ(resets, 0u);
    O3_CHECK(std::all_of(covered.begin(), covered.end(), [](bool c) { return c; }));
    O3_CHECK_EQ(ra.windowBytes(), 32 * MiB);
  }
}

void readaheadSeekResets() {
  const uint64_t size = 1024 * MiB;
  Readahead ra(config(64 * MiB, 4 * MiB));
  for (uint64_t off = 0; off < 64 * MiB; off += MiB)
    if (auto p = ra.onRead(off, MiB, size, 0)) ra.issuedTo(p->to, size);
  O3_CHECK(ra.windowBytes() > 2 * MiB);
  // A jump far beyond the window and the tolerance: the window starts over.
  O3_CHECK(!ra.onRead(900 * MiB, MiB, size, 0).has_value());
  O3_CHECK_EQ(ra.windowBytes(), 0u);
  // Reading on from there is a new sequential run, small again.
  auto p = ra.onRead(901 * MiB, MiB, size, 0);
  O3_CHECK(p.has_value());
  O3_CHECK_EQ(ra.windowBytes(), 2 * MiB);
  // The cap follows the provider: more files streaming, a smaller cap.
  uint64_t cap = 8 * MiB;
  Readahead shrinking({MiB, 2 * MiB, MiB, [&cap] { return cap; }, {}});
  for (uint64_t off = 0; off < 64 * MiB; off += MiB)
    if (auto q = shrinking.onRead(off, MiB, size, 0)) shrinking.issuedTo(q->to, size);
  O3_CHECK_EQ(shrinking.windowBytes(), 8 * MiB);
  cap = 2 * MiB;
  for (uint64_t off = 64 * MiB; off < 96 * MiB; off += MiB)
    if (auto q = shrinking.onRead(off, MiB, size, 0)) shrinking.issuedTo(q->to, size);
  O3_CHECK_EQ(shrinking.windowBytes(), 2 * MiB);
  // The end of the file bounds every request.
  Readahead tail(config(64 * MiB));
  auto t = tail.onRead(0, 4096, 3 * MiB + 5, 0);
  O3_CHECK(t.has_value());
  O3_CHECK_EQ(t->to, 3u);
  tail.issuedTo(t->to, 3 * MiB + 5);
  auto t2 = tail.onRead(2 * MiB, MiB, 3 * MiB + 5, 0);
  O3_CHECK(t2.has_value() && t2->to == 4);
}

void readaheadFloorFromLatency() {
  const uint64_t size = 1024 * MiB;
  uint64_t floor = 24 * MiB;
  Readahead ra({MiB, 2 * MiB, 8 * MiB, [] { return 64 * MiB; }, [&floor] { return floor; }});
  // The first request stays small: the first byte comes quickly wherever the server is.
  auto p = ra.onRead(0, MiB, size, 0);
  O3_CHECK(p.has_value());
  O3_CHECK_EQ(ra.windowBytes(), 2 * MiB);
  ra.issuedTo(p->to, size);
  // The second step goes straight to what the measured latency needs in flight, not to 16 MiB.
  p = ra.onRead(2 * MiB, MiB, size, 0);
  O3_CHECK(p.has_value());
  O3_CHECK_EQ(ra.windowBytes(), 24 * MiB);
  O3_CHECK_EQ(p->to, 3u + 24u);
  ra.issuedTo(p->to, size);
  // Growth goes on from there, up to the cap, which the floor never passes.
  floor = 512 * MiB;
  for (uint64_t off = 2 * MiB; off < 200 * MiB; off += MiB)
    if (auto q = ra.onRead(off, MiB, size, 0)) ra.issuedTo(q->to, size);
  O3_CHECK_EQ(ra.windowBytes(), 64 * MiB);
  // Near the server (a floor under the first window) it is the plain growth: 2 MiB, then 16, then
  // the cap.
  Readahead near({MiB, 2 * MiB, 8 * MiB, [] { return 64 * MiB; }, [] { return uint64_t{MiB / 2}; }});
  if (auto q = near.onRead(0, MiB, size, 0)) near.issuedTo(q->to, size);
  auto q = near.onRead(2 * MiB, MiB, size, 0);
  O3_CHECK(q.has_value());
  O3_CHECK_EQ(near.windowBytes(), 16 * MiB);
  near.issuedTo(q->to, size);
  O3_CHECK(near.onRead(12 * MiB, MiB, size, 0).has_value());
  O3_CHECK_EQ(near.windowBytes(), 64 * MiB);
}

void readaheadTopsUpAsPartsArrive() {
  const uint64_t size = 1024 * MiB;
  Readahead ra(config(64 * MiB));
  uint64_t off = 0, issued = 0;
  auto read = [&](uint64_t inFlight) {
    auto p = ra.onRead(off, MiB, size, inFlight);
    off += MiB;
    if (p) {
      issued = std::max(issued, p->to * MiB);
      ra.issuedTo(p->to, size);
    }
    return p;
  };
  // Growing, the window waits for its reader whatever has arrived: each step is the reader's.
  while (ra.windowBytes() < 64 * MiB) read(0);
  O3_CHECK_EQ(issued, off + 64 * MiB);
  // At the cap, the reader waits on the oldest part while the rest of the window is on its way:
  // nothing more goes out until an eighth of it has arrived...
  O3_CHECK(!read(64 * MiB - MiB).has_value());
  O3_CHECK(!read(64 * MiB - 7 * MiB).has_value());
  const uint64_t before = issued;
  auto p = read(64 * MiB - 8 * MiB);
  O3_CHECK(p.has_value());
  O3_CHECK_EQ(p->from * MiB, before);
  O3_CHECK_EQ(issued, before + 8 * MiB);  // ...then as much goes out as arrived
  // All of it arrived, the reader still there: it goes up to half a window beyond the window.
  p = read(0);
  O3_CHECK(p.has_value());
  O3_CHECK_EQ(issued, off + 96 * MiB);
  // From there on, reading on moves it in steps of an eighth at least, never block by block.
  uint64_t steps = 0;
  for (int i = 0; i < 64; ++i)
    if (read(0)) {
      ++steps;
      O3_CHECK_EQ(issued, off + 96 * MiB);
    }
  O3_CHECK_EQ(steps, 8u);
  // The last step reaches the end of the file however short it is.
  Readahead tail(config(64 * MiB));
  uint64_t tailIssued = 0, at = 0;
  const uint64_t tailSize = 100 * MiB + 5;
  while (tailIssued < tailSize) {
    auto q = tail.onRead(at, MiB, tailSize, 0);
    at += MiB;
    if (!q) continue;
    O3_CHECK(q->to * MiB > tailIssued);
    tailIssued = std::min(tailSize, q->to * MiB);
    tail.issuedTo(q->to, tailSize);
  }
  O3_CHECK_EQ(tailIssued, tailSize);
}

void inodeTableRandomized() {
  const EntryInfo kFile{false, 10, 1'700'000'000'000, "etag-1"};
  InodeTable table;
  std::mt19937 rng(4);
  std::map<std::string, std::pair<uint64_t, uint64_t>> model;  // path -> (ino, nlookup)
  std::map<uint64_t, bool> everIssued;
  for (int step = 0; step < 20000; ++step) {
    const std::string path = "/d" + std::to_string(rng() % 20) + "/f" + std::to_string(rng() % 50);
    if (rng() % 3) {
      const uint64_t ino = table.lookup(path, kFile);
      O3_CHECK(ino != InodeTable::kRoot);
      auto it = model.find(path);
      if (it == model.end()) {
        O3_CHECK(!everIssued.count(ino));  // never reused
        everIssued[ino] = true;
        model[path] = {ino, 1};
      } else {
        O3_CHECK_EQ(ino, it->second.first);
        ++it->second.second;
      }
      O3_CHECK_EQ(*table.path(ino), path);
    } else if (!model.empty()) {
      auto it = model.begin();
      std::advance(it, rng() % model.size());
      const uint64_t n = 1 + rng() % 3;
      table.forget(it->second.first, n);
      if (n >= it->second.second) {
        O3_CHECK(!table.path(it->second.first).has_value());
        model.erase(it);
      } else {
        it->second.second -= n;
        O3_CHECK(table.path(it->second.first).has_value());
      }
    }
    O3_CHECK_EQ(table.size(), model.size() + 1);
  }
  // The root stays, whatever the kernel forgets.
  table.forget(InodeTable::kRoot, 100);
  O3_CHECK_EQ(*table.path(InodeTable::kRoot), std::string("/"));
  O3_CHECK_EQ(InodeTable::childPath("/", "a"), std::string("/a"));
  O3_CHECK_EQ(InodeTable::childPath("/a", "b"), std::string("/a/b"));
  // The kernel keeps its pages only while the object is the one it saw at the last open.
  const uint64_t ino = table.lookup("/x", kFile);
  O3_CHECK(!table.sameAsLastOpen(ino, "etag-1"));
  O3_CHECK(table.sameAsLastOpen(ino, "etag-1"));
  O3_CHECK(!table.sameAsLastOpen(ino, "etag-2"));
  // Another object at the path (ETag or LastModified): a new inode; the old one keeps what it named
  // until the kernel forgets it, and forgetting it leaves the path on the new one.
  const EntryInfo replaced{false, 20, kFile.mtimeMs + 1000, "etag-2"};
  const uint64_t newer = table.lookup("/x", replaced);
  O3_CHECK(newer != ino);
  O3_CHECK_EQ(table.named(ino)->size, 10u);
  O3_CHECK_EQ(table.named(newer)->size, 20u);
  O3_CHECK_EQ(table.lookup("/x", replaced), newer);
  O3_CHECK(table.lookup("/x", EntryInfo{false, 20, replaced.mtimeMs + 1000, "etag-2"}) != newer);
  table.forget(ino, 1);
  O3_CHECK(!table.path(ino).has_value());
  O3_CHECK_EQ(*table.path(newer), std::string("/x"));
}

}  // namespace

int main() {
  budgetRandomized();
  readaheadSequential();
  readaheadRandomAccessFetchesNothing();
  readaheadOutOfOrderKernelReads();
  readaheadSeekResets();
  readaheadFloorFromLatency();
  readaheadTopsUpAsPartsArrive();
  inodeTableRandomized();
  return test::finish("policy_test");
}
