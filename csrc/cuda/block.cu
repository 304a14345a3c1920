// CUDA registration of the whole-block ops (docs/ARCHITECTURE.md, "The MetaMamba block" and "Ops").
//
// metamamba_block_fwd, fused path (6 launches for "conv" / "double-conv"):
//   1 preproj_conv_kernel  LN_1 + mixer_1 + residual + LN_2            -> h1, v   (B, L, D)
//   2 cuBLAS               xz = v @ W_in^T                              (B, L, 2E)
//   3 silu_mix2_kernel     xs = SiLU([mixer_2](x))  (+ xm, double-conv) (B, L, E)
//   4 cuBLAS               x_dbl = xs @ W_x^T = [dt_low | B | C]        (B, L, R + 2N)
//   5 block_scan_fwd       dt_proj + softplus + scan + D skip + SiLU(z) (B, L, E), read in
//                          place (selective_scan.cu, scan_launch.h)
//   6 cuBLAS               out = y @ W_out^T (+ h1 through addmm's beta)
//   "line" mixers keep the mixer a GEMM (the dmm::modal_mix_fwd op) between two LayerNorm
//   kernels: 8 launches (+1 modal_mix and no mixer_2 work in silu_mix2 for "double-line").
//   Every saved activation (csrc/block/params.h) is one of these kernels' outputs: saving costs
//   no launch. Parameter casts to h's dtype add launches only when a parameter has another dtype.
// metamamba_block_bwd, from the saved activations (conv: 6 GEMMs + 4 kernels + 5 zero fills):
//   out_proj's two GEMMs; block_scan_bwd, one launch with dt_proj folded in (dxs, dz into in_proj's
//   gradient, d x_dbl and the dt_proj / A_log / D / dt_bias sums into zeroed buffers); x_proj's
//   two GEMMs; the SiLU backward (block_bwd_kernels.cuh); in_proj's two GEMMs; for conv mixers
//   LN_2 + residual + mixer_1 + LN_1 backward fused (+ its partial-sum reduction), else the
//   composite's (csrc/block/composite.cpp).
// metamamba_step: stages of rows spread over CTAs (csrc/cuda/step_kernels.cuh): 4 launches for
//   "conv", +1 for "line" (mixer_1 rows), +1 for double mixers (mixer_2 rows); no host sync and
//   one allocation (the output, which carries the stages' workspace), so the steps of all layers
//   can be captured in one CUDA graph.
// Everything outside the fused kernels' limits goes to the composite (see `fused_fwd_plan` and
// `step_plan`). DMM_CUDA_BLOCK_UNFUSED=1 sends every call to the composite (A/B benchmarks).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "block/composite.h"
#include "checks.h"
#include "cuda/common.cuh"
#include "cuda/scan_launch.h"
#include "cuda/block_bwd_kernels.cuh"
#include "cuda/block_kernels.cuh"
#include "cuda/step_kernels.cuh"

namespace dmm {
namespace cuda {
namespace block {
namespace {

using at::Tensor;
namespace comp = dmm::composite;

constexpr int kPreprojThreads = 256;  // 8 warps: one per token of the tile
constexpr int kTokensPerCta = 8;      // preproj tile; the W-1 halo rows are recomputed
constexpr int kLnThreads = 256;       // 8 rows per CTA
constexpr int kEltThreads = 256;

bool force_unfused() {
  static const bool value = [] {
    const char* e = std::getenv("DMM_CUDA_BLOCK_UNFUSED");
    return e != nullptr && *e != '\0' && std::string(e) != "0";
  }();
  return value;
}

Tensor as(const Tensor& t, at::ScalarType dt) { return t.scalar_type() == dt ? t : t.to(dt); }
OptTensor as(const OptTensor& t, at::ScalarType dt) {
  return present(t) ? OptTensor(as(*t, dt)) : std::nullopt;
}
// Dtypes the kernels' InPtr / OutPtr tags can carry.
bool fusable_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}
bool supported(const OptTensor& t) { return !present(t) || fusable_dtype(t->scalar_type()); }
bool all_supported(const BlockParams& p) {
#define DMM_SUPPORTED_(T, name) supported(p.name) &&
  return DMM_BLOCK_PARAMS(DMM_SUPPORTED_) true;
#undef DMM_SUPPORTED_
}
// The parameters as contiguous tensors (views, no copies, for ordinary parameters): the kernels
// read them by flat index.
BlockParams contiguous(const BlockParams& p) {
  BlockParams c = p;
#define DMM_CONTIG_Tensor_(name) c.name = c.name.contiguous();
#define DMM_CONTIG_OptTensor_(name) \
  if (present(c.name)) c.name = c.name->contiguous();
#define DMM_CONTIG_DISPATCH_(T, name) DMM_CONTIG_##T##_(name)
  DMM_BLOCK_PARAMS(DMM_CONTIG_DISPATCH_)
#undef DMM_CONTIG_Tensor_
#undef DMM_CONTIG_OptTensor_
#undef DMM_CONTIG_DISPATCH_
  return c;
}

using MixFwdSig = Tensor(const Tensor&, const Tensor&, const OptTensor&, c10::string_view,
                         int64_t, int64_t);
const c10::TypedOperatorHandle<MixFwdSig>& mix_fwd_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("dmm::modal_mix_fwd", "").typed<MixFwdSig>();
  return op;
}

size_t smem_optin() { return device_properties().sharedMemPerBlockOptin; }

// ---- forward -----------------------------------------------------------------------------------
struct FwdPlan {
  bool fused = false;
  int tokens_per_cta = 0;  // preproj tile (conv)
};

// Where the fused forward applies: N <= kScanMaxStates, a dt rank R >= 1, the preproj tile within
// the default 48 KB of shared memory, and B within gridDim.y.
FwdPlan fused_fwd_plan(const Tensor& h, const MixerSpec& spec, const comp::BlockDims& d,
                       size_t acc_size) {
  FwdPlan p;
  const int64_t B = h.size(0), L = h.size(1);
  // Outside these, the composite runs (and rejects a window the backward would reject too).
  if (B > 65535 || d.N > kScanMaxStates || d.E == 0 || d.W1 > kMaxModalMixWindow ||
      (spec.is_double && d.W2 > kMaxModalMixWindow))
    return p;
  if (spec.kind == "conv") {
    int tl = int(std::min<int64_t>(kTokensPerCta, L));
    auto bytes = [&](int t) { return acc_size * size_t(2 * t + d.W1 - 1) * size_t(d.D); };
    while (tl > 1 && bytes(tl) > kDefaultSmem) --tl;
    if (bytes(tl) > kDefaultSmem) return p;
    p.tokens_per_cta = tl;
  }
  if (d.R == 0) return p;  // the scan's dt_proj needs a rank
  p.fused = true;
  return p;
}

// LayerNorm of (x [+ add]) over rows of width D; `sum_out` (optional) receives x + add.
template <typename acc_t>
void launch_ln_rows(const Tensor& x, const Tensor& add, const Tensor& w, const Tensor& bias,
                    const Tensor& sum_out, const Tensor& y, double eps) {
  const int D = int(x.size(-1));
  const int64_t rows = x.numel() / D;
  const int rows_per_cta = kLnThreads / 32;
  DMM_LAUNCH(elementwise_blocks(rows, rows_per_cta), kLnThreads, 0, current_stream(),
             ln_rows_kernel<acc_t>)(
      in_ptr(x, "x"), in_ptr(add, "add"), in_ptr(w, "norm_weight"), in_ptr(bias, "norm_bias"),
      sum_out.defined() ? out_ptr(sum_out, "sum") : OutPtr{}, out_ptr(y, "y"), rows, D,
      static_cast<acc_t>(eps));
  DMM_KERNEL_LAUNCH_CHECK();
}

// h (B, L, D) contiguous, p contiguous.
template <typename acc_t>
BlockFwdResult fused_fwd(const Tensor& h, const BlockParams& p, const MixerSpec& spec,
                         const comp::BlockDims& d, bool residual, double eps,
                         const FwdPlan& plan) {
  const auto cdt = h.scalar_type();
  const auto stream = current_stream();
  const int64_t B = h.size(0), L = h.size(1);
  const int Dm = int(d.D), E = int(d.E), M = int(d.M);
  const bool line = spec.kind == "line";
  BlockSaved s;

  // 1. h1 = h + mixer_1(LN_1(h)),  v = LN_2(h1).
  s.h1 = empty_output_like(h);  // (B, L, D)
  s.v = empty_output_like(h);   // (B, L, D)
  if (!line) {
    const int tl = plan.tokens_per_cta;
    const size_t smem = sizeof(acc_t) * size_t(2 * tl + d.W1 - 1) * size_t(Dm);
    const dim3 grid(unsigned(ceil_div(L, tl)), unsigned(B));
    DMM_LAUNCH(grid, kPreprojThreads, smem, stream, preproj_conv_kernel<acc_t>)(
        in_ptr(h, "h"), in_ptr(p.norm1_weight, "norm1_weight"), in_ptr(p.norm1_bias, "norm1_bias"),
        in_ptr(p.mixer1_weight, "mixer1_weight"), in_ptr(p.mixer1_bias, "mixer1_bias"),
        in_ptr(p.norm2_weight, "norm2_weight"), in_ptr(p.norm2_bias, "norm2_bias"),
        out_ptr(s.h1, "h1"), out_ptr(s.v, "v"), int(L), Dm, int(d.W1), M, tl,
        static_cast<acc_t>(eps));
    DMM_KERNEL_LAUNCH_CHECK();
  } else {
    Tensor u = empty_output_like(h);  // (B, L, D)
    launch_ln_rows<acc_t>(h, Tensor(), p.norm1_weight, p.norm1_bias, Tensor(), u, eps);
    const Tensor mixed = mix_fwd_op()
                             .call(u, as(p.mixer1_weight, cdt), as(p.mixer1_bias, cdt), "line",
                                   M, 0)
                             .contiguous();  // (B, L, D)
    launch_ln_rows<acc_t>(h, mixed, p.norm2_weight, p.norm2_bias, s.h1, s.v, eps);
  }

  // 2-3. xz = v @ W_in^T; xs = SiLU([mixer_2](x)).
  s.xz = at::linear(s.v, as(p.in_proj_weight, cdt)).contiguous();  // (B, L, 2E)
  s.xs = empty_output({B, L, E}, h.options());                      // (B, L, E)
  s.xm = spec.is_double ? empty_output({B, L, E}, h.options()) : h.new_empty({0});
  const int64_t n_rows = B * L;
  const unsigned elt_blocks = elementwise_blocks(n_rows * E, kEltThreads);
  if (spec.is_double && line) {
    s.xm = mix_fwd_op()
               .call(s.xz.narrow(-1, 0, E).contiguous(), as(*p.mixer2_weight, cdt),
                     as(p.mixer2_bias, cdt), "line", M, 0)
               .contiguous();  // (B, L, E)
    DMM_LAUNCH(elt_blocks, kEltThreads, 0, stream, silu_mix2_kernel<acc_t>)(
        in_ptr(s.xm, "x"), E, InPtr{}, InPtr{}, OutPtr{}, out_ptr(s.xs, "xs"), n_rows, int(L), E, 0,
        M);
  } else {
    DMM_LAUNCH(elt_blocks, kEltThreads, 0, stream, silu_mix2_kernel<acc_t>)(
        in_ptr(s.xz, "xz"), 2 * int64_t(E),
        spec.is_double ? in_ptr(p.mixer2_weight, "mixer2_weight") : InPtr{},
        spec.is_double ? in_ptr(p.mixer2_bias, "mixer2_bias") : InPtr{},
        spec.is_double ? out_ptr(s.xm, "xm") : OutPtr{}, out_ptr(s.xs, "xs"), n_rows, int(L), E,
        int(d.W2), M);
  }
  DMM_KERNEL_LAUNCH_CHECK();

  // 4-5. x_dbl = xs @ W_x^T; the fused scan.
  s.x_dbl = at::linear(s.xs, as(p.x_proj_weight, cdt)).contiguous();  // (B, L, R + 2N)
  s.y = empty_output({B, L, E}, h.options());                          // (B, L, E)
  BlockScanFwdArgs scan;
  scan.xs = s.xs;
  scan.x_dbl = s.x_dbl;
  scan.z = s.xz.narrow(-1, E, E);
  scan.w_dt = p.dt_proj_weight;
  scan.dt_bias = p.dt_proj_bias;
  scan.A_log = p.A_log;
  scan.D = p.D;
  scan.y = s.y;
  block_scan_fwd(scan);

  // 6. out = y @ W_out^T (+ h1, in the GEMM's epilogue).
  const Tensor w_out = as(p.out_proj_weight, cdt);
  const Tensor out =
      residual ? at::addmm(s.h1.view({n_rows, Dm}), s.y.view({n_rows, E}), w_out.t())
               : at::mm(s.y.view({n_rows, E}), w_out.t());
  return fwd_result(out.view({B, L, Dm}), s);
}

BlockFwdResult block_fwd(const Tensor& h, const BlockParams& p, const BlockConfig& cfg) {
  const auto d = comp::check_block(h, p, cfg);
  const auto cdt = h.scalar_type();
  if (h.numel() == 0 || force_unfused() || !fusable_dtype(cdt) || !all_supported(p))
    return comp::block_fwd(h, p, cfg);
  const size_t acc_size = cdt == at::kDouble ? sizeof(double) : sizeof(float);
  const FwdPlan plan = fused_fwd_plan(h, cfg.mixer, d, acc_size);
  if (!plan.fused) return comp::block_fwd(h, p, cfg);

  const DeviceGuard guard(h.device());
  const auto run = [&](auto acc_tag) {
    using acc_t = decltype(acc_tag);
    return fused_fwd<acc_t>(h.contiguous(), contiguous(p), cfg.mixer, d, cfg.residual(), cfg.eps,
                            plan);
  };
  return cdt == at::kDouble ? run(double{}) : run(float{});
}

// ---- backward ----------------------------------------------------------------------------------
constexpr int kPreprojBwdThreads = 256;

// Tokens per CTA of preproj_bwd_conv_kernel within the default 48 KB of shared memory (0: none).
int preproj_bwd_tile(int64_t L, const comp::BlockDims& d, size_t acc_size) {
  int tl = int(std::min<int64_t>(kTokensPerCta, L));
  auto bytes = [&](int t) {
    return acc_size * size_t(PreprojBwdSmem(int(d.D), int(d.W1), t).total);
  };
  while (tl > 1 && bytes(tl) > kDefaultSmem) --tl;
  return bytes(tl) <= kDefaultSmem ? tl : 0;
}

// LN_2 backward + residual + conv mixer_1 backward + LN_1 backward: two launches (the fused kernel,
// then the fixed-order sum of its per-CTA partials into the six parameter gradients).
template <typename acc_t>
Tensor preproj_bwd_conv(const Tensor& dv, const Tensor& g, const Tensor& h, const BlockParams& p,
                        const BlockSaved& s, const comp::BlockDims& d, const BlockConfig& cfg,
                        int tl, BlockParams& grads) {
  const int64_t B = h.size(0), L = h.size(1);
  const int D = int(d.D), W = int(d.W1), M = int(d.M);
  const auto stream = current_stream();
  const PreprojPartials cols(D, W, M);
  const int64_t tiles = ceil_div(L, tl);
  Tensor dh = empty_output_like(h);  // (B, L, D)
  Tensor partial = empty_output({B * tiles, cols.cols},
                                h.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  const size_t smem = sizeof(acc_t) * size_t(PreprojBwdSmem(D, W, tl).total);
  DMM_LAUNCH((dim3(unsigned(tiles), unsigned(B))), kPreprojBwdThreads, smem, stream,
             preproj_bwd_conv_kernel<acc_t>)(
      in_ptr(h, "h"), in_ptr(s.h1, "h1"), in_ptr(dv, "dv"), cfg.residual() ? in_ptr(g, "dout") : InPtr{},
      in_ptr(p.norm1_weight, "norm1_weight"), in_ptr(p.norm1_bias, "norm1_bias"),
      in_ptr(p.mixer1_weight, "mixer1_weight"), in_ptr(p.norm2_weight, "norm2_weight"),
      in_ptr(p.norm2_bias, "norm2_bias"), out_ptr(dh, "dh"), out_gptr<acc_t>(partial, "partial"),
      int(L), D, W, M, tl, static_cast<acc_t>(cfg.eps));
  DMM_KERNEL_LAUNCH_CHECK();

  // The partials' column blocks, in PreprojPartials order, into the gradients (compute dtype).
  const auto opts = h.options();
  grads.norm1_weight = empty_output({D}, opts);
  grads.norm1_bias = empty_output({D}, opts);
  grads.norm2_weight = empty_output({D}, opts);
  grads.norm2_bias = empty_output({D}, opts);
  grads.mixer1_weight = empty_output({M, W, D}, opts);
  grads.mixer1_bias = present(p.mixer1_bias) ? OptTensor(empty_output({M, D}, opts)) : std::nullopt;
  ReduceOuts outs;
  const int64_t begins[] = {cols.dn1w, cols.dn1b, cols.dn2w, cols.dn2b, cols.dm1w, cols.dm1b,
                            cols.cols};
  const Tensor* targets[] = {&grads.norm1_weight, &grads.norm1_bias, &grads.norm2_weight,
                             &grads.norm2_bias, &grads.mixer1_weight};
  outs.n = 6;
  const char* names[] = {"dnorm1_weight", "dnorm1_bias", "dnorm2_weight", "dnorm2_bias",
                         "dmixer1_weight"};
  for (int k = 0; k < 5; ++k) outs.p[k] = out_ptr(*targets[k], names[k]);
  outs.p[5] = present(grads.mixer1_bias) ? out_ptr(*grads.mixer1_bias, "dmixer1_bias") : OutPtr{};
  for (int k = 0; k <= 6; ++k) outs.begin[k] = begins[k];
  DMM_LAUNCH(elementwise_blocks(cols.cols, kEltThreads), kEltThreads, 0, stream,
             reduce_rows_kernel<acc_t>)(in_gptr<acc_t>(partial, "partial"), B * tiles,
                                        cols.cols, outs);
  DMM_KERNEL_LAUNCH_CHECK();
  return dh;
}

// out_proj's and the scan's backward. One scan launch (block_scan_bwd: dt_proj folded in) reads
// the saved block-layout activations in place and writes the scan part of dxs, dz (a view of
// in_proj's gradient, or its own tensor), d x_dbl = [d dt_low | dB | dC] summed over E and the
// sums of dt_proj / A_log / D / dt_bias: no forward recomputed, no transposed copy. -> dxs.
Tensor bwd_out_scan(const Tensor& g, const BlockParams& p, const BlockSaved& s,
                    const comp::BlockDims& d, const Tensor& dz, BlockParams& grads) {
  const int64_t B = g.size(0), L = g.size(1), E = d.E, N = d.N, R = d.R, P = R + 2 * N;
  const auto cdt = g.scalar_type();
  const auto acc = g.options().dtype(cdt == at::kDouble ? at::kDouble : at::kFloat);
  const auto rows = [](const Tensor& t) { return t.flatten(0, t.dim() - 2); };  // (rows, C)
  // out = y @ W_out^T (+ h1)
  grads.out_proj_weight = at::mm(rows(g).t(), rows(s.y));                   // (D, E)
  const Tensor dy = at::mm(rows(g), p.out_proj_weight).view({B, L, E});  // (B, L, E)

  BlockScanBwdArgs a;
  a.xs = s.xs;
  a.x_dbl = s.x_dbl;
  a.z = s.xz.narrow(-1, E, E);
  a.w_dt = p.dt_proj_weight;
  a.dt_bias = p.dt_proj_bias;
  a.A_log = p.A_log;
  a.D = p.D;
  a.dy = dy;
  a.dxs = empty_output({B, L, E}, g.options());  // (B, L, E)
  a.dz = dz;                                  // (B, L, E), any strides
  // the scan's sums, zeroed (separate tensors: the gradients returned must not alias)
  a.dx_dbl = at::zeros({B, L, P}, acc);  // [d dt_low | dB | dC]
  a.dw_dt = at::zeros({E, R}, acc);
  a.dA_log = at::zeros({E, N}, acc);
  a.dD = at::zeros({E}, acc);
  a.ddt_bias = at::zeros({E}, acc);
  block_scan_bwd(a);
  grads.dt_proj_weight = a.dw_dt;
  grads.A_log = a.dA_log;
  grads.D = a.dD;
  grads.dt_proj_bias = a.ddt_bias;

  // x_dbl = xs @ W_x^T, so dW_x = d x_dbl^T xs and dxs += d x_dbl @ W_x.
  const Tensor dxd = as(a.dx_dbl, cdt);                              // (B, L, P)
  grads.x_proj_weight = at::mm(rows(dxd).t(), rows(s.xs));           // (P, E)
  return at::addmm(rows(a.dxs), rows(dxd), p.x_proj_weight).view({B, L, E});
}

// The block's backward from the saved activations: the GEMMs as in the composite, the scan as one
// fused launch (bwd_out_scan), the SiLU backward and, for conv mixers, the LayerNorm / mixer_1
// backward as fused kernels.
std::vector<Tensor> block_bwd(const Tensor& dout, const Tensor& h_in, const BlockParams& params,
                              const BlockSaved& s_in, const BlockConfig& cfg) {
  const auto d = comp::check_bwd(dout, h_in, params, s_in, cfg);
  const auto cdt = h_in.scalar_type();
  if (h_in.numel() == 0 || force_unfused() || !fusable_dtype(cdt) || !all_supported(params) ||
      h_in.size(0) > 65535 || d.E == 0 || d.R == 0 || d.N > kScanMaxStates)
    return comp::block_bwd(dout, h_in, params, s_in, cfg);
  const DeviceGuard guard(h_in.device());
  const int64_t B = h_in.size(0), L = h_in.size(1), E = d.E;
  const auto p = comp::cast_params(params, cdt);
  BlockSaved s = s_in;  // the kernels read the saved activations by flat index
#define DMM_CONTIG_SAVED_(name) s.name = s.name.contiguous();
  DMM_BLOCK_SAVED(DMM_CONTIG_SAVED_)
#undef DMM_CONTIG_SAVED_
  const Tensor h = h_in.contiguous();
  const Tensor g = as(dout, cdt).contiguous();  // (B, L, D)
  const size_t acc_size = cdt == at::kDouble ? sizeof(double) : sizeof(float);
  BlockParams grads;

  // dz goes straight into in_proj's gradient dxz = [dx | dz] (B, L, 2E), except for double mixers,
  // whose mixer_2 backward allocates dx (concatenated as in the composite).
  Tensor dxz = empty_output({B, L, 2 * E}, h.options());
  const Tensor dz =
      cfg.mixer.is_double ? empty_output({B, L, E}, h.options()) : dxz.narrow(-1, E, E);
  const Tensor dxs = bwd_out_scan(g, p, s, d, dz, grads);  // (B, L, E)
  if (cfg.mixer.is_double) {
    dxz = comp::bwd_silu_mix2(dxs, dz, p, s, d, cfg.mixer, grads);
  } else {  // SiLU backward into dxz[..., :E]
    const auto run = [&](auto acc_tag) {
      using acc_t = decltype(acc_tag);
      DMM_LAUNCH(elementwise_blocks(B * L * E, kEltThreads), kEltThreads, 0, current_stream(),
                 silu_bwd_kernel<acc_t>)(in_ptr(dxs, "dxs"), in_ptr(s.xz, "xz"), 2 * E, InPtr{}, 0,
                                         0, 0, out_ptr(dxz, "dxz", Writes::kSome), B * L, int(L),
                                         int(E));
      DMM_KERNEL_LAUNCH_CHECK();
    };
    if (cdt == at::kDouble) run(double{}); else run(float{});
  }
  const Tensor dv = comp::bwd_in_proj(dxz, p, s, grads);

  const int tl = cfg.mixer.kind == "conv" ? preproj_bwd_tile(L, d, acc_size) : 0;
  Tensor dh;
  if (tl == 0 || d.W1 > kMaxModalMixWindow) dh = comp::bwd_preproj(dv, g, h, p, s, d, cfg, grads);
  else if (cdt == at::kDouble) dh = preproj_bwd_conv<double>(dv, g, h, p, s, d, cfg, tl, grads);
  else dh = preproj_bwd_conv<float>(dv, g, h, p, s, d, cfg, tl, grads);
  return comp::grads_list(dh, grads, params, h_in);
}

// ---- step --------------------------------------------------------------------------------------
// The stages' launch configuration (csrc/cuda/step_kernels.cuh).
struct StepPlan {
  bool fused = false;
  size_t smem_mix1 = 0, smem_in_proj = 0, smem_mix2 = 0, smem_x_proj = 0, smem_scan = 0,
         smem_out = 0;  // bytes
  int scan_group = 0;   // lanes per channel: the power of two >= N, 4..32
};

StepPlan step_plan(const Tensor& h_t, const StepCache& cache, const MixerSpec& spec,
                   const comp::BlockDims& d) {
  StepPlan p;
  const int64_t B = h_t.size(0);
  const bool layout_ok = cache.mixer1.is_contiguous() && cache.ssm_state.is_contiguous() &&
                         (!spec.is_double || cache.mixer2->is_contiguous());
  if (!layout_ok || B > 65535 || d.E == 0 || d.R + 2 * d.N == 0) return p;
  const size_t acc = h_t.scalar_type() == at::kDouble ? sizeof(double) : sizeof(float);
  const bool line = spec.kind == "line";
  const int D = int(d.D), E = int(d.E), W1 = int(d.W1), W2 = int(d.W2);
  p.smem_mix1 = line ? acc * size_t(StepSmem::mix1(D, W1)) : 0;
  p.smem_in_proj = acc * size_t(StepSmem::in_proj(D, W1, line));
  p.smem_mix2 = spec.is_double ? acc * size_t(StepSmem::mix2(E, W2, line)) : 0;
  p.smem_x_proj = acc * size_t(StepSmem::x_proj(E));
  p.smem_scan = acc * size_t(StepSmem::scan(int(d.R + 2 * d.N)));
  p.smem_out = acc * size_t(StepSmem::out(E));
  for (size_t bytes : {p.smem_mix1, p.smem_in_proj, p.smem_mix2, p.smem_x_proj, p.smem_scan,
                       p.smem_out})
    if (bytes > smem_optin()) return p;
  p.scan_group = d.N <= 4 ? 4 : d.N <= 8 ? 8 : d.N <= 16 ? 16 : 32;
  p.fused = true;
  return p;
}

// One stage over `rows` weight rows (or channels), `per_cta` to a CTA, for every batch row b.
#define DMM_STEP_STAGE_WITH(args, rows, per_cta, smem, ...)                                 \
  do {                                                                                      \
    allow_smem(__VA_ARGS__, smem);                                                          \
    DMM_LAUNCH((dim3(unsigned(ceil_div(rows, per_cta)), unsigned(B))), kStepThreads, smem,  \
               stream, __VA_ARGS__)(args);                                                  \
    DMM_KERNEL_LAUNCH_CHECK();                                                              \
  } while (0)

#define DMM_STEP_STAGE(rows, per_cta, smem, ...) DMM_STEP_STAGE_WITH(a, rows, per_cta, smem, __VA_ARGS__)

// `out_all`: a.out for the last stage, which writes all of it (a.out: written by no earlier stage).
template <typename acc_t>
void launch_step(const StepArgs& a, const OutPtr& out_all, const StepPlan& plan, int64_t B) {
  const auto stream = current_stream();
  const int P = a.R + 2 * a.N, channels = kStepThreads / plan.scan_group;
  if (a.line) DMM_STEP_STAGE(a.D, kStepRows, plan.smem_mix1, step_mix1_kernel<acc_t>);
  DMM_STEP_STAGE(2 * a.E, kStepRows, plan.smem_in_proj, step_in_proj_kernel<acc_t>);
  if (a.is_double) DMM_STEP_STAGE(a.E, kStepRows, plan.smem_mix2, step_mix2_kernel<acc_t>);
  DMM_STEP_STAGE(P, kStepRows, plan.smem_x_proj, step_x_proj_kernel<acc_t>);
  switch (plan.scan_group) {
    case 4: DMM_STEP_STAGE(a.E, channels, plan.smem_scan, step_scan_kernel<acc_t, 4>); break;
    case 8: DMM_STEP_STAGE(a.E, channels, plan.smem_scan, step_scan_kernel<acc_t, 8>); break;
    case 16: DMM_STEP_STAGE(a.E, channels, plan.smem_scan, step_scan_kernel<acc_t, 16>); break;
    default: DMM_STEP_STAGE(a.E, channels, plan.smem_scan, step_scan_kernel<acc_t, 32>);
  }
  StepArgs last = a;
  last.out = out_all;
  DMM_STEP_STAGE_WITH(last, a.D, kStepRows, plan.smem_out, step_out_kernel<acc_t>);
}
#undef DMM_STEP_STAGE
#undef DMM_STEP_STAGE_WITH

Tensor step(const Tensor& h_t, const StepCache& cache, const BlockParams& params, const Tensor& A,
            const BlockConfig& cfg, int64_t position) {
  const auto& spec = cfg.mixer;
  const auto d = comp::check_step(h_t, cache, params, A, spec, cfg.n_modalities, position);
  const auto cdt = h_t.scalar_type();
  const int64_t B = h_t.size(0);
  if (B == 0) return at::empty_like(h_t, at::MemoryFormat::Contiguous);
  const DeviceGuard guard(h_t.device());  // before reading the device's smem limit
  const StepPlan plan = step_plan(h_t, cache, spec, d);
  if (force_unfused() || !plan.fused || !fusable_dtype(cdt) || !all_supported(params))
    return comp::step(h_t, cache, params, A, cfg, position);

  // Held here so the raw pointers below outlive the launches (no copies when contiguous).
  const BlockParams p = contiguous(params);
  const Tensor hc = h_t.contiguous(), Ac = A.contiguous();
  const StepWs lay(int(d.D), int(d.E), int(d.R + 2 * d.N));
  // One allocation: the output (B, D) first, the stages' workspace (B, lay.row) after it.
  const Tensor buffer = empty_output({B * (d.D + lay.row)}, h_t.options());
  const Tensor out = buffer.narrow(0, 0, B * d.D).view({B, d.D});

  StepArgs a;
  a.h = in_ptr(hc, "h_t");
  a.out = out_ptr(out, "out", Writes::kSome);
  a.ws = out_ptr(buffer.narrow(0, B * d.D, B * lay.row), "workspace", Writes::kSome);
  a.lay = lay;
  // the caches and the state: updated in place
  a.cache1 = out_ptr(cache.mixer1, "mixer1_cache", Writes::kSome);
  a.cache2 = spec.is_double ? out_ptr(*cache.mixer2, "mixer2_cache", Writes::kSome) : OutPtr{};
  a.state = out_ptr(cache.ssm_state, "ssm_state", Writes::kSome);
  a.n1w = in_ptr(p.norm1_weight, "norm1_weight"); a.n1b = in_ptr(p.norm1_bias, "norm1_bias");
  a.m1w = in_ptr(p.mixer1_weight, "mixer1_weight"); a.m1b = in_ptr(p.mixer1_bias, "mixer1_bias");
  a.n2w = in_ptr(p.norm2_weight, "norm2_weight"); a.n2b = in_ptr(p.norm2_bias, "norm2_bias");
  a.w_in = in_ptr(p.in_proj_weight, "in_proj_weight");
  a.m2w = in_ptr(p.mixer2_weight, "mixer2_weight"); a.m2b = in_ptr(p.mixer2_bias, "mixer2_bias");
  a.w_x = in_ptr(p.x_proj_weight, "x_proj_weight");
  a.w_dt = in_ptr(p.dt_proj_weight, "dt_proj_weight");
  a.dt_bias = in_ptr(p.dt_proj_bias, "dt_proj_bias"); a.A = in_ptr(Ac, "A");
  a.Dskip = in_ptr(p.D, "D");
  a.w_out = in_ptr(p.out_proj_weight, "out_proj_weight");
  a.D = int(d.D); a.E = int(d.E); a.N = int(d.N); a.R = int(d.R);
  a.W1 = int(d.W1); a.W2 = spec.is_double ? int(d.W2) : 0;
  a.m = int(position % cfg.n_modalities);
  a.line = spec.kind == "line";
  a.is_double = spec.is_double;
  a.residual = cfg.residual();
  a.eps = cfg.eps;
  const OutPtr out_all = out_ptr(out, "out");
  if (cdt == at::kDouble) launch_step<double>(a, out_all, plan, B);
  else launch_step<float>(a, out_all, plan, B);
  return out;
}

}  // namespace
}  // namespace block
}  // namespace cuda
}  // namespace dmm

TORCH_LIBRARY_IMPL(dmm, DMM_KERNEL_DISPATCH_KEY, m) {
  m.impl("metamamba_block_fwd", &dmm::fwd_entry<&dmm::cuda::block::block_fwd>);
  m.impl("metamamba_block_bwd", &dmm::bwd_entry<&dmm::cuda::block::block_bwd>);
  m.impl("metamamba_step", &dmm::step_entry<&dmm::cuda::block::step>);
}
