#include "policy.h"

#include <cmath>
#include <sstream>
#include <stdexcept>

namespace dmm_example {
namespace {

using Metadata = std::unordered_map<std::string, std::string>;

const std::string& field(const Metadata& meta, const std::string& key) {
  auto it = meta.find(key);
  if (it == meta.end())
    throw std::runtime_error("the package has no metadata '" + key +
                             "': was it written by `dmm export`?");
  return it->second;
}

std::vector<float> floats(const std::string& text) {
  std::istringstream in(text);
  std::vector<float> out;
  for (double v; in >> v;) out.push_back(static_cast<float>(v));
  return out;
}

at::ScalarType dtype_of(const std::string& name) {
  if (name == "float32") return at::kFloat;
  if (name == "float64") return at::kDouble;
  if (name == "int64") return at::kLong;
  throw std::runtime_error("cache dtype " + name + " is not handled by this runner");
}

}  // namespace

Policy::Policy(const std::string& package, double target_return)
    : loader_(package), target_return_(target_return) {
  const Metadata meta = loader_.get_metadata();
  if (field(meta, "dmm.format") != "1")
    throw std::runtime_error("export format " + field(meta, "dmm.format") + "; this runner reads 1");
  mode_ = field(meta, "dmm.mode");
  ops_ = field(meta, "dmm.ops");
  state_dim_ = std::stoi(field(meta, "dmm.state_dim"));
  act_dim_ = std::stoi(field(meta, "dmm.act_dim"));
  mean_ = floats(field(meta, "dmm.state_mean"));
  std_ = floats(field(meta, "dmm.state_std"));
  reward_scale_ = std::stof(field(meta, "dmm.reward_scale"));
  action_scale_ = std::stof(field(meta, "dmm.action_scale"));
  if (std::isnan(target_return_)) {
    const std::string& t = field(meta, "dmm.target_return");
    if (t.empty()) throw std::runtime_error("the run has no default target return: pass one");
    target_return_ = std::stod(t);
  }
  const int n = std::stoi(field(meta, "dmm.n_caches"));
  for (int i = 0; i < n; ++i) {  // "name dtype init dim1 dim2 ..."
    std::istringstream in(field(meta, "dmm.cache." + std::to_string(i)));
    CacheSpec spec;
    std::string dtype;
    in >> spec.name >> dtype >> spec.init;
    spec.dtype = dtype_of(dtype);
    spec.shape.push_back(1);
    for (int64_t d; in >> d;) spec.shape.push_back(d);
    caches_.push_back(at::empty(spec.shape, at::TensorOptions().dtype(spec.dtype)));
    specs_.push_back(std::move(spec));
  }
  reset();
}

void Policy::reset() {
  for (size_t i = 0; i < caches_.size(); ++i) caches_[i].fill_(specs_[i].init);
  // As dmm/exported.py: the target / scale in double, kept in float32 as the model sees it.
  rtg_ = static_cast<float>(target_return_ / reward_scale_);
  t_ = 0;
}

std::vector<float> Policy::act(const std::vector<float>& observation, float reward) {
  if (static_cast<int>(observation.size()) != state_dim_)
    throw std::invalid_argument("observation has " + std::to_string(observation.size()) +
                                " values; the policy takes " + std::to_string(state_dim_));
  c10::InferenceMode guard;
  if (t_ > 0) rtg_ = rtg_ - reward / reward_scale_;
  at::Tensor state = at::empty({1, state_dim_});                          // (1, S)
  float* s = state.data_ptr<float>();
  for (int i = 0; i < state_dim_; ++i) s[i] = (observation[i] - mean_[i]) / std_[i];
  std::vector<at::Tensor> inputs{state, at::full({1, 1}, rtg_),            // (1, 1)
                                 at::full({1}, t_, at::TensorOptions().dtype(at::kLong))};
  inputs.insert(inputs.end(), caches_.begin(), caches_.end());             // updated in place
  const at::Tensor action = loader_.run(inputs)[0].contiguous();          // (1, A) in [-1, 1]
  ++t_;
  std::vector<float> out(action.data_ptr<float>(), action.data_ptr<float>() + act_dim_);
  for (float& a : out) a *= action_scale_;
  return out;
}

}  // namespace dmm_example
