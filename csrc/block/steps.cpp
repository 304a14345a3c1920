// metamamba_steps: the list checks and the device-generic composite (see steps.h).
#include "block/steps.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <string>

namespace dmm::composite {
namespace {

constexpr const char* kOp = "metamamba_steps";

#define DMM_STEP_ARG_(T, name) const T&,
using StepSig = at::Tensor(const at::Tensor&, const at::Tensor&, const OptTensor&,
                           const at::Tensor&, DMM_BLOCK_PARAMS(DMM_STEP_ARG_) const at::Tensor&,
                           c10::string_view, int64_t, bool, double, int64_t);
#undef DMM_STEP_ARG_

const c10::TypedOperatorHandle<StepSig>& step_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("dmm::metamamba_step", "").typed<StepSig>();
  return op;
}

// The mixer string of metamamba_step for a parsed spec.
std::string mixer_name(const MixerSpec& spec) {
  return spec.is_double ? "double-" + spec.kind : spec.kind;
}

size_t list_size(at::TensorList list) { return list.size(); }
size_t list_size(const c10::List<std::optional<at::Tensor>>& list) { return list.size(); }

void check_length(const char* name, size_t got, size_t layers) {
  TORCH_CHECK(got == layers, kOp, ": ", name, " must have one entry per layer (", layers,
              ", the length of ssm_state); got ", got);
}

}  // namespace

size_t check_steps(const at::Tensor& h_t, const StepCacheLists& caches,
                   const BlockParamLists& params, at::TensorList A, const BlockConfig& cfg,
                   int64_t position, c10::SmallVectorImpl<BlockDims>* dims) {
  const size_t layers = caches.ssm_state.size();
  TORCH_CHECK(layers >= 1, kOp, ": ssm_state is empty; pass one cache per layer (at least one)");
  check_length("mixer1_cache", caches.mixer1.size(), layers);
  if (cfg.mixer.is_double) {
    check_length("mixer2_cache", caches.mixer2.size(), layers);
  } else {
    TORCH_CHECK(caches.mixer2.empty(), kOp, ": mixer2_cache must be [] for a single mixer; got ",
                caches.mixer2.size(), " entries");
  }
#define DMM_CHECK_LENGTH_(T, name) check_length(#name, list_size(params.name), layers);
  DMM_BLOCK_PARAMS(DMM_CHECK_LENGTH_)
#undef DMM_CHECK_LENGTH_
  check_length("A", A.size(), layers);
  for (size_t l = 0; l < layers; ++l) {
    try {
      const BlockDims d = check_step(h_t, caches.layer(l), params.layer(l), A[l], cfg.mixer,
                                     cfg.n_modalities, position, kOp);
      if (dims) dims->push_back(d);
    } catch (const c10::Error& e) {
      // "metamamba_steps: <what>" -> "metamamba_steps: layer l: <what>"
      std::string what = e.msg();
      const std::string prefix = std::string(kOp) + ": ";
      if (what.rfind(prefix, 0) == 0) what = what.substr(prefix.size());
      TORCH_CHECK(false, kOp, ": layer ", l, ": ", what);
    }
  }
  return layers;
}

at::Tensor steps(const at::Tensor& h_t, const StepCacheLists& caches,
                 const BlockParamLists& params, at::TensorList A, const BlockConfig& cfg,
                 int64_t position) {
  const size_t layers = check_steps(h_t, caches, params, A, cfg, position);
  const std::string mixer = mixer_name(cfg.mixer);
  at::Tensor h = h_t;
  for (size_t l = 0; l < layers; ++l) {
    const StepCache c = caches.layer(l);
    const BlockParams p = params.layer(l);
#define DMM_FIELD_(T, name) p.name,
    h = step_op().call(h, c.mixer1, c.mixer2, c.ssm_state, DMM_BLOCK_PARAMS(DMM_FIELD_) A[l],
                       mixer, cfg.n_modalities, cfg.residual_ssm, cfg.eps, position);
#undef DMM_FIELD_
  }
  return h;
}

}  // namespace dmm::composite

TORCH_LIBRARY_IMPL(dmm, CompositeExplicitAutograd, m) {
  m.impl("metamamba_steps", &dmm::steps_entry<&dmm::composite::steps>);
}
