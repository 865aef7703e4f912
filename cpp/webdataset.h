// WebDataset tar shards as a dataset: a sample is a run of consecutive members sharing a key
// (`<key>.png|jpg|jpeg` and `<key>.cls`, the class index as text); other members are ignored.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "dataset.h"

namespace o3 {

// Expands brace patterns as the WebDataset convention writes shard lists: numeric ranges
// ("{000000..000127}", zero-padded to the first bound's width) and lists ("{a,b}").
std::vector<std::string> expandShardPattern(const std::string& pattern);

// The shard files a WebDataset in `root` reads, in order: those `pattern` names, or with an empty
// pattern every `*.tar` in `root`, sorted.
std::vector<std::string> webDatasetShards(const std::string& root, const std::string& pattern);

// Reads every shard once, sequentially, for its member headers and `.cls` labels (image data is
// skipped over, not read), then decodes images from the shards on the loader's threads. A
// truncated or corrupt shard throws a fileError naming the shard and the offset.
std::shared_ptr<const Dataset> openWebDataset(const DataSpec& spec);

}  // namespace o3
