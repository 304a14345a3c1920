// The argument-check ops (csrc/ops.cpp, "_check_*"): the same validation as the C++ kernels,
// callable on any device by backends written outside C++ (dmm_kernels/triton).
#include <torch/library.h>

#include "block/composite.h"
#include "checks.h"

namespace dmm {
namespace {

using OptTensor = std::optional<at::Tensor>;

void check_scan(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                const at::Tensor& B, const at::Tensor& C, const OptTensor& D, const OptTensor& z,
                const OptTensor& delta_bias) {
  check_selective_scan(u, delta, A, B, C, D, z, delta_bias);
}

void check_mix(const at::Tensor& u, const at::Tensor& weight, const OptTensor& bias,
               c10::string_view kind, int64_t n_modalities, int64_t phase) {
  check_modal_mix(u, weight, bias, kind, n_modalities, phase);
}

void check_block(const at::Tensor& h, const at::Tensor& norm1_weight, const at::Tensor& norm1_bias,
                 const at::Tensor& mixer1_weight, const OptTensor& mixer1_bias,
                 const at::Tensor& norm2_weight, const at::Tensor& norm2_bias,
                 const at::Tensor& in_proj_weight, const OptTensor& mixer2_weight,
                 const OptTensor& mixer2_bias, const at::Tensor& x_proj_weight,
                 const at::Tensor& dt_proj_weight, const at::Tensor& dt_proj_bias,
                 const at::Tensor& A_log, const at::Tensor& D, const at::Tensor& out_proj_weight,
                 c10::string_view mixer, int64_t n_modalities) {
  TORCH_CHECK(h.dim() == 3, "metamamba_block: h must be (B, L, D); got ", shape_str(h.sizes()));
  composite::check_block_params("metamamba_block", h, norm1_weight, norm1_bias, mixer1_weight,
                                mixer1_bias, norm2_weight, norm2_bias, in_proj_weight,
                                mixer2_weight, mixer2_bias, x_proj_weight, dt_proj_weight,
                                dt_proj_bias, A_log, D, out_proj_weight,
                                composite::parse_mixer(mixer), n_modalities);
}

void check_step(const at::Tensor& h_t, const at::Tensor& mixer1_cache,
                const OptTensor& mixer2_cache, const at::Tensor& ssm_state,
                const at::Tensor& norm1_weight, const at::Tensor& norm1_bias,
                const at::Tensor& mixer1_weight, const OptTensor& mixer1_bias,
                const at::Tensor& norm2_weight, const at::Tensor& norm2_bias,
                const at::Tensor& in_proj_weight, const OptTensor& mixer2_weight,
                const OptTensor& mixer2_bias, const at::Tensor& x_proj_weight,
                const at::Tensor& dt_proj_weight, const at::Tensor& dt_proj_bias,
                const at::Tensor& A_log, const at::Tensor& D, const at::Tensor& out_proj_weight,
                c10::string_view mixer, int64_t n_modalities, int64_t position) {
  composite::check_step(h_t, mixer1_cache, mixer2_cache, ssm_state, norm1_weight, norm1_bias,
                        mixer1_weight, mixer1_bias, norm2_weight, norm2_bias, in_proj_weight,
                        mixer2_weight, mixer2_bias, x_proj_weight, dt_proj_weight, dt_proj_bias,
                        A_log, D, out_proj_weight, mixer, n_modalities, position);
}

}  // namespace
}  // namespace dmm

TORCH_LIBRARY_IMPL(dmm, CompositeExplicitAutograd, m) {
  m.impl("_check_selective_scan", &dmm::check_scan);
  m.impl("_check_modal_mix", &dmm::check_mix);
  m.impl("_check_block", &dmm::check_block);
  m.impl("_check_step", &dmm::check_step);
}
