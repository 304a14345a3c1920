// A policy exported by `dmm export` (an AOTInductor .pt2), run from C++ with no Python: one
// act() per control step. Everything it needs comes from the package's own metadata (the same
// fields as the JSON `dmm export` writes beside it): observation mean / std, reward scale, target
// return, action scale, and the caches (names, shapes, dtypes, reset values), which it owns.
#pragma once

#include <limits>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

namespace dmm_example {

class Policy {
 public:
  // package: the .pt2; target_return: the return to aim at (NaN: the run's, from the package).
  explicit Policy(const std::string& package, double target_return = std::numeric_limits<double>::quiet_NaN());

  // Start a new episode: caches to their reset values, return-to-go to the target, step 0.
  void reset();

  // observation (state_dim values) -> action (act_dim values, environment units). `reward` is
  // what the previous action earned; ignored on the first call after reset().
  std::vector<float> act(const std::vector<float>& observation, float reward);

  const std::string& mode() const { return mode_; }
  const std::string& ops() const { return ops_; }
  int state_dim() const { return state_dim_; }
  int act_dim() const { return act_dim_; }

 private:
  struct CacheSpec {
    std::string name;
    at::ScalarType dtype;
    double init;
    std::vector<int64_t> shape;  // batch (1) first
  };

  torch::inductor::AOTIModelPackageLoader loader_;
  std::string mode_, ops_;
  int state_dim_ = 0, act_dim_ = 0;
  std::vector<float> mean_, std_;
  float reward_scale_ = 1.f, action_scale_ = 1.f, rtg_ = 0.f;
  double target_return_;
  int64_t t_ = 0;
  std::vector<CacheSpec> specs_;
  std::vector<at::Tensor> caches_;  // in the order the package takes them, updated in place
};

}  // namespace dmm_example
