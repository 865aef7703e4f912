#include "webdataset.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <filesystem>
#include <iterator>

#include "error.h"
#include "image_decode.h"
#include "tar_reader.h"
#include "thread_pool.h"

namespace o3 {
namespace fs = std::filesystem;
namespace {

constexpr size_t kMaxShards = 1000000;
constexpr int kScanThreads = 4;  // shards scanned at once: overlaps the mount's per-stream latency
// What a member may declare before anything is allocated for it: a label is a few digits, and an
// image this large is no training sample (each loader thread holds one while decoding it).
constexpr int64_t kMaxLabelBytes = 64 << 10;
constexpr int64_t kMaxImageBytes = 256 << 20;

struct Sample {
  int64_t offset, size;  // the image member's data in its shard
  int32_t shard;
  int64_t label;
  std::string member;  // the image member's name, for errors
};

struct ShardListing {
  std::vector<Sample> samples;
  int64_t maxLabel = -1;
};

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  return s;
}

int64_t parseLabel(const std::vector<uint8_t>& data, const std::string& where) {
  std::string text(data.begin(), data.end());
  const auto notSpace = [](unsigned char c) { return !std::isspace(c); };
  text.erase(text.begin(), std::find_if(text.begin(), text.end(), notSpace));
  text.erase(std::find_if(text.rbegin(), text.rend(), notSpace).base(), text.end());
  if (text.empty() || text.size() > 9 || !std::all_of(text.begin(), text.end(), [](unsigned char c) { return std::isdigit(c); }))
    throw Error(where + ": the class index must be a non-negative integer, not '" + text.substr(0, 40) + "'");
  return std::stoll(text);
}

// Groups the members of one shard into samples, in stored order.
ShardListing scanShard(const std::string& path, int32_t shard) {
  ShardListing out;
  TarReader tar(path);
  TarMember m;
  std::string key;
  Sample cur{};
  bool hasImage = false, hasLabel = false;
  int64_t keyAt = 0;
  const auto finish = [&] {
    if (key.empty()) return;
    if (!hasImage || !hasLabel)
      throw fileError(path, "sample '" + key + "' at offset " + std::to_string(keyAt) + " has no " +
                                (hasImage ? "<key>.cls member" : "<key>.png or <key>.jpg member"));
    out.maxLabel = std::max(out.maxLabel, cur.label);
    out.samples.push_back(std::move(cur));
  };
  while (tar.next(m)) {
    const size_t slash = m.name.rfind('/');
    const size_t dot = m.name.find('.', slash == std::string::npos ? 0 : slash + 1);
    if (dot == std::string::npos) continue;  // no extension: not part of a sample
    const std::string memberKey = m.name.substr(0, dot), ext = lower(m.name.substr(dot + 1));
    if (memberKey != key) {
      finish();
      key = memberKey;
      cur = Sample{0, 0, shard, 0, {}};
      hasImage = hasLabel = false;
      keyAt = m.header;
    }
    const std::string where = path + ": member " + m.name + " at offset " + std::to_string(m.header);
    if (ext == "png" || ext == "jpg" || ext == "jpeg") {
      if (hasImage) throw Error(where + ": a second image for the sample '" + key + "'");
      checkMemberSize(path, m, kMaxImageBytes, "an image");
      cur.offset = m.offset;
      cur.size = m.size;
      cur.member = m.name;
      hasImage = true;
    } else if (ext == "cls") {
      cur.label = parseLabel(tar.read(kMaxLabelBytes, "a class label"), where);
      hasLabel = true;
    }
  }
  finish();
  return out;
}

class WebDataset final : public Dataset {
 public:
  WebDataset(std::vector<std::string> paths, const DataSpec& spec)
      : root_(spec.root), paths_(std::move(paths)), size_(spec.imageSize), channels_(spec.channels) {
    std::vector<ShardListing> listings(paths_.size());
    {
      ThreadPool pool(int(std::min<size_t>(kScanThreads, paths_.size())));
      std::vector<std::future<ShardListing>> scans;
      for (size_t i = 0; i < paths_.size(); ++i)
        scans.push_back(pool.submit([path = paths_[i], i] { return scanShard(path, int32_t(i)); }));
      for (size_t i = 0; i < scans.size(); ++i) listings[i] = scans[i].get();
    }
    int64_t maxLabel = -1;
    for (auto& l : listings) {
      shardSizes_.push_back(int64_t(l.samples.size()));
      maxLabel = std::max(maxLabel, l.maxLabel);
      std::move(l.samples.begin(), l.samples.end(), std::back_inserter(samples_));
    }
    if (samples_.empty()) throw fileError(spec.root, "no samples (<key>.png|jpg + <key>.cls members) in the shards");
    classes_ = maxLabel + 1;
    for (const auto& p : paths_) {
      fds_.push_back(::open(p.c_str(), O_RDONLY | O_CLOEXEC));
      if (fds_.back() < 0) throw openError(p);
    }
  }
  ~WebDataset() override {
    for (int fd : fds_)
      if (fd >= 0) ::close(fd);
  }
  int64_t size() const override { return int64_t(samples_.size()); }
  SampleShape shape() const override { return {channels_, size_, size_}; }
  int64_t numClasses() const override { return classes_; }
  std::vector<int64_t> shardSizes() const override { return shardSizes_; }
  int64_t fileOf(int64_t i) const override { return samples_[size_t(i)].shard; }
  std::string filePath(int64_t file) const override { return pathBelow(root_, paths_[size_t(file)]); }
  int64_t load(int64_t i, uint8_t* out) const override {
    const Sample& s = samples_[size_t(i)];
    const std::string& path = paths_[size_t(s.shard)];
    std::vector<uint8_t> bytes(static_cast<size_t>(s.size));
    for (int64_t done = 0; done < s.size;) {
      const ssize_t got = ::pread(fds_[size_t(s.shard)], bytes.data() + done, size_t(s.size - done), s.offset + done);
      if (got < 0 && errno == EINTR) continue;
      if (got < 0) throw fileError(path, "read error at offset " + std::to_string(s.offset + done) + ": " + std::strerror(errno));
      if (got == 0)
        throw fileError(path,
                        "truncated tar: the file ends at offset " + std::to_string(s.offset + done) + " inside " + s.member);
      done += got;
    }
    decodeSample(bytes, path + ": member " + s.member + " at offset " + std::to_string(s.offset), int(channels_), int(size_),
                 out);
    return s.label;
  }

 private:
  std::string root_;
  std::vector<std::string> paths_;
  std::vector<int> fds_;
  std::vector<Sample> samples_;
  std::vector<int64_t> shardSizes_;
  int64_t classes_ = 0, size_, channels_;
};

}  // namespace

std::vector<std::string> webDatasetShards(const std::string& root, const std::string& pattern) {
  std::error_code ec;
  if (!fs::is_directory(root, ec)) throw fileError(root, "not a directory");
  std::vector<std::string> paths;
  if (pattern.empty()) {
    for (const auto& e : fs::directory_iterator(root, fs::directory_options::follow_directory_symlink))
      if (e.is_regular_file() && lower(e.path().extension().string()) == ".tar") paths.push_back(e.path().string());
    std::sort(paths.begin(), paths.end());
    if (paths.empty()) throw fileError(root, "no *.tar shards");
    return paths;
  }
  for (const auto& name : expandShardPattern(pattern)) paths.push_back((fs::path(root) / name).string());
  return paths;
}

std::vector<std::string> expandShardPattern(const std::string& pattern) {
  const size_t open = pattern.find('{');
  if (open == std::string::npos) return {pattern};
  const size_t close = pattern.find('}', open);
  if (close == std::string::npos) throw Error("shard pattern '" + pattern + "' has a '{' without its '}'");
  const std::string head = pattern.substr(0, open), body = pattern.substr(open + 1, close - open - 1);
  const std::vector<std::string> tails = expandShardPattern(pattern.substr(close + 1));
  std::vector<std::string> alternatives;
  const size_t dots = body.find("..");
  if (dots != std::string::npos) {
    const std::string a = body.substr(0, dots), b = body.substr(dots + 2);
    const auto digits = [](const std::string& s) {
      return !s.empty() && s.size() < 12 && std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isdigit(c); });
    };
    if (!digits(a) || !digits(b) || std::stoll(a) > std::stoll(b))
      throw Error("shard pattern '" + pattern + "': a range must be {first..last} with first <= last, e.g. {000000..000127}");
    if (std::stoll(b) - std::stoll(a) >= int64_t(kMaxShards))
      throw Error("shard pattern '" + pattern + "' names too many shards");
    for (int64_t i = std::stoll(a); i <= std::stoll(b); ++i) {
      std::string n = std::to_string(i);
      alternatives.push_back(std::string(a.size() > n.size() ? a.size() - n.size() : 0, '0') + n);
    }
  } else {
    for (size_t start = 0;;) {
      const size_t comma = body.find(',', start);
      alternatives.push_back(body.substr(start, comma - start));
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
  }
  if (alternatives.size() * tails.size() > kMaxShards) throw Error("shard pattern '" + pattern + "' names too many shards");
  std::vector<std::string> out;
  for (const auto& alt : alternatives)
    for (const auto& tail : tails) out.push_back(head + alt + tail);
  return out;
}

std::shared_ptr<const Dataset> openWebDataset(const DataSpec& spec) {
  checkImageSpec(spec);
  return std::make_shared<WebDataset>(webDatasetShards(spec.root, spec.shards), spec);
}

}  // namespace o3
