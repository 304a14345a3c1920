// The whole MetaMamba block (docs/ARCHITECTURE.md, "The MetaMamba block") as a device-generic composition of ATen ops
// and the dmm ops (selective_scan_*, modal_mix_*), which are called through the dispatcher so
// they land on the kernels of the tensors' device. csrc/cpu/block.cpp registers these functions
// for CPU; a backend that fuses only part of the block can call them for the rest.
//
// Signatures follow the schemas in csrc/ops.cpp exactly, so they can be passed to m.impl().
// Dtypes: everything is computed in h's dtype (parameters are cast to it); the scan parameters
// (A = -exp(A_log), D, dt_proj_bias) and the SSM state are float32, or float64 for float64 h.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <tuple>

namespace dmm::composite {

using OptTensor = std::optional<at::Tensor>;

// "conv" | "line" | "double-conv" | "double-line".
struct MixerSpec {
  std::string kind;  // "conv" or "line": the modal_mix kind of both mixers
  bool is_double;    // a second mixer on the x half of in_proj, and a residual around the SSM
};
MixerSpec parse_mixer(c10::string_view mixer);

struct BlockDims {
  int64_t D;   // d_model (last dim of h)
  int64_t E;   // inner width, A_log.size(0)
  int64_t N;   // SSM state size, A_log.size(1)
  int64_t R;   // dt rank, dt_proj_weight.size(1)
  int64_t W1;  // window of mixer1
  int64_t W2;  // window of mixer2 (0 for single mixers)
  int64_t M;   // n_modalities
};

// Checks every parameter (shape, dtype, device) against h, whose last dim is D; raises a
// TORCH_CHECK error naming the argument and the expected shape.
BlockDims check_block_params(
    const char* op, const at::Tensor& h, const at::Tensor& norm1_weight,
    const at::Tensor& norm1_bias, const at::Tensor& mixer1_weight, const OptTensor& mixer1_bias,
    const at::Tensor& norm2_weight, const at::Tensor& norm2_bias, const at::Tensor& in_proj_weight,
    const OptTensor& mixer2_weight, const OptTensor& mixer2_bias, const at::Tensor& x_proj_weight,
    const at::Tensor& dt_proj_weight, const at::Tensor& dt_proj_bias, const at::Tensor& A_log,
    const at::Tensor& D, const at::Tensor& out_proj_weight, const MixerSpec& spec,
    int64_t n_modalities);

// h: (B, L, D) -> (B, L, D).
at::Tensor metamamba_block_fwd(
    const at::Tensor& h, const at::Tensor& norm1_weight, const at::Tensor& norm1_bias,
    const at::Tensor& mixer1_weight, const OptTensor& mixer1_bias, const at::Tensor& norm2_weight,
    const at::Tensor& norm2_bias, const at::Tensor& in_proj_weight, const OptTensor& mixer2_weight,
    const OptTensor& mixer2_bias, const at::Tensor& x_proj_weight, const at::Tensor& dt_proj_weight,
    const at::Tensor& dt_proj_bias, const at::Tensor& A_log, const at::Tensor& D,
    const at::Tensor& out_proj_weight, c10::string_view mixer, int64_t n_modalities,
    bool residual_ssm, double eps);

// (dh, dnorm1_weight, dnorm1_bias, dmixer1_weight, dmixer1_bias, dnorm2_weight, dnorm2_bias,
//  din_proj_weight, dmixer2_weight, dmixer2_bias, dx_proj_weight, ddt_proj_weight,
//  ddt_proj_bias, dA_log, dD, dout_proj_weight); each in its input's dtype, numel 0 for None.
using BlockGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                              at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                              at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                              at::Tensor>;

// Recomputes the forward (nothing is saved between fwd and bwd), then chains the backward.
BlockGrads metamamba_block_bwd(
    const at::Tensor& dout, const at::Tensor& h, const at::Tensor& norm1_weight,
    const at::Tensor& norm1_bias, const at::Tensor& mixer1_weight, const OptTensor& mixer1_bias,
    const at::Tensor& norm2_weight, const at::Tensor& norm2_bias, const at::Tensor& in_proj_weight,
    const OptTensor& mixer2_weight, const OptTensor& mixer2_bias, const at::Tensor& x_proj_weight,
    const at::Tensor& dt_proj_weight, const at::Tensor& dt_proj_bias, const at::Tensor& A_log,
    const at::Tensor& D, const at::Tensor& out_proj_weight, c10::string_view mixer,
    int64_t n_modalities, bool residual_ssm, double eps);

// The checks of metamamba_step (parameters, caches, position) alone; raises like check_block_params.
BlockDims check_step(
    const at::Tensor& h_t, const at::Tensor& mixer1_cache, const OptTensor& mixer2_cache,
    const at::Tensor& ssm_state, const at::Tensor& norm1_weight, const at::Tensor& norm1_bias,
    const at::Tensor& mixer1_weight, const OptTensor& mixer1_bias, const at::Tensor& norm2_weight,
    const at::Tensor& norm2_bias, const at::Tensor& in_proj_weight, const OptTensor& mixer2_weight,
    const OptTensor& mixer2_bias, const at::Tensor& x_proj_weight, const at::Tensor& dt_proj_weight,
    const at::Tensor& dt_proj_bias, const at::Tensor& A_log, const at::Tensor& D,
    const at::Tensor& out_proj_weight, c10::string_view mixer, int64_t n_modalities,
    int64_t position);

// One token h_t (B, D) at `position`; updates mixer1_cache (B, W1-1, D), mixer2_cache
// (B, W2-1, E) (double mixers) and ssm_state (B, E, N) in place. Returns (B, D).
at::Tensor metamamba_step(
    const at::Tensor& h_t, const at::Tensor& mixer1_cache, const OptTensor& mixer2_cache,
    const at::Tensor& ssm_state, const at::Tensor& norm1_weight, const at::Tensor& norm1_bias,
    const at::Tensor& mixer1_weight, const OptTensor& mixer1_bias, const at::Tensor& norm2_weight,
    const at::Tensor& norm2_bias, const at::Tensor& in_proj_weight, const OptTensor& mixer2_weight,
    const OptTensor& mixer2_bias, const at::Tensor& x_proj_weight, const at::Tensor& dt_proj_weight,
    const at::Tensor& dt_proj_bias, const at::Tensor& A_log, const at::Tensor& D,
    const at::Tensor& out_proj_weight, c10::string_view mixer, int64_t n_modalities,
    bool residual_ssm, double eps, int64_t position);

}  // namespace dmm::composite
