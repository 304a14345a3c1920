// Every schema of the dmm operator library. Kernels register per backend in
// csrc/cpu/*.cpp and csrc/cuda/*.cu; fakes and autograd live in dmm_kernels/ops.py.
//
// Conventions shared by all ops:
//   * float32 / bfloat16 / float16 activations, fp32 accumulation, outputs in the input dtype
//     unless stated; recurrent states are always float32.
//   * Optional inputs that are absent give empty (numel 0) gradients in the backward ops.
#include <Python.h>
#include <torch/library.h>

// `import dmm_kernels._C` loads this shared object, whose static initialisers register the ops.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

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

  // ---- whole MetaMamba block (docs/ARCHITECTURE.md, "The MetaMamba block") ------------------------
  // h: (B, L, D). mixer: "conv" | "line" | "double-conv" | "double-line". Returns out, plus h1 when
  // residual_ssm or the mixer is a double one. mixer2_* are None for single mixers.
  m.def(
      "metamamba_block_fwd(Tensor h, Tensor norm1_weight, Tensor norm1_bias, Tensor mixer1_weight, "
      "Tensor? mixer1_bias, Tensor norm2_weight, Tensor norm2_bias, Tensor in_proj_weight, "
      "Tensor? mixer2_weight, Tensor? mixer2_bias, Tensor x_proj_weight, Tensor dt_proj_weight, "
      "Tensor dt_proj_bias, Tensor A_log, Tensor D, Tensor out_proj_weight, str mixer, "
      "int n_modalities, bool residual_ssm, float eps) -> Tensor");
  // Recomputes the forward; returns one gradient per tensor input, in input order (empty for None).
  m.def(
      "metamamba_block_bwd(Tensor dout, Tensor h, Tensor norm1_weight, Tensor norm1_bias, "
      "Tensor mixer1_weight, Tensor? mixer1_bias, Tensor norm2_weight, Tensor norm2_bias, "
      "Tensor in_proj_weight, Tensor? mixer2_weight, Tensor? mixer2_bias, Tensor x_proj_weight, "
      "Tensor dt_proj_weight, Tensor dt_proj_bias, Tensor A_log, Tensor D, Tensor out_proj_weight, "
      "str mixer, int n_modalities, bool residual_ssm, float eps) -> (Tensor dh, "
      "Tensor dnorm1_weight, Tensor dnorm1_bias, Tensor dmixer1_weight, Tensor dmixer1_bias, "
      "Tensor dnorm2_weight, Tensor dnorm2_bias, Tensor din_proj_weight, Tensor dmixer2_weight, "
      "Tensor dmixer2_bias, Tensor dx_proj_weight, Tensor ddt_proj_weight, Tensor ddt_proj_bias, "
      "Tensor dA_log, Tensor dD, Tensor dout_proj_weight)");
  // One token through the block, updating the cache in place:
  //   mixer1_cache (B, W-1, D) last W-1 LayerNorm_1 outputs, oldest first (input dtype);
  //   mixer2_cache (B, W-1, E) last W-1 in_proj x-halves (double mixers; else None);
  //   ssm_state (B, E, N) fp32. position: index of h_t in the token sequence (its modality is
  //   position % n_modalities). h_t: (B, D) -> (B, D).
  m.def(
      "metamamba_step(Tensor h_t, Tensor(a!) mixer1_cache, Tensor(b!)? mixer2_cache, "
      "Tensor(c!) ssm_state, Tensor norm1_weight, Tensor norm1_bias, Tensor mixer1_weight, "
      "Tensor? mixer1_bias, Tensor norm2_weight, Tensor norm2_bias, Tensor in_proj_weight, "
      "Tensor? mixer2_weight, Tensor? mixer2_bias, Tensor x_proj_weight, Tensor dt_proj_weight, "
      "Tensor dt_proj_bias, Tensor A_log, Tensor D, Tensor out_proj_weight, str mixer, "
      "int n_modalities, bool residual_ssm, float eps, int position) -> Tensor");

  // ---- argument checks alone: no computation, any device (meta too). Backends written outside
  // C++ (dmm_kernels/triton) validate through these, so every backend raises the same errors.
  m.def(
      "_check_selective_scan(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, "
      "Tensor? z, Tensor? delta_bias) -> ()");
  m.def(
      "_check_modal_mix(Tensor u, Tensor weight, Tensor? bias, str kind, int n_modalities, "
      "int phase) -> ()");
  m.def(
      "_check_block(Tensor h, Tensor norm1_weight, Tensor norm1_bias, Tensor mixer1_weight, "
      "Tensor? mixer1_bias, Tensor norm2_weight, Tensor norm2_bias, Tensor in_proj_weight, "
      "Tensor? mixer2_weight, Tensor? mixer2_bias, Tensor x_proj_weight, Tensor dt_proj_weight, "
      "Tensor dt_proj_bias, Tensor A_log, Tensor D, Tensor out_proj_weight, str mixer, "
      "int n_modalities) -> ()");
  m.def(
      "_check_step(Tensor h_t, Tensor mixer1_cache, Tensor? mixer2_cache, Tensor ssm_state, "
      "Tensor norm1_weight, Tensor norm1_bias, Tensor mixer1_weight, Tensor? mixer1_bias, "
      "Tensor norm2_weight, Tensor norm2_bias, Tensor in_proj_weight, Tensor? mixer2_weight, "
      "Tensor? mixer2_bias, Tensor x_proj_weight, Tensor dt_proj_weight, Tensor dt_proj_bias, "
      "Tensor A_log, Tensor D, Tensor out_proj_weight, str mixer, int n_modalities, "
      "int position) -> ()");
}
