// CUDA registration of the whole-block ops (DESIGN.md sections 3-4).
//
// metamamba_block_fwd, fused path (6 launches for "conv" / "double-conv"):
//   1 preproj_conv_kernel  LN_1 + mixer_1 + residual + LN_2            -> h1, v   (B, L, D)
//   2 cuBLAS               xz = v @ W_in^T                              (B, L, 2E)
//   3 silu_mix2_kernel     xs = SiLU([mixer_2](x))                      (B, L, E)
//   4 cuBLAS               x_dbl = xs @ W_x^T = [dt_low | B | C]        (B, L, R + 2N)
//   5 block_scan_fwd       dt_proj + softplus + scan + D skip + SiLU(z) (B, L, E), read in
//                          place (selective_scan.cu, scan_launch.h)
//   6 cuBLAS               out = y @ W_out^T (+ h1 through addmm's beta)
//   "line" mixers keep the mixer a GEMM (the dmm::modal_mix_fwd op) between two LayerNorm
//   kernels: 8 launches (+1 modal_mix and no mixer_2 work in silu_mix2 for "double-line").
//   Parameter casts to h's dtype add launches only when a parameter has another dtype.
// metamamba_block_bwd: the composite backward (csrc/block/composite.cpp): it recomputes the
//   whole forward unfused and stores nothing between the two ops.
// metamamba_step: one launch (step_kernel) when its shared memory fits; no host sync and no
//   allocation besides the output (CUDA-graph capturable) when the parameters are contiguous and
//   the caches contiguous.
// Everything outside the fused kernels' limits goes to the composite (see `fused_fwd_plan` and
// `step_fits`). DMM_CUDA_BLOCK_UNFUSED=1 sends every call to the composite (A/B benchmarks).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "block/composite.h"
#include "checks.h"
#include "cuda/common.cuh"
#include "cuda/scan_launch.h"
#ifdef DMM_CUDA_EMULATION
namespace dmm { namespace cuda { namespace block { DMM_EMU_DYNAMIC_SHARED(smem_raw); } } }
#endif
#include "cuda/block_kernels.cuh"

namespace dmm {
namespace cuda {
namespace block {
namespace {

using at::Tensor;
using OptTensor = std::optional<at::Tensor>;
namespace comp = dmm::composite;

constexpr int kPreprojThreads = 256;  // 8 warps: one per token of the tile
constexpr int kTokensPerCta = 8;      // preproj tile; the W-1 halo rows are recomputed
constexpr int kLnThreads = 256;       // 8 rows per CTA
constexpr int kEltThreads = 256;
constexpr int kStepThreads = 512;     // 16 warps stream the mat-vec weights
constexpr size_t kDefaultSmem = 48 * 1024;

bool force_unfused() {
  static const bool value = [] {
    const char* e = std::getenv("DMM_CUDA_BLOCK_UNFUSED");
    return e != nullptr && *e != '\0' && std::string(e) != "0";
  }();
  return value;
}

bool present(const OptTensor& t) { return t.has_value() && t->defined(); }
Tensor as(const Tensor& t, at::ScalarType dt) { return t.scalar_type() == dt ? t : t.to(dt); }
OptTensor as(const OptTensor& t, at::ScalarType dt) {
  return present(t) ? OptTensor(as(*t, dt)) : std::nullopt;
}
OptTensor contig(const OptTensor& t) { return present(t) ? OptTensor(t->contiguous()) : std::nullopt; }
// Dtypes the kernels' InPtr / OutPtr tags can carry.
bool fusable_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}
bool supported(const OptTensor& t) { return !present(t) || fusable_dtype(t->scalar_type()); }

using MixFwdSig = Tensor(const Tensor&, const Tensor&, const OptTensor&, c10::string_view,
                         int64_t, int64_t);
const c10::TypedOperatorHandle<MixFwdSig>& mix_fwd_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("dmm::modal_mix_fwd", "").typed<MixFwdSig>();
  return op;
}

size_t smem_optin() { return device_properties().sharedMemPerBlockOptin; }

// Raise a kernel's dynamic shared-memory limit past 48 KB; done once per (kernel, device, size)
// so that a replay or a graph capture after a first eager call makes no runtime-config call.
template <typename Kernel>
void allow_smem(Kernel kernel, size_t bytes) {
  if (bytes <= kDefaultSmem) return;
  static std::mutex mutex;
  static std::map<std::pair<const void*, int>, size_t> granted;
  const std::lock_guard<std::mutex> lock(mutex);
  size_t& g = granted[{reinterpret_cast<const void*>(kernel), current_device()}];
  if (g >= bytes) return;
  DMM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(bytes)));
  g = bytes;
}

// ---- forward -----------------------------------------------------------------------------------
struct FwdPlan {
  bool fused = false;
  int tokens_per_cta = 0;  // preproj tile (conv)
};

// Where the fused forward applies: N <= kScanMaxStates, a dt rank R >= 1, the preproj tile within
// the default 48 KB of shared memory, and B within gridDim.y.
FwdPlan fused_fwd_plan(const Tensor& h, const comp::MixerSpec& spec, const comp::BlockDims& d,
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
      in_ptr(x), add.defined() ? in_ptr(add) : InPtr{}, in_ptr(w), in_ptr(bias),
      sum_out.defined() ? out_ptr(sum_out) : OutPtr{}, out_ptr(y), rows, D,
      static_cast<acc_t>(eps));
  DMM_KERNEL_LAUNCH_CHECK();
}

template <typename acc_t>
Tensor fused_fwd(const Tensor& h, const Tensor& n1w, const Tensor& n1b, const Tensor& m1w,
                 const OptTensor& m1b, const Tensor& n2w, const Tensor& n2b, const Tensor& w_in,
                 const OptTensor& m2w, const OptTensor& m2b, const Tensor& w_x, const Tensor& w_dt,
                 const Tensor& dt_bias, const Tensor& A_log, const Tensor& Dskip,
                 const Tensor& w_out, const comp::MixerSpec& spec, const comp::BlockDims& d,
                 bool residual, double eps, const FwdPlan& plan) {
  const auto cdt = h.scalar_type();
  const auto stream = current_stream();
  const int64_t B = h.size(0), L = h.size(1);
  const int Dm = int(d.D), E = int(d.E), N = int(d.N), R = int(d.R), M = int(d.M);
  const bool line = spec.kind == "line";

  // 1. h1 = h + mixer_1(LN_1(h)),  v = LN_2(h1).
  Tensor h1 = at::empty_like(h);  // (B, L, D)
  Tensor v = at::empty_like(h);   // (B, L, D)
  if (!line) {
    const int tl = plan.tokens_per_cta;
    const size_t smem = sizeof(acc_t) * size_t(2 * tl + d.W1 - 1) * size_t(Dm);
    const dim3 grid(unsigned(ceil_div(L, tl)), unsigned(B));
    DMM_LAUNCH(grid, kPreprojThreads, smem, stream, preproj_conv_kernel<acc_t>)(
        in_ptr(h), in_ptr(n1w), in_ptr(n1b), in_ptr(m1w), in_ptr(m1b), in_ptr(n2w), in_ptr(n2b),
        out_ptr(h1), out_ptr(v), int(L), Dm, int(d.W1), M, tl, static_cast<acc_t>(eps));
    DMM_KERNEL_LAUNCH_CHECK();
  } else {
    Tensor u = at::empty_like(h);  // (B, L, D)
    launch_ln_rows<acc_t>(h, Tensor(), n1w, n1b, Tensor(), u, eps);
    const Tensor mixed =
        mix_fwd_op().call(u, as(m1w, cdt), as(m1b, cdt), "line", M, 0).contiguous();  // (B, L, D)
    launch_ln_rows<acc_t>(h, mixed, n2w, n2b, h1, v, eps);
  }

  // 2-3. xz = v @ W_in^T; xs = SiLU([mixer_2](x)).
  const Tensor xz = at::linear(v, as(w_in, cdt)).contiguous();  // (B, L, 2E)
  Tensor xs = at::empty({B, L, E}, h.options());                 // (B, L, E)
  const int64_t n_rows = B * L;
  const unsigned elt_blocks = elementwise_blocks(n_rows * E, kEltThreads);
  if (spec.is_double && line) {
    const Tensor xm = mix_fwd_op()
                          .call(xz.narrow(-1, 0, E).contiguous(), as(*m2w, cdt), as(m2b, cdt),
                                "line", M, 0)
                          .contiguous();  // (B, L, E)
    DMM_LAUNCH(elt_blocks, kEltThreads, 0, stream, silu_mix2_kernel<acc_t>)(
        in_ptr(xm), E, InPtr{}, InPtr{}, out_ptr(xs), n_rows, int(L), E, 0, M);
  } else {
    DMM_LAUNCH(elt_blocks, kEltThreads, 0, stream, silu_mix2_kernel<acc_t>)(
        in_ptr(xz), 2 * int64_t(E), spec.is_double ? in_ptr(m2w) : InPtr{},
        spec.is_double ? in_ptr(m2b) : InPtr{}, out_ptr(xs), n_rows, int(L), E, int(d.W2), M);
  }
  DMM_KERNEL_LAUNCH_CHECK();

  // 4-5. x_dbl = xs @ W_x^T; the fused scan.
  const Tensor x_dbl = at::linear(xs, as(w_x, cdt)).contiguous();  // (B, L, R + 2N)
  Tensor y = at::empty({B, L, E}, h.options());                     // (B, L, E)
  BlockScanFwdArgs scan;
  scan.xs = xs;
  scan.x_dbl = x_dbl;
  scan.z = xz.narrow(-1, E, E);
  scan.w_dt = w_dt;
  scan.dt_bias = dt_bias;
  scan.A_log = A_log;
  scan.D = Dskip;
  scan.y = y;
  block_scan_fwd(scan);

  // 6. out = y @ W_out^T (+ h1, in the GEMM's epilogue).
  const Tensor w_out_c = as(w_out, cdt);
  if (residual)
    return at::addmm(h1.view({n_rows, Dm}), y.view({n_rows, E}), w_out_c.t()).view({B, L, Dm});
  return at::linear(y, w_out_c);
}

Tensor block_fwd(const Tensor& h, const Tensor& norm1_weight, const Tensor& norm1_bias,
                 const Tensor& mixer1_weight, const OptTensor& mixer1_bias,
                 const Tensor& norm2_weight, const Tensor& norm2_bias,
                 const Tensor& in_proj_weight, const OptTensor& mixer2_weight,
                 const OptTensor& mixer2_bias, const Tensor& x_proj_weight,
                 const Tensor& dt_proj_weight, const Tensor& dt_proj_bias, const Tensor& A_log,
                 const Tensor& D, const Tensor& out_proj_weight, c10::string_view mixer,
                 int64_t n_modalities, bool residual_ssm, double eps) {
  auto composite = [&] {
    return comp::metamamba_block_fwd(h, norm1_weight, norm1_bias, mixer1_weight, mixer1_bias,
                                     norm2_weight, norm2_bias, in_proj_weight, mixer2_weight,
                                     mixer2_bias, x_proj_weight, dt_proj_weight, dt_proj_bias,
                                     A_log, D, out_proj_weight, mixer, n_modalities, residual_ssm,
                                     eps);
  };
  const auto spec = comp::parse_mixer(mixer);
  TORCH_CHECK(h.dim() == 3, "metamamba_block: h must be (B, L, D); got ", shape_str(h.sizes()));
  const auto d = comp::check_block_params(
      "metamamba_block", h, norm1_weight, norm1_bias, mixer1_weight, mixer1_bias, norm2_weight,
      norm2_bias, in_proj_weight, mixer2_weight, mixer2_bias, x_proj_weight, dt_proj_weight,
      dt_proj_bias, A_log, D, out_proj_weight, spec, n_modalities);
  const auto cdt = h.scalar_type();
  const bool dtypes_ok =
      fusable_dtype(cdt) &&
      supported(norm1_weight) && supported(norm1_bias) && supported(mixer1_weight) &&
      supported(mixer1_bias) && supported(norm2_weight) && supported(norm2_bias) &&
      supported(mixer2_weight) && supported(mixer2_bias) && supported(dt_proj_weight) &&
      supported(dt_proj_bias) && supported(A_log) && supported(D);
  if (h.numel() == 0 || force_unfused() || !dtypes_ok) return composite();
  const size_t acc_size = cdt == at::kDouble ? sizeof(double) : sizeof(float);
  const FwdPlan plan = fused_fwd_plan(h, spec, d, acc_size);
  if (!plan.fused) return composite();

  const DeviceGuard guard(h.device());
  const bool residual = residual_ssm || spec.is_double;
  // Contiguous views (no copies for ordinary parameters); the kernels read them by flat index.
  const auto run = [&](auto acc_tag) {
    using acc_t = decltype(acc_tag);
    return fused_fwd<acc_t>(h.contiguous(), norm1_weight.contiguous(), norm1_bias.contiguous(),
                            mixer1_weight.contiguous(), contig(mixer1_bias),
                            norm2_weight.contiguous(), norm2_bias.contiguous(), in_proj_weight,
                            contig(mixer2_weight), contig(mixer2_bias), x_proj_weight,
                            dt_proj_weight.contiguous(), dt_proj_bias.contiguous(),
                            A_log.contiguous(), D.contiguous(), out_proj_weight, spec, d,
                            residual, eps, plan);
  };
  return cdt == at::kDouble ? run(double{}) : run(float{});
}

// ---- step --------------------------------------------------------------------------------------
Tensor step(const Tensor& h_t, const Tensor& mixer1_cache, const OptTensor& mixer2_cache,
            const Tensor& ssm_state, const Tensor& norm1_weight, const Tensor& norm1_bias,
            const Tensor& mixer1_weight, const OptTensor& mixer1_bias, const Tensor& norm2_weight,
            const Tensor& norm2_bias, const Tensor& in_proj_weight, const OptTensor& mixer2_weight,
            const OptTensor& mixer2_bias, const Tensor& x_proj_weight,
            const Tensor& dt_proj_weight, const Tensor& dt_proj_bias, const Tensor& A_log,
            const Tensor& D, const Tensor& out_proj_weight, c10::string_view mixer,
            int64_t n_modalities, bool residual_ssm, double eps, int64_t position) {
  auto composite = [&] {
    return comp::metamamba_step(h_t, mixer1_cache, mixer2_cache, ssm_state, norm1_weight,
                                norm1_bias, mixer1_weight, mixer1_bias, norm2_weight, norm2_bias,
                                in_proj_weight, mixer2_weight, mixer2_bias, x_proj_weight,
                                dt_proj_weight, dt_proj_bias, A_log, D, out_proj_weight, mixer,
                                n_modalities, residual_ssm, eps, position);
  };
  const auto spec = comp::parse_mixer(mixer);
  const auto d = comp::check_step(h_t, mixer1_cache, mixer2_cache, ssm_state, norm1_weight,
                                  norm1_bias, mixer1_weight, mixer1_bias, norm2_weight, norm2_bias,
                                  in_proj_weight, mixer2_weight, mixer2_bias, x_proj_weight,
                                  dt_proj_weight, dt_proj_bias, A_log, D, out_proj_weight, mixer,
                                  n_modalities, position);

  const auto cdt = h_t.scalar_type();
  const int64_t B = h_t.size(0);
  if (B == 0) return at::empty_like(h_t, at::MemoryFormat::Contiguous);
  const bool layout_ok = mixer1_cache.is_contiguous() && ssm_state.is_contiguous() &&
                         (!spec.is_double || mixer2_cache->is_contiguous());
  const bool dtypes_ok =
      fusable_dtype(cdt) && supported(norm1_weight) && supported(norm1_bias) &&
      supported(mixer1_weight) && supported(mixer1_bias) && supported(norm2_weight) &&
      supported(norm2_bias) && supported(in_proj_weight) && supported(mixer2_weight) &&
      supported(mixer2_bias) && supported(x_proj_weight) && supported(dt_proj_weight) &&
      supported(dt_proj_bias) && supported(A_log) && supported(D) && supported(out_proj_weight);
  const size_t acc_size = cdt == at::kDouble ? sizeof(double) : sizeof(float);
  const size_t smem =
      acc_size * size_t(StepSmem(int(d.D), int(d.E), int(d.N), int(d.R), int(d.W1),
                                 spec.is_double ? int(d.W2) : 0).total);
  const DeviceGuard guard(h_t.device());  // before reading the device's smem limit
  if (force_unfused() || !layout_ok || !dtypes_ok || d.E == 0 || smem > smem_optin())
    return composite();

  // Held here so the raw pointers below outlive the launch (no copies when contiguous).
  const Tensor hc = h_t.contiguous(), n1w = norm1_weight.contiguous(),
               n1b = norm1_bias.contiguous(), m1w = mixer1_weight.contiguous(),
               n2w = norm2_weight.contiguous(), n2b = norm2_bias.contiguous(),
               w_in = in_proj_weight.contiguous(), w_x = x_proj_weight.contiguous(),
               w_dt = dt_proj_weight.contiguous(), dtb = dt_proj_bias.contiguous(),
               a_log = A_log.contiguous(), dsk = D.contiguous(),
               w_out = out_proj_weight.contiguous();
  const OptTensor m1b = contig(mixer1_bias), m2w = contig(mixer2_weight),
                  m2b = contig(mixer2_bias);
  Tensor out = at::empty({B, d.D}, h_t.options());  // (B, D)

  StepArgs a;
  a.h = in_ptr(hc);
  a.out = out_ptr(out);
  a.cache1 = mixer1_cache.numel() > 0 ? mixer1_cache.data_ptr() : nullptr;
  a.cache1_dt = dtype_tag(mixer1_cache.scalar_type());
  a.cache2 = spec.is_double && mixer2_cache->numel() > 0 ? mixer2_cache->data_ptr() : nullptr;
  a.cache2_dt = dtype_tag(spec.is_double ? mixer2_cache->scalar_type() : cdt);
  a.state = ssm_state.data_ptr();
  a.state_dt = dtype_tag(ssm_state.scalar_type());
  a.n1w = in_ptr(n1w); a.n1b = in_ptr(n1b); a.m1w = in_ptr(m1w); a.m1b = in_ptr(m1b);
  a.n2w = in_ptr(n2w); a.n2b = in_ptr(n2b); a.w_in = in_ptr(w_in);
  a.m2w = in_ptr(m2w); a.m2b = in_ptr(m2b); a.w_x = in_ptr(w_x); a.w_dt = in_ptr(w_dt);
  a.dt_bias = in_ptr(dtb); a.A_log = in_ptr(a_log); a.Dskip = in_ptr(dsk); a.w_out = in_ptr(w_out);
  a.D = int(d.D); a.E = int(d.E); a.N = int(d.N); a.R = int(d.R);
  a.W1 = int(d.W1); a.W2 = spec.is_double ? int(d.W2) : 0;
  a.m = int(position % n_modalities);
  a.line = spec.kind == "line";
  a.is_double = spec.is_double;
  a.residual = residual_ssm || spec.is_double;
  a.eps = eps;

  const auto stream = current_stream();
  if (cdt == at::kDouble) {
    allow_smem(step_kernel<double>, smem);
    DMM_LAUNCH(unsigned(B), kStepThreads, smem, stream, step_kernel<double>)(a);
  } else {
    allow_smem(step_kernel<float>, smem);
    DMM_LAUNCH(unsigned(B), kStepThreads, smem, stream, step_kernel<float>)(a);
  }
  DMM_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace
}  // namespace block
}  // namespace cuda
}  // namespace dmm

TORCH_LIBRARY_IMPL(dmm, DMM_KERNEL_DISPATCH_KEY, m) {
  m.impl("metamamba_block_fwd", &dmm::cuda::block::block_fwd);
  m.impl("metamamba_block_bwd", &dmm::composite::metamamba_block_bwd);
  m.impl("metamamba_step", &dmm::cuda::block::step);
}
