// Every schema of the dmm operator library. Kernels register per backend in
// csrc/cpu/*.cpp and csrc/cuda/*.cu; fakes and autograd live in dmm_kernels/ops.py.
//
// Conventions shared by all ops:
//   * float32 / bfloat16 / float16 activations, fp32 accumulation, outputs in the input dtype
//     unless stated; recurrent states are always float32.
//   * Optional inputs that are absent give empty (numel 0) gradients in the backward ops.
//
// Python-free: the same sources build the Python extension dmm_kernels._C (with the module stub
// csrc/python/module.cpp) and the C++ library libdmm_ops (CMakeLists.txt).
#include <torch/library.h>

#include "block/params.h"
#include "dmm_ops.h"

const char* dmm_ops_version() { return DMM_OPS_VERSION; }

TORCH_LIBRARY(dmm, m) {
  // ---- selective scan: mamba-ssm's selective_scan_fn layout and semantics -------------------
  // u, delta, z: (B, E, L); A: (E, N) fp32; B, C: (B, N, L) or (B, G, N, L) with E % G == 0;
  // D, delta_bias: (E,) fp32. out: (B, E, L) in u's dtype; last_state: (B, E, N) fp32.
  m.def(
      "selective_scan_fwd(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, "
      "Tensor? z, Tensor? delta_bias, bool delta_softplus) -> (Tensor out, Tensor last_state)");
  // Recomputes the scan; no (B, E, L, N) tensor is stored. dD / dz / ddelta_bias are empty when
  // the input was absent.
  m.def(
      "selective_scan_bwd(Tensor dout, Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, "
      "Tensor? D, Tensor? z, Tensor? delta_bias, bool delta_softplus) -> (Tensor du, "
      "Tensor ddelta, Tensor dA, Tensor dB, Tensor dC, Tensor dD, Tensor dz, Tensor ddelta_bias)");

  // ---- modal mixer: causal per-modality token mixing --------------------------------------------
  // u: (B, L, D); token i has modality (phase + i) % n_modalities; tokens before 0 are zero.
  // kind "conv": weight (M, W, D), bias (M, D) or None.   y_i = b_m + sum_k w_m[k] * u_{i-W+1+k}
  // kind "line": weight (M, D, W*D), bias (M, D) or None. y_i = b_m + M_m @ [u_{i-W+1}; ...; u_i]
  m.def(
      "modal_mix_fwd(Tensor u, Tensor weight, Tensor? bias, str kind, int n_modalities, "
      "int phase) -> Tensor");
  m.def(
      "modal_mix_bwd(Tensor dy, Tensor u, Tensor weight, Tensor? bias, str kind, "
      "int n_modalities, int phase) -> (Tensor du, Tensor dweight, Tensor dbias)");

  // ---- whole MetaMamba block (docs/ARCHITECTURE.md, "The MetaMamba block") --------------------------
  // The parameters (DMM_BLOCK_PARAMS, csrc/block/params.h) in this order: norm1_weight (D,),
  // norm1_bias (D,), mixer1_weight, mixer1_bias?, norm2_weight (D,), norm2_bias (D,),
  // in_proj_weight (2E, D), mixer2_weight?, mixer2_bias?, x_proj_weight (R + 2N, E),
  // dt_proj_weight (E, R), dt_proj_bias (E,), A_log (E, N), D (E,), out_proj_weight (D, E).
  // mixer: "conv" | "line" | "double-conv" | "double-line"; mixer2_* are None for single mixers.
  // h: (B, L, D) -> out (B, L, D) (+ h1 when residual_ssm or the mixer is a double one), and the
  // activations the backward needs (DMM_BLOCK_SAVED: h1, v, xz, xm, xs, x_dbl, y).
  m.def("metamamba_block_fwd(Tensor h, " DMM_BLOCK_PARAMS_SCHEMA
        "str mixer, int n_modalities, bool residual_ssm, float eps) -> " DMM_BLOCK_FWD_RETURNS);
  // From the forward's saved activations (it recomputes neither the scan nor a projection);
  // returns one gradient per tensor input before them: h, then the parameters (numel 0 for None).
  m.def("metamamba_block_bwd(Tensor dout, Tensor h, " DMM_BLOCK_PARAMS_SCHEMA DMM_BLOCK_SAVED_SCHEMA
        "str mixer, int n_modalities, bool residual_ssm, float eps) -> Tensor[]");
  // One token through the block, updating the cache in place:
  //   mixer1_cache (B, W-1, D) last W-1 LayerNorm_1 outputs, oldest first (input dtype);
  //   mixer2_cache (B, W-1, E) last W-1 in_proj x-halves (double mixers; else None);
  //   ssm_state (B, E, N) fp32. A = -exp(A_log) (E, N) fp32, computed once by the caller (not per
  //   token). position: index of h_t in the token sequence (its modality is
  //   position % n_modalities). h_t: (B, D) -> (B, D).
  m.def("metamamba_step(Tensor h_t, Tensor(a!) mixer1_cache, Tensor(b!)? mixer2_cache, "
        "Tensor(c!) ssm_state, " DMM_BLOCK_PARAMS_SCHEMA
        "Tensor A, str mixer, int n_modalities, bool residual_ssm, float eps, int position) -> "
        "Tensor");
  // One token through a stack of blocks, layer after layer (a model's recurrent step in one call):
  // every cache and parameter argument is a list with one entry per layer, in layer order
  // (mixer2_cache: [] for single mixers; the Tensor?[] lists hold None for an absent parameter).
  // All layers share mixer, n_modalities, residual_ssm, eps and position. h_t: (B, D) -> (B, D).
  m.def("metamamba_steps(Tensor h_t, Tensor(a!)[] mixer1_cache, Tensor(b!)[] mixer2_cache, "
        "Tensor(c!)[] ssm_state, " DMM_BLOCK_PARAM_LISTS_SCHEMA
        "Tensor[] A, str mixer, int n_modalities, bool residual_ssm, float eps, int position) -> "
        "Tensor");

  // ---- argument checks alone: no computation, any device (meta too). Backends written outside
  // C++ (dmm_kernels/triton) validate through these, so every backend raises the same errors.
  m.def(
      "_check_selective_scan(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, "
      "Tensor? z, Tensor? delta_bias) -> ()");
  m.def(
      "_check_modal_mix(Tensor u, Tensor weight, Tensor? bias, str kind, int n_modalities, "
      "int phase) -> ()");
  m.def("_check_block(Tensor h, " DMM_BLOCK_PARAMS_SCHEMA "str mixer, int n_modalities) -> ()");
  m.def("_check_step(Tensor h_t, Tensor mixer1_cache, Tensor? mixer2_cache, Tensor ssm_state, "
        DMM_BLOCK_PARAMS_SCHEMA "Tensor A, str mixer, int n_modalities, int position) -> ()");
}
