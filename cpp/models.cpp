#include "models.h"

#include <torch/nn/functional/activation.h>
#include <torch/nn/functional/pooling.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>

#include "error.h"

namespace o3 {
namespace {

namespace F = torch::nn::functional;

// Hyperparameters of one model: defaults merged with the caller's overrides, unknown keys rejected.
class Config {
 public:
  Config(const ModelSpec& spec, std::map<std::string, double> defaults) : values_(std::move(defaults)) {
    for (const auto& [key, value] : spec.config) {
      if (!values_.count(key)) {
        std::string known;
        for (const auto& kv : values_) known += (known.empty() ? "" : ", ") + kv.first;
        throw Error("model '" + spec.name + "' has no hyperparameter '" + key + "' (it has: " + known + ")");
      }
      values_[key] = value;
    }
  }
  int64_t count(const std::string& key, int64_t min) const {
    const double v = values_.at(key);
    if (v != double(int64_t(v)) || v < double(min))
      throw Error("hyperparameter '" + key + "' must be an integer >= " + std::to_string(min));
    return int64_t(v);
  }
  double probability(const std::string& key) const {
    const double v = values_.at(key);
    if (!(v >= 0 && v < 1)) throw Error("hyperparameter '" + key + "' must be in [0, 1)");
    return v;
  }
  const std::map<std::string, double>& values() const { return values_; }

 private:
  std::map<std::string, double> values_;
};

// torch's own dropout draws from the global default generator; this one from the trainer's.
class Dropout : public torch::nn::Module {
 public:
  Dropout(double p, at::Generator gen) : p_(p), gen_(std::move(gen)) {}
  torch::Tensor forward(const torch::Tensor& x) {
    if (!is_training() || p_ == 0) return x;
    return x * torch::empty_like(x).bernoulli_(1 - p_, gen_).div_(1 - p_);
  }

 private:
  double p_;
  at::Generator gen_;
};

class Mlp final : public Model {
 public:
  Mlp(const Config& c, SampleShape in, int64_t classes, at::Generator gen)
      : hidden_(register_module("hidden", torch::nn::ModuleList())),
        dropout_(register_module("dropout", std::make_shared<Dropout>(c.probability("dropout"), gen))) {
    int64_t width = in.bytes();
    for (int64_t i = 0; i < c.count("layers", 1); ++i) {
      hidden_->push_back(torch::nn::Linear(width, c.count("hidden", 1)));
      width = c.count("hidden", 1);
    }
    out_ = register_module("out", torch::nn::Linear(width, classes));
  }
  torch::Tensor forward(torch::Tensor x) override {
    x = x.flatten(1);
    for (const auto& layer : *hidden_) x = dropout_->forward(torch::relu(layer->as<torch::nn::Linear>()->forward(x)));
    return out_->forward(x);
  }

 private:
  torch::nn::ModuleList hidden_;
  std::shared_ptr<Dropout> dropout_;
  torch::nn::Linear out_{nullptr};
};

// conv-pool, conv-pool, fc, fc: the classic small (Fashion-)MNIST network.
class Cnn final : public Model {
 public:
  Cnn(const Config& c, SampleShape in, int64_t classes, at::Generator gen) {
    const int64_t ch = c.count("channels", 1), hidden = c.count("hidden", 1);
    if (in.height % 4 || in.width % 4) throw Error("cnn needs image sides divisible by 4");
    conv1_ = register_module("conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(in.channels, ch, 3).padding(1)));
    conv2_ = register_module("conv2", torch::nn::Conv2d(torch::nn::Conv2dOptions(ch, 2 * ch, 3).padding(1)));
    fc1_ = register_module("fc1", torch::nn::Linear(2 * ch * (in.height / 4) * (in.width / 4), hidden));
    dropout_ = register_module("dropout", std::make_shared<Dropout>(c.probability("dropout"), gen));
    fc2_ = register_module("fc2", torch::nn::Linear(hidden, classes));
  }
  torch::Tensor forward(torch::Tensor x) override {
    x = F::max_pool2d(torch::relu(conv1_->forward(x)), F::MaxPool2dFuncOptions(2));
    x = F::max_pool2d(torch::relu(conv2_->forward(x)), F::MaxPool2dFuncOptions(2));
    x = dropout_->forward(torch::relu(fc1_->forward(x.flatten(1))));
    return fc2_->forward(x);
  }

 private:
  torch::nn::Conv2d conv1_{nullptr}, conv2_{nullptr};
  torch::nn::Linear fc1_{nullptr}, fc2_{nullptr};
  std::shared_ptr<Dropout> dropout_;
};

torch::nn::Conv2d conv3x3(int64_t in, int64_t out, int64_t stride) {
  return torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, 3).stride(stride).padding(1).bias(false));
}

class BasicBlock : public torch::nn::Module {
 public:
  BasicBlock(int64_t in, int64_t out, int64_t stride)
      : conv1_(register_module("conv1", conv3x3(in, out, stride))),
        bn1_(register_module("bn1", torch::nn::BatchNorm2d(out))),
        conv2_(register_module("conv2", conv3x3(out, out, 1))),
        bn2_(register_module("bn2", torch::nn::BatchNorm2d(out))) {
    if (stride != 1 || in != out) {
      shortcut_ = register_module("shortcut", torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, 1).stride(stride).bias(false)));
      shortcutBn_ = register_module("shortcut_bn", torch::nn::BatchNorm2d(out));
    }
  }
  torch::Tensor forward(const torch::Tensor& x) {
    torch::Tensor y = bn2_->forward(conv2_->forward(torch::relu(bn1_->forward(conv1_->forward(x)))));
    return torch::relu(y + (shortcut_ ? shortcutBn_->forward(shortcut_->forward(x)) : x));
  }

 private:
  torch::nn::Conv2d conv1_;
  torch::nn::BatchNorm2d bn1_;
  torch::nn::Conv2d conv2_;
  torch::nn::BatchNorm2d bn2_;
  torch::nn::Conv2d shortcut_{nullptr};  // a 1x1 projection where the shape changes
  torch::nn::BatchNorm2d shortcutBn_{nullptr};
};

// A CIFAR-style ResNet: a 3x3 stem, three stages of basic blocks (width doubling, stride 2
// between stages), global average pooling, one linear layer.
class ResNet final : public Model {
 public:
  ResNet(const Config& c, SampleShape in, int64_t classes) {
    const int64_t width = c.count("width", 1), blocks = c.count("blocks", 1);
    stem_ = register_module("stem", conv3x3(in.channels, width, 1));
    stemBn_ = register_module("stem_bn", torch::nn::BatchNorm2d(width));
    blocks_ = register_module("blocks", torch::nn::ModuleList());
    int64_t channels = width;
    for (int64_t stage = 0; stage < 3; ++stage)
      for (int64_t b = 0; b < blocks; ++b) {
        const int64_t out = width << stage;
        blocks_->push_back(std::make_shared<BasicBlock>(channels, out, stage > 0 && b == 0 ? 2 : 1));
        channels = out;
      }
    fc_ = register_module("fc", torch::nn::Linear(channels, classes));
  }
  torch::Tensor forward(torch::Tensor x) override {
    x = torch::relu(stemBn_->forward(stem_->forward(x)));
    for (const auto& block : *blocks_) x = block->as<BasicBlock>()->forward(x);
    return fc_->forward(x.mean({2, 3}));
  }

 private:
  torch::nn::Conv2d stem_{nullptr};
  torch::nn::BatchNorm2d stemBn_{nullptr};
  torch::nn::ModuleList blocks_{nullptr};
  torch::nn::Linear fc_{nullptr};
};

}  // namespace

BuiltModel makeModel(const ModelSpec& spec, SampleShape input, int64_t classes, at::Generator dropoutGenerator) {
  BuiltModel built;
  built.resolved.name = spec.name;
  if (spec.name == "mlp") {
    const Config c(spec, {{"hidden", 256}, {"layers", 2}, {"dropout", 0.2}});
    built.net = std::make_shared<Mlp>(c, input, classes, dropoutGenerator);
    built.resolved.config = c.values();
  } else if (spec.name == "cnn") {
    const Config c(spec, {{"channels", 32}, {"hidden", 128}, {"dropout", 0.25}});
    built.net = std::make_shared<Cnn>(c, input, classes, dropoutGenerator);
    built.resolved.config = c.values();
  } else if (spec.name == "resnet") {
    const Config c(spec, {{"width", 16}, {"blocks", 1}});
    built.net = std::make_shared<ResNet>(c, input, classes);
    built.resolved.config = c.values();
  } else {
    throw Error("unknown model '" + spec.name + "' (known: mlp, cnn, resnet)");
  }
  return built;
}

}  // namespace o3
