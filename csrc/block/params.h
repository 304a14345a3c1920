// The MetaMamba block's arguments as one bundle, for every backend of the block ops.
//
// The op schemas (csrc/ops.cpp) keep one argument per parameter, so that the dispatcher, autograd,
// fakes and torch.compile see each parameter as its own tensor with its own gradient (a
// `Tensor?[] params` list would make them one list input: one gradient list, no per-parameter
// aliasing or dtype checks in the schema). The list of parameters is written once, below
// (DMM_BLOCK_PARAMS): it generates the schema text, the BlockParams struct and the flat C++
// signatures the dispatcher calls, which convert to BlockParams at the registration boundary
// (`entry` templates at the end). Kernels and the composite take `const BlockParams&`.
//
// Shapes: B batch, L tokens, D d_model, E inner width, N state size, R dt rank, W window,
// M modalities, P = R + 2N.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace dmm {

using at::Tensor;
using OptTensor = std::optional<at::Tensor>;

// X(type, name) for each parameter in schema order; type Tensor or OptTensor ("Tensor?").
#define DMM_BLOCK_PARAMS(X)                                                                   \
  X(Tensor, norm1_weight) X(Tensor, norm1_bias) X(Tensor, mixer1_weight)                     \
  X(OptTensor, mixer1_bias) X(Tensor, norm2_weight) X(Tensor, norm2_bias)                    \
  X(Tensor, in_proj_weight) X(OptTensor, mixer2_weight) X(OptTensor, mixer2_bias)            \
  X(Tensor, x_proj_weight) X(Tensor, dt_proj_weight) X(Tensor, dt_proj_bias) X(Tensor, A_log) \
  X(Tensor, D) X(Tensor, out_proj_weight)

// X(name) for each activation metamamba_block_fwd saves for metamamba_block_bwd, in order; all in
// h's dtype: h1 = h + mixer_1(LN_1(h)), v = LN_2(h1) (B, L, D); xz = v @ W_in^T (B, L, 2E);
// xm = mixer_2(x) before the SiLU (B, L, E) for double mixers, numel 0 otherwise (it is xz's x
// half); xs = SiLU(xm) (B, L, E); x_dbl = xs @ W_x^T = [dt_low | B | C] (B, L, P); y = the gated
// scan output (B, L, E), out = y @ W_out^T (+ h1).
#define DMM_BLOCK_SAVED(X) X(h1) X(v) X(xz) X(xm) X(xs) X(x_dbl) X(y)

// ---- schema text ------------------------------------------------------------------------------
#define DMM_SCHEMA_TYPE_Tensor "Tensor "
#define DMM_SCHEMA_TYPE_OptTensor "Tensor? "
#define DMM_SCHEMA_PARAM_(T, name) DMM_SCHEMA_TYPE_##T #name ", "
#define DMM_SCHEMA_SAVED_IN_(name) "Tensor " #name ", "
#define DMM_SCHEMA_SAVED_OUT_(name) ", Tensor " #name
// "Tensor norm1_weight, ..., Tensor out_proj_weight, "
#define DMM_BLOCK_PARAMS_SCHEMA DMM_BLOCK_PARAMS(DMM_SCHEMA_PARAM_)
// "Tensor h1, ..., Tensor y, "
#define DMM_BLOCK_SAVED_SCHEMA DMM_BLOCK_SAVED(DMM_SCHEMA_SAVED_IN_)
// "(Tensor out, Tensor h1, ..., Tensor y)"
#define DMM_BLOCK_FWD_RETURNS "(Tensor out" DMM_BLOCK_SAVED(DMM_SCHEMA_SAVED_OUT_) ")"

// "Tensor[] norm1_weight, ..., Tensor?[] mixer1_bias, ...": one list per parameter, one entry per
// layer (metamamba_steps).
#define DMM_SCHEMA_LIST_TYPE_Tensor "Tensor[] "
#define DMM_SCHEMA_LIST_TYPE_OptTensor "Tensor?[] "
#define DMM_SCHEMA_PARAM_LIST_(T, name) DMM_SCHEMA_LIST_TYPE_##T #name ", "
#define DMM_BLOCK_PARAM_LISTS_SCHEMA DMM_BLOCK_PARAMS(DMM_SCHEMA_PARAM_LIST_)

// ---- the bundles ------------------------------------------------------------------------------
struct BlockParams {
#define DMM_FIELD_(T, name) T name;
  DMM_BLOCK_PARAMS(DMM_FIELD_)
#undef DMM_FIELD_
};

struct BlockSaved {
#define DMM_FIELD_(name) Tensor name;
  DMM_BLOCK_SAVED(DMM_FIELD_)
#undef DMM_FIELD_
};

// "conv" | "line" | "double-conv" | "double-line".
struct MixerSpec {
  std::string kind;  // "conv" or "line": the modal_mix kind of both mixers
  bool is_double;    // a second mixer on the x half of in_proj, and a residual around the SSM
};
MixerSpec parse_mixer(c10::string_view mixer);

// The four settings of every block op.
struct BlockConfig {
  MixerSpec mixer;
  int64_t n_modalities;
  bool residual_ssm;
  double eps;
  bool residual() const { return residual_ssm || mixer.is_double; }  // out += h1
};

// The step's caches, updated in place (see csrc/ops.cpp, metamamba_step).
struct StepCache {
  Tensor mixer1;     // (B, W1-1, D)
  OptTensor mixer2;  // (B, W2-1, E), double mixers
  Tensor ssm_state;  // (B, E, N) fp32
};

// ---- several layers (metamamba_steps): one list per parameter, entry l for layer l -----------------
// The C++ types of "Tensor[]" and "Tensor?[]" arguments.
#define DMM_LIST_TYPE_Tensor at::TensorList
#define DMM_LIST_TYPE_OptTensor c10::List<std::optional<at::Tensor>>

inline Tensor layer_entry(at::TensorList list, size_t l) { return list[l]; }
inline OptTensor layer_entry(const c10::List<std::optional<at::Tensor>>& list, size_t l) {
  return list.get(l);
}

struct BlockParamLists {
#define DMM_FIELD_(T, name) DMM_LIST_TYPE_##T name;
  DMM_BLOCK_PARAMS(DMM_FIELD_)
#undef DMM_FIELD_
  // Layer l's parameters (its entry of every list; the lengths are checked by the caller).
  BlockParams layer(size_t l) const {
#define DMM_ENTRY_(T, name) layer_entry(name, l),
    return BlockParams{DMM_BLOCK_PARAMS(DMM_ENTRY_)};
#undef DMM_ENTRY_
  }
};

// Every layer's caches, updated in place: mixer2 is empty for single mixers.
struct StepCacheLists {
  at::TensorList mixer1;     // (B, W1-1, D) per layer
  at::TensorList mixer2;     // (B, W2-1, E) per layer, double mixers
  at::TensorList ssm_state;  // (B, E, N) per layer
  StepCache layer(size_t l) const {
    return {mixer1[l], mixer2.empty() ? OptTensor() : OptTensor(mixer2[l]), ssm_state[l]};
  }
};

// (out, h1, v, xz, xm, xs, x_dbl, y)
#define DMM_COMMA_TENSOR_(name) , Tensor
using BlockFwdResult = std::tuple<Tensor DMM_BLOCK_SAVED(DMM_COMMA_TENSOR_)>;
#undef DMM_COMMA_TENSOR_

inline BlockFwdResult fwd_result(const Tensor& out, const BlockSaved& s) {
#define DMM_NAME_(name) , s.name
  return {out DMM_BLOCK_SAVED(DMM_NAME_)};
#undef DMM_NAME_
}

inline bool present(const OptTensor& t) { return t.has_value() && t->defined(); }

// ---- registration boundary: the schemas' flat signatures -> the bundles ---------------------------
using BlockFwdFn = BlockFwdResult (*)(const Tensor& h, const BlockParams&, const BlockConfig&);
// Gradients: h first, then one per parameter in schema order (numel 0 for an absent one).
using BlockBwdFn = std::vector<Tensor> (*)(const Tensor& dout, const Tensor& h,
                                           const BlockParams&, const BlockSaved&,
                                           const BlockConfig&);
// A = -exp(A_log) (E, N), precomputed by the caller once per parameter version.
using StepFn = Tensor (*)(const Tensor& h_t, const StepCache&, const BlockParams&, const Tensor& A,
                          const BlockConfig&, int64_t position);

// All layers, in order, for one token: A holds each layer's A = -exp(A_log).
using StepsFn = Tensor (*)(const Tensor& h_t, const StepCacheLists&, const BlockParamLists&,
                           at::TensorList A, const BlockConfig&, int64_t position);

#define DMM_PARAM_DECL_(T, name) const T& name,
// The kernels' argument types: "Tensor[]" by value (an ArrayRef), "Tensor?[]" by const reference.
#define DMM_LIST_ARG_Tensor at::TensorList
#define DMM_LIST_ARG_OptTensor const c10::List<std::optional<at::Tensor>>&
#define DMM_PARAM_LIST_DECL_(T, name) DMM_LIST_ARG_##T name,
#define DMM_PARAM_NAME_(T, name) name,
#define DMM_SAVED_DECL_(name) const Tensor& name,
#define DMM_SAVED_NAME_(name) name,

inline BlockConfig make_config(c10::string_view mixer, int64_t n_modalities, bool residual_ssm,
                               double eps) {
  return {parse_mixer(mixer), n_modalities, residual_ssm, eps};
}

template <BlockFwdFn fn>
BlockFwdResult fwd_entry(const Tensor& h, DMM_BLOCK_PARAMS(DMM_PARAM_DECL_) c10::string_view mixer,
                         int64_t n_modalities, bool residual_ssm, double eps) {
  return fn(h, BlockParams{DMM_BLOCK_PARAMS(DMM_PARAM_NAME_)},
            make_config(mixer, n_modalities, residual_ssm, eps));
}

template <BlockBwdFn fn>
std::vector<Tensor> bwd_entry(const Tensor& dout, const Tensor& h,
                              DMM_BLOCK_PARAMS(DMM_PARAM_DECL_) DMM_BLOCK_SAVED(DMM_SAVED_DECL_)
                                  c10::string_view mixer,
                              int64_t n_modalities, bool residual_ssm, double eps) {
  return fn(dout, h, BlockParams{DMM_BLOCK_PARAMS(DMM_PARAM_NAME_)},
            BlockSaved{DMM_BLOCK_SAVED(DMM_SAVED_NAME_)},
            make_config(mixer, n_modalities, residual_ssm, eps));
}

template <StepFn fn>
Tensor step_entry(const Tensor& h_t, const Tensor& mixer1_cache, const OptTensor& mixer2_cache,
                  const Tensor& ssm_state, DMM_BLOCK_PARAMS(DMM_PARAM_DECL_) const Tensor& A,
                  c10::string_view mixer, int64_t n_modalities, bool residual_ssm, double eps,
                  int64_t position) {
  return fn(h_t, StepCache{mixer1_cache, mixer2_cache, ssm_state},
            BlockParams{DMM_BLOCK_PARAMS(DMM_PARAM_NAME_)}, A,
            make_config(mixer, n_modalities, residual_ssm, eps), position);
}

template <StepsFn fn>
Tensor steps_entry(const Tensor& h_t, at::TensorList mixer1_cache, at::TensorList mixer2_cache,
                   at::TensorList ssm_state, DMM_BLOCK_PARAMS(DMM_PARAM_LIST_DECL_)
                       at::TensorList A,
                   c10::string_view mixer, int64_t n_modalities, bool residual_ssm, double eps,
                   int64_t position) {
  return fn(h_t, StepCacheLists{mixer1_cache, mixer2_cache, ssm_state},
            BlockParamLists{DMM_BLOCK_PARAMS(DMM_PARAM_NAME_)}, A,
            make_config(mixer, n_modalities, residual_ssm, eps), position);
}

}  // namespace dmm
