// Datasets the loader draws samples from: (Fashion-)MNIST idx files, ImageFolder trees and
// WebDataset tar shards.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace o3 {

struct DataSpec {
  enum class Kind { Mnist, ImageFolder, WebDataset };
  Kind kind = Kind::Mnist;
  std::string root;
  std::string split = "train";  // mnist: "train" or "test"
  int imageSize = 64;           // imagefolder, webdataset: images are resized to imageSize x imageSize
  int channels = 3;             // imagefolder, webdataset: 3 (RGB) or 1 (gray, as idx files hold)
  std::string shards;           // webdataset: shard names under root, e.g. "train-{000000..000127}.tar"; empty: every *.tar
};

struct SampleShape {
  int64_t channels, height, width;
  int64_t bytes() const { return channels * height * width; }
};

class Dataset {
 public:
  virtual ~Dataset() = default;
  virtual int64_t size() const = 0;
  virtual SampleShape shape() const = 0;
  virtual int64_t numClasses() const = 0;
  // Writes sample i as CHW uint8 (shape().bytes() bytes) to `out` and returns its label.
  // Safe to call from several threads at once. Throws fileError for unreadable files.
  virtual int64_t load(int64_t i, uint8_t* out) const = 0;
  // Sample counts of the consecutive runs of samples stored together (tar shards, in order), which
  // the sampler keeps together so that reads stay sequential; empty when samples are independent.
  virtual std::vector<int64_t> shardSizes() const { return {}; }
  // The name of each label where the data names its classes (an ImageFolder's sorted class
  // directories); empty where labels are bare numbers (idx files, shards).
  virtual std::vector<std::string> classNames() const { return {}; }
};

// Image size and channel checks shared by the image datasets.
void checkImageSpec(const DataSpec& spec);

struct ImageFolderEntry {
  std::string path;
  int64_t label;
};

struct ImageFolderListing {
  std::vector<std::string> classes;  // sorted directory names; a label is an index into this
  std::vector<ImageFolderEntry> samples;
};

// Lists root/<class>/**/*.{jpg,jpeg,png} (extensions case-insensitive) in the order torchvision's
// ImageFolder uses: classes sorted by name, files sorted by path within each class.
ImageFolderListing listImageFolder(const std::string& root);

// Opens the dataset; mnist reads its idx files eagerly (errors surface here), imagefolder lists
// files now and decodes them lazily on the loader's threads.
std::shared_ptr<const Dataset> openDataset(const DataSpec& spec);

}  // namespace o3
