// The trainable models: an MLP and a CNN for small grayscale images, a small ResNet for RGB.
#pragma once

#include <torch/nn/module.h>

#include <memory>

#include "dataset.h"
#include "model_spec.h"

namespace o3 {

class Model : public torch::nn::Module {
 public:
  virtual torch::Tensor forward(torch::Tensor x) = 0;  // NCHW float -> N x classes logits
};

struct BuiltModel {
  std::shared_ptr<Model> net;
  ModelSpec resolved;  // the spec with every default filled in, for checkpoint metadata
};

// Builds the model on the CPU with torch's default generator, which the caller seeds. Dropout
// draws from `dropoutGenerator` so that a trainer's randomness is its own and can be saved.
// Throws o3::Error for an unknown name or hyperparameter, or an input it cannot take.
BuiltModel makeModel(const ModelSpec& spec, SampleShape input, int64_t classes, at::Generator dropoutGenerator);

}  // namespace o3
