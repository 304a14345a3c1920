// The whole MetaMamba block (docs/ARCHITECTURE.md, "The MetaMamba block") as a device-generic composition of ATen ops
// and the dmm ops (selective_scan_*, modal_mix_*), which are called through the dispatcher so
// they land on the kernels of the tensors' device. csrc/block/register.cpp registers these
// functions for every device without kernels of its own; csrc/cuda/block.cu calls them for what
// its fused kernels do not cover.
//
// Dtypes: everything is computed in h's dtype (parameters are cast to it); the scan parameters
// (A = -exp(A_log), D, dt_proj_bias) and the SSM state are float32, or float64 for float64 h.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "block/params.h"

namespace dmm::composite {

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
BlockDims check_block_params(const char* op, const at::Tensor& h, const BlockParams& p,
                             const MixerSpec& spec, int64_t n_modalities);

// The checks of metamamba_block_fwd alone (h (B, L, D) and the parameters).
BlockDims check_block(const at::Tensor& h, const BlockParams& p, const BlockConfig& cfg);

// The saved activations' shapes for h (B, L, D) (xm numel 0 for single mixers).
void check_saved(const char* op, const at::Tensor& h, const BlockSaved& s, const BlockDims& d,
                 const MixerSpec& spec);

// The parameters as the block computes with them: matrices in the compute dtype `cdt`, the scan
// parameters D and dt_proj_bias in the state dtype (no copy when they already are).
BlockParams cast_params(const BlockParams& p, at::ScalarType cdt);

// h: (B, L, D) -> (out (B, L, D), the activations of BlockSaved).
BlockFwdResult block_fwd(const at::Tensor& h, const BlockParams& p, const BlockConfig& cfg);

// ---- the backward, in parts (csrc/cuda/block.cu replaces some with fused kernels) -------------
// Arguments: g = dout (B, L, D) and h in the compute dtype, contiguous; p from cast_params; s, d
// checked. Each part stores the gradients of its parameters into `grads` (compute dtype).
BlockDims check_bwd(const at::Tensor& dout, const at::Tensor& h, const BlockParams& p,
                    const BlockSaved& s, const BlockConfig& cfg);
// All gradients zero (an empty batch or sequence), in metamamba_block_bwd's order.
std::vector<at::Tensor> zero_grads(const at::Tensor& h, const BlockParams& p);
// out_proj, the scan, dt_proj and x_proj: -> (dxs (B, L, E), dz (B, L, E)).
std::pair<at::Tensor, at::Tensor> bwd_out_scan(const at::Tensor& g, const BlockParams& p,
                                               const BlockSaved& s, const BlockDims& d,
                                               BlockParams& grads);
// SiLU and mixer_2: -> dxz (B, L, 2E) = [dx | dz].
at::Tensor bwd_silu_mix2(const at::Tensor& dxs, const at::Tensor& dz, const BlockParams& p,
                         const BlockSaved& s, const BlockDims& d, const MixerSpec& spec,
                         BlockParams& grads);
// in_proj: -> dv (B, L, D).
at::Tensor bwd_in_proj(const at::Tensor& dxz, const BlockParams& p, const BlockSaved& s,
                       BlockParams& grads);
// LN_2, the residual around the SSM, mixer_1, LN_1 (statistics recomputed): -> dh (B, L, D).
at::Tensor bwd_preproj(const at::Tensor& dv, const at::Tensor& g, const at::Tensor& h,
                       const BlockParams& p, const BlockSaved& s, const BlockDims& d,
                       const BlockConfig& cfg, BlockParams& grads);
// metamamba_block_bwd's result: dh, then each parameter's gradient in its dtype (numel 0 if absent).
std::vector<at::Tensor> grads_list(const at::Tensor& dh, const BlockParams& grads,
                                   const BlockParams& p, const at::Tensor& h);

// From the saved activations: nothing of the forward's scan or projections is recomputed (the
// LayerNorm statistics and the rank-R dt_proj GEMM are). Gradients: h, then one per parameter
// in schema order, each in its input's dtype, numel 0 for an absent parameter.
std::vector<at::Tensor> block_bwd(const at::Tensor& dout, const at::Tensor& h,
                                  const BlockParams& p, const BlockSaved& s,
                                  const BlockConfig& cfg);

// The checks of metamamba_step (parameters, caches, A, position) alone; errors start with `op`.
BlockDims check_step(const at::Tensor& h_t, const StepCache& cache, const BlockParams& p,
                     const at::Tensor& A, const MixerSpec& spec, int64_t n_modalities,
                     int64_t position, const char* op = "metamamba_step");

// One token h_t (B, D) at `position`; updates the caches in place. Returns (B, D).
at::Tensor step(const at::Tensor& h_t, const StepCache& cache, const BlockParams& p,
                const at::Tensor& A, const BlockConfig& cfg, int64_t position);

}  // namespace dmm::composite
