// Datasets the loader draws samples from: (Fashion-)MNIST idx files and ImageFolder trees.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace o3 {

struct DataSpec {
  enum class Kind { Mnist, ImageFolder };
  Kind kind = Kind::Mnist;
  std::string root;
  std::string split = "train";  // mnist: "train" or "test"
  int imageSize = 64;           // imagefolder: images are resized to imageSize x imageSize
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
};

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
