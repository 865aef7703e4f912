// A model named with its hyperparameters; torch-free so the binding can pass and report it.
#pragma once

#include <map>
#include <string>

namespace o3 {

struct ModelSpec {
  std::string name;                      // "mlp", "cnn" or "resnet"
  std::map<std::string, double> config;  // hyperparameters; missing ones take defaults
};

}  // namespace o3
