#include "dataset.h"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <filesystem>

#include "error.h"
#include "idx_file.h"
#include "image_decode.h"
#include "webdataset.h"

namespace o3 {
namespace fs = std::filesystem;
namespace {

constexpr int64_t kMnistClasses = 10;

class MnistDataset final : public Dataset {
 public:
  MnistDataset(const std::string& imagesPath, const std::string& labelsPath)
      : images_(readIdxFile(imagesPath)), labels_(readIdxFile(labelsPath)) {
    if (images_.dims.size() != 3) throw fileError(imagesPath, "expected a 3-dimensional idx array of images");
    if (labels_.dims.size() != 1) throw fileError(labelsPath, "expected a 1-dimensional idx array of labels");
    if (labels_.dims[0] != images_.dims[0])
      throw fileError(labelsPath, std::to_string(labels_.dims[0]) + " labels for " + std::to_string(images_.dims[0]) +
                                      " images in " + imagesPath);
    for (uint8_t l : labels_.data)
      if (l >= kMnistClasses) throw fileError(labelsPath, "label " + std::to_string(l) + " out of range 0-9");
  }
  int64_t size() const override { return images_.dims[0]; }
  SampleShape shape() const override { return {1, images_.dims[1], images_.dims[2]}; }
  int64_t numClasses() const override { return kMnistClasses; }
  int64_t load(int64_t i, uint8_t* out) const override {
    const int64_t n = shape().bytes();
    std::memcpy(out, images_.data.data() + i * n, size_t(n));
    return labels_.data[size_t(i)];
  }

 private:
  IdxArray images_, labels_;
};

class ImageFolderDataset final : public Dataset {
 public:
  ImageFolderDataset(ImageFolderListing listing, int imageSize, int channels)
      : listing_(std::move(listing)), size_(imageSize), channels_(channels) {}
  int64_t size() const override { return int64_t(listing_.samples.size()); }
  SampleShape shape() const override { return {channels_, size_, size_}; }
  int64_t numClasses() const override { return int64_t(listing_.classes.size()); }
  std::vector<std::string> classNames() const override { return listing_.classes; }
  int64_t load(int64_t i, uint8_t* out) const override {
    const ImageFolderEntry& e = listing_.samples[size_t(i)];
    decodeSample(readWholeFile(e.path), e.path, int(channels_), int(size_), out);
    return e.label;
  }

 private:
  ImageFolderListing listing_;
  int64_t size_, channels_;
};

bool isImageName(const fs::path& p) {
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  return ext == ".jpg" || ext == ".jpeg" || ext == ".png";
}

// The idx files may be gzipped or not; prefer the .gz the Debian package ships.
std::string findIdxFile(const std::string& root, const std::string& base) {
  for (const char* suffix : {".gz", ""}) {
    const std::string p = (fs::path(root) / (base + suffix)).string();
    if (fs::exists(p)) return p;
  }
  throw fileError((fs::path(root) / base).string() + "[.gz]", "not found");
}

}  // namespace

ImageFolderListing listImageFolder(const std::string& root) {
  std::error_code ec;
  if (!fs::is_directory(root, ec)) throw fileError(root, "not a directory");
  ImageFolderListing out;
  for (const auto& entry : fs::directory_iterator(root, fs::directory_options::follow_directory_symlink))
    if (entry.is_directory()) out.classes.push_back(entry.path().filename().string());
  std::sort(out.classes.begin(), out.classes.end());
  for (size_t label = 0; label < out.classes.size(); ++label) {
    std::vector<std::string> files;
    const fs::path dir = fs::path(root) / out.classes[label];
    for (const auto& entry : fs::recursive_directory_iterator(dir, fs::directory_options::follow_directory_symlink))
      if (entry.is_regular_file() && isImageName(entry.path())) files.push_back(entry.path().string());
    std::sort(files.begin(), files.end());
    for (auto& f : files) out.samples.push_back({std::move(f), int64_t(label)});
  }
  if (out.samples.empty()) throw fileError(root, "no JPEG or PNG images in class directories");
  return out;
}

void checkImageSpec(const DataSpec& spec) {
  if (spec.imageSize < 8 || spec.imageSize > 1024) throw Error("imageSize must be between 8 and 1024");
  if (spec.channels != 1 && spec.channels != 3) throw Error("channels must be 1 or 3");
}

std::shared_ptr<const Dataset> openDataset(const DataSpec& spec) {
  if (spec.kind == DataSpec::Kind::ImageFolder) {
    checkImageSpec(spec);
    return std::make_shared<ImageFolderDataset>(listImageFolder(spec.root), spec.imageSize, spec.channels);
  }
  if (spec.kind == DataSpec::Kind::WebDataset) return openWebDataset(spec);
  if (spec.split != "train" && spec.split != "test") throw Error("mnist split must be 'train' or 'test'");
  const std::string prefix = spec.split == "train" ? "train" : "t10k";
  return std::make_shared<MnistDataset>(findIdxFile(spec.root, prefix + "-images-idx3-ubyte"),
                                        findIdxFile(spec.root, prefix + "-labels-idx1-ubyte"));
}

}  // namespace o3
