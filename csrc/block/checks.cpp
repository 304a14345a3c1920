// The argument-check ops (csrc/ops.cpp, "_check_*"): the same validation as the C++ kernels,
// callable on any device by backends written outside C++ (dmm_kernels/triton).
#include <torch/library.h>

#include "block/composite.h"
#include "checks.h"

namespace dmm {
namespace {

void check_scan(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                const at::Tensor& B, const at::Tensor& C, const OptTensor& D, const OptTensor& z,
                const OptTensor& delta_bias) {
  check_selective_scan(u, delta, A, B, C, D, z, delta_bias);
}

void check_mix(const at::Tensor& u, const at::Tensor& weight, const OptTensor& bias,
               c10::string_view kind, int64_t n_modalities, int64_t phase) {
  check_modal_mix(u, weight, bias, kind, n_modalities, phase);
}

void check_block(const at::Tensor& h, DMM_BLOCK_PARAMS(DMM_PARAM_DECL_) c10::string_view mixer,
                 int64_t n_modalities) {
  composite::check_block(h, BlockParams{DMM_BLOCK_PARAMS(DMM_PARAM_NAME_)},
                         BlockConfig{parse_mixer(mixer), n_modalities, false, 0.0});
}

void check_step(const at::Tensor& h_t, const at::Tensor& mixer1_cache,
                const OptTensor& mixer2_cache, const at::Tensor& ssm_state,
                DMM_BLOCK_PARAMS(DMM_PARAM_DECL_) const at::Tensor& A, c10::string_view mixer,
                int64_t n_modalities, int64_t position) {
  composite::check_step(h_t, StepCache{mixer1_cache, mixer2_cache, ssm_state},
                        BlockParams{DMM_BLOCK_PARAMS(DMM_PARAM_NAME_)}, A, parse_mixer(mixer),
                        n_modalities, position);
}

}  // namespace
}  // namespace dmm

TORCH_LIBRARY_IMPL(dmm, CompositeExplicitAutograd, m) {
  m.impl("_check_selective_scan", &dmm::check_scan);
  m.impl("_check_modal_mix", &dmm::check_mix);
  m.impl("_check_block", &dmm::check_block);
  m.impl("_check_step", &dmm::check_step);
}
