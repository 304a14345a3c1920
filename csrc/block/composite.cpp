// Device-generic MetaMamba block: ATen ops plus the dmm scan / mixer ops via the dispatcher.
// Shapes: B batch, L tokens, D d_model, E inner width, N state size, R dt rank, W window.
#include "block/composite.h"

#include <ATen/core/dispatch/Dispatcher.h>

#include <sstream>
#include <vector>

namespace dmm {
namespace {

using at::Tensor;

// ---- our own ops, resolved once and called through the dispatcher ----------------------------
using ScanFwdSig = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                              const Tensor&, const Tensor&, const OptTensor&,
                                              const OptTensor&, const OptTensor&, bool);
using ScanBwdSig = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
    const OptTensor&, const OptTensor&, const OptTensor&, bool);
using MixFwdSig = Tensor(const Tensor&, const Tensor&, const OptTensor&, c10::string_view,
                         int64_t, int64_t);
using MixBwdSig = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                      const OptTensor&, c10::string_view, int64_t,
                                                      int64_t);

template <typename Sig>
c10::TypedOperatorHandle<Sig> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}
const c10::TypedOperatorHandle<ScanFwdSig>& scan_fwd_op() {
  static const auto op = find_op<ScanFwdSig>("dmm::selective_scan_fwd");
  return op;
}
const c10::TypedOperatorHandle<ScanBwdSig>& scan_bwd_op() {
  static const auto op = find_op<ScanBwdSig>("dmm::selective_scan_bwd");
  return op;
}
const c10::TypedOperatorHandle<MixFwdSig>& mix_fwd_op() {
  static const auto op = find_op<MixFwdSig>("dmm::modal_mix_fwd");
  return op;
}
const c10::TypedOperatorHandle<MixBwdSig>& mix_bwd_op() {
  static const auto op = find_op<MixBwdSig>("dmm::modal_mix_bwd");
  return op;
}

// ---- argument checks ---------------------------------------------------------------------------
std::string shape_str(at::IntArrayRef s) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << (s.size() == 1 ? ",)" : ")");
  return os.str();
}

// `formula` spells the expected shape in symbols, e.g. "(2*E, D)". `expected` is an ArrayRef (no
// allocation: the checks run on every step).
void check_param(const char* op, const Tensor& t, const char* name, const char* formula,
                 at::IntArrayRef expected, const Tensor& h) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is required; expected shape ", formula, " = ",
              shape_str(expected));
  TORCH_CHECK(t.sizes() == at::IntArrayRef(expected), op, ": ", name, " must be ", formula,
              " = ", shape_str(expected), "; got ", shape_str(t.sizes()));
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", name,
              " must be a floating-point tensor; got ", t.scalar_type());
  TORCH_CHECK(t.device() == h.device(), op, ": ", name, " is on ", t.device(),
              " but h is on ", h.device(), "; move all block parameters to h's device");
}

// Expected mixer weight shape for `kind` over width C: conv (M, W, C), line (M, C, W*C).
int64_t check_mixer_weight(const char* op, const Tensor& w, const char* name,
                           const std::string& kind, int64_t M, int64_t C, const Tensor& h) {
  TORCH_CHECK(w.dim() == 3, op, ": ", name, " must be ",
              kind == "conv" ? "(n_modalities, W, width)" : "(n_modalities, width, W*width)",
              " for a ", kind, " mixer; got ", shape_str(w.sizes()));
  int64_t W;
  if (kind == "conv") {
    W = w.size(1);
    check_param(op, w, name, "(n_modalities, W, width)", {M, W, C}, h);
  } else {
    TORCH_CHECK(C > 0 && w.size(2) % C == 0 && w.size(2) > 0, op, ": ", name,
                " must be (n_modalities, width, W*width) with width ", C,
                "; its last dim ", w.size(2), " is not a positive multiple of ", C);
    W = w.size(2) / C;
    check_param(op, w, name, "(n_modalities, width, W*width)", {M, C, W * C}, h);
  }
  TORCH_CHECK(W >= 1, op, ": ", name, " has a window of 0; it must be at least 1");
  return W;
}

// ---- dtype helpers -----------------------------------------------------------------------------
// Dtype of the scan parameters and of the SSM state for activations of dtype `cdt`.
at::ScalarType state_dtype(at::ScalarType cdt) {
  return cdt == at::kDouble ? at::kDouble : at::kFloat;
}
Tensor as(const Tensor& t, at::ScalarType dt) { return t.scalar_type() == dt ? t : t.to(dt); }
OptTensor as(const OptTensor& t, at::ScalarType dt) {
  return present(t) ? OptTensor(as(*t, dt)) : std::nullopt;
}
// Gradient of an absent optional input: numel 0, float32 (what the fake kernel in ops.py says).
Tensor absent_grad(const Tensor& like) { return at::empty({0}, like.options().dtype(at::kFloat)); }
// A = -exp(A_log) (E, N) in the state dtype.
Tensor scan_A(const Tensor& A_log, at::ScalarType cdt) {
  return at::exp(as(A_log, state_dtype(cdt))).neg_();
}

// (B, L, C) block layout <-> the scan op's (B, C, L): a strided view, never a copy.
Tensor tr(const Tensor& x) { return x.transpose(1, 2); }
// (B, L, C) -> (B * L, C): a view when the strides allow (always for the block's own tensors).
Tensor rows(const Tensor& x) { return x.flatten(0, x.dim() - 2); }  // (..., C) -> (rows, C), C may be 0

// Window mixer for one token: `cache` (B, W-1, C) holds the previous W-1 inputs, oldest first;
// `cur` (B, C). Returns (B, C) with modality m's filter and shifts `cur` into the cache.
Tensor step_mix(const Tensor& cache, const Tensor& cur, const Tensor& weight,
                const OptTensor& bias, const std::string& kind, int64_t m) {
  const int64_t B = cur.size(0), C = cur.size(1);
  const Tensor window = at::cat({cache, cur.unsqueeze(1)}, 1);  // (B, W, C)
  const int64_t W = window.size(1);
  Tensor y;
  if (kind == "conv") {
    y = (window * weight.select(0, m).unsqueeze(0)).sum(1);  // w_m (W, C)
  } else {
    y = at::linear(window.reshape({B, W * C}), weight.select(0, m));  // M_m (C, W*C)
  }
  if (present(bias)) y = y + bias->select(0, m);
  if (W > 1) cache.copy_(window.narrow(1, 1, W - 1));
  return y;
}

}  // namespace

// ---- public ------------------------------------------------------------------------------------
MixerSpec parse_mixer(c10::string_view mixer) {
  const std::string s(mixer);
  if (s == "conv" || s == "line") return {s, false};
  if (s == "double-conv") return {"conv", true};
  if (s == "double-line") return {"line", true};
  TORCH_CHECK(false, "metamamba_block: mixer must be one of \"conv\", \"line\", \"double-conv\", "
              "\"double-line\"; got \"", s, "\" (\"dense\" is mapped to \"line\" with "
              "n_modalities=1 by dmm_kernels.metamamba_block)");
}

namespace composite {

// The parameters as the block computes with them: matrices in the compute dtype `cdt`, the scan
// parameters D and dt_proj_bias in the state dtype (no copy when they already are).
BlockParams cast_params(const BlockParams& p, at::ScalarType cdt) {
  const auto sdt = state_dtype(cdt);
  return {as(p.norm1_weight, cdt), as(p.norm1_bias, cdt),    as(p.mixer1_weight, cdt),
          as(p.mixer1_bias, cdt),  as(p.norm2_weight, cdt),  as(p.norm2_bias, cdt),
          as(p.in_proj_weight, cdt), as(p.mixer2_weight, cdt), as(p.mixer2_bias, cdt),
          as(p.x_proj_weight, cdt), as(p.dt_proj_weight, cdt), as(p.dt_proj_bias, sdt),
          p.A_log,                   as(p.D, sdt),               as(p.out_proj_weight, cdt)};
}

BlockDims check_block_params(const char* op, const Tensor& h, const BlockParams& p,
                             const MixerSpec& spec, int64_t n_modalities) {
  TORCH_CHECK(n_modalities >= 1, op, ": n_modalities must be >= 1; got ", n_modalities);
  TORCH_CHECK(at::isFloatingType(h.scalar_type()), op,
              ": h must be a floating-point tensor; got ", h.scalar_type());
  TORCH_CHECK(p.A_log.defined() && p.A_log.dim() == 2, op,
              ": A_log must be (E, N) (inner width, state size); got ",
              p.A_log.defined() ? shape_str(p.A_log.sizes()) : std::string("None"));
  TORCH_CHECK(p.dt_proj_weight.defined() && p.dt_proj_weight.dim() == 2, op,
              ": dt_proj_weight must be (E, R) (inner width, dt rank); got ",
              p.dt_proj_weight.defined() ? shape_str(p.dt_proj_weight.sizes())
                                         : std::string("None"));
  BlockDims d;
  d.D = h.size(-1);
  d.E = p.A_log.size(0);
  d.N = p.A_log.size(1);
  d.R = p.dt_proj_weight.size(1);
  d.M = n_modalities;
  const int64_t M = d.M, Dm = d.D, E = d.E, N = d.N, R = d.R;
  check_param(op, p.norm1_weight, "norm1_weight", "(D,)", {Dm}, h);
  check_param(op, p.norm1_bias, "norm1_bias", "(D,)", {Dm}, h);
  d.W1 = check_mixer_weight(op, p.mixer1_weight, "mixer1_weight", spec.kind, M, Dm, h);
  if (present(p.mixer1_bias))
    check_param(op, *p.mixer1_bias, "mixer1_bias", "(n_modalities, D)", {M, Dm}, h);
  check_param(op, p.norm2_weight, "norm2_weight", "(D,)", {Dm}, h);
  check_param(op, p.norm2_bias, "norm2_bias", "(D,)", {Dm}, h);
  check_param(op, p.in_proj_weight, "in_proj_weight", "(2*E, D)", {2 * E, Dm}, h);
  if (spec.is_double) {
    TORCH_CHECK(present(p.mixer2_weight), op, ": mixer2_weight is required for a double mixer");
    d.W2 = check_mixer_weight(op, *p.mixer2_weight, "mixer2_weight", spec.kind, M, E, h);
    if (present(p.mixer2_bias))
      check_param(op, *p.mixer2_bias, "mixer2_bias", "(n_modalities, E)", {M, E}, h);
  } else {
    TORCH_CHECK(!present(p.mixer2_weight) && !present(p.mixer2_bias), op,
                ": mixer2_weight / mixer2_bias must be None for a single mixer; use a "
                "\"double-\" mixer to get a second mixer");
    d.W2 = 0;
  }
  check_param(op, p.x_proj_weight, "x_proj_weight", "(R + 2*N, E)", {R + 2 * N, E}, h);
  check_param(op, p.dt_proj_weight, "dt_proj_weight", "(E, R)", {E, R}, h);
  check_param(op, p.dt_proj_bias, "dt_proj_bias", "(E,)", {E}, h);
  check_param(op, p.A_log, "A_log", "(E, N)", {E, N}, h);
  check_param(op, p.D, "D", "(E,)", {E}, h);
  check_param(op, p.out_proj_weight, "out_proj_weight", "(D, E)", {Dm, E}, h);
  return d;
}

BlockDims check_block(const Tensor& h, const BlockParams& p, const BlockConfig& cfg) {
  TORCH_CHECK(h.dim() == 3, "metamamba_block: h must be (B, L, D); got ", shape_str(h.sizes()));
  return check_block_params("metamamba_block", h, p, cfg.mixer, cfg.n_modalities);
}

void check_saved(const char* op, const Tensor& h, const BlockSaved& s, const BlockDims& d,
                 const MixerSpec& spec) {
  const int64_t B = h.size(0), L = h.size(1), E = d.E, P = d.R + 2 * d.N;
  auto check = [&](const Tensor& x, const char* name, const char* formula,
                   at::IntArrayRef expected) {
    check_param(op, x, name, formula, expected, h);
    TORCH_CHECK(x.scalar_type() == h.scalar_type(), op, ": ", name, " must have h's dtype ",
                h.scalar_type(), " (the forward's output); got ", x.scalar_type());
  };
  check(s.h1, "h1", "(B, L, D)", {B, L, d.D});
  check(s.v, "v", "(B, L, D)", {B, L, d.D});
  check(s.xz, "xz", "(B, L, 2*E)", {B, L, 2 * E});
  if (spec.is_double) check(s.xm, "xm", "(B, L, E)", {B, L, E});
  check(s.xs, "xs", "(B, L, E)", {B, L, E});
  check(s.x_dbl, "x_dbl", "(B, L, R + 2*N)", {B, L, P});
  check(s.y, "y", "(B, L, E)", {B, L, E});
}

BlockFwdResult block_fwd(const Tensor& h_in, const BlockParams& params, const BlockConfig& cfg) {
  const auto d = check_block(h_in, params, cfg);
  const auto& spec = cfg.mixer;
  const int64_t Dm = d.D, E = d.E, N = d.N, R = d.R, M = d.M;
  const auto cdt = h_in.scalar_type();
  BlockSaved s;
  if (h_in.numel() == 0) {  // empty batch or sequence
    const int64_t B = h_in.size(0), L = h_in.size(1);
    auto empty = [&](int64_t width) { return at::empty({B, L, width}, h_in.options()); };
    s = {empty(Dm), empty(Dm), empty(2 * E), spec.is_double ? empty(E) : h_in.new_empty({0}),
         empty(E), empty(R + 2 * N), empty(E)};
    return fwd_result(empty(Dm), s);
  }
  const auto p = cast_params(params, cdt);
  const Tensor h = h_in.contiguous();
  const Tensor u = at::layer_norm(h, {Dm}, p.norm1_weight, p.norm1_bias, cfg.eps);   // (B, L, D)
  s.h1 = h + mix_fwd_op().call(u, p.mixer1_weight, p.mixer1_bias, spec.kind, M, 0);  // (B, L, D)
  s.v = at::layer_norm(s.h1, {Dm}, p.norm2_weight, p.norm2_bias, cfg.eps);           // (B, L, D)
  s.xz = at::linear(s.v, p.in_proj_weight);                                            // (B, L, 2E)
  const Tensor x0 = s.xz.narrow(-1, 0, E), z = s.xz.narrow(-1, E, E);                 // (B, L, E)
  s.xm = spec.is_double
             ? mix_fwd_op().call(x0, *p.mixer2_weight, p.mixer2_bias, spec.kind, M, 0)
             : h.new_empty({0});
  s.xs = at::silu(spec.is_double ? s.xm : x0);                                          // (B, L, E)
  s.x_dbl = at::linear(s.xs, p.x_proj_weight);                                  // (B, L, R + 2N)
  const Tensor delta = at::linear(s.x_dbl.narrow(-1, 0, R), p.dt_proj_weight);  // (B, L, E)
  // The scan reads the block layout through (B, C, L) views; its output has u's layout.
  const Tensor y_t = std::get<0>(scan_fwd_op().call(
      tr(s.xs), tr(delta), scan_A(p.A_log, cdt), tr(s.x_dbl.narrow(-1, R, N)),
      tr(s.x_dbl.narrow(-1, R + N, N)), p.D, tr(z), p.dt_proj_bias, /*delta_softplus=*/true));
  s.y = tr(y_t).contiguous();                                                      // (B, L, E)
  const Tensor out = cfg.residual()
                         ? at::addmm(rows(s.h1), rows(s.y), p.out_proj_weight.t())
                         : at::mm(rows(s.y), p.out_proj_weight.t());  // (B * L, D)
  return fwd_result(out.view(h.sizes()), s);
}

BlockDims check_bwd(const Tensor& dout, const Tensor& h, const BlockParams& p, const BlockSaved& s,
                    const BlockConfig& cfg) {
  constexpr const char* op = "metamamba_block_bwd";
  TORCH_CHECK(h.dim() == 3, op, ": h must be (B, L, D); got ", shape_str(h.sizes()));
  TORCH_CHECK(dout.sizes() == h.sizes(), op, ": dout must have h's shape ", shape_str(h.sizes()),
              "; got ", shape_str(dout.sizes()));
  const auto d = check_block_params(op, h, p, cfg.mixer, cfg.n_modalities);
  check_saved(op, h, s, d, cfg.mixer);
  return d;
}

std::vector<Tensor> zero_grads(const Tensor& h, const BlockParams& p) {
  auto z = [](const Tensor& x) { return at::zeros_like(x, at::MemoryFormat::Contiguous); };
  std::vector<Tensor> g{z(h)};
#define DMM_ZERO_GRAD_(T, name) \
  g.push_back(present(p.name) ? z(*OptTensor(p.name)) : absent_grad(h));
  DMM_BLOCK_PARAMS(DMM_ZERO_GRAD_)
#undef DMM_ZERO_GRAD_
  return g;
}

std::vector<Tensor> grads_list(const Tensor& dh, const BlockParams& grads, const BlockParams& p,
                               const Tensor& h) {
  std::vector<Tensor> g{as(dh, h.scalar_type())};
#define DMM_GRAD_(T, name) \
  g.push_back(present(p.name) ? as(*OptTensor(grads.name), OptTensor(p.name)->scalar_type()) \
                              : absent_grad(h));
  DMM_BLOCK_PARAMS(DMM_GRAD_)
#undef DMM_GRAD_
  return g;
}

std::pair<Tensor, Tensor> bwd_out_scan(const Tensor& g, const BlockParams& p, const BlockSaved& s,
                                       const BlockDims& d, BlockParams& grads) {
  const int64_t B = g.size(0), L = g.size(1), E = d.E, N = d.N, R = d.R;
  const auto cdt = g.scalar_type();
  // out = y @ W_out^T (+ h1)
  grads.out_proj_weight = at::mm(rows(g).t(), rows(s.y));              // (D, E)
  const Tensor dy = at::mm(rows(g), p.out_proj_weight).view({B, L, E});  // (B, L, E)

  // The scan, through (B, C, L) views of the block layout; delta (the rank-R dt_proj GEMM) is
  // recomputed rather than stored.
  const Tensor A = scan_A(p.A_log, cdt);
  const Tensor dt_low = s.x_dbl.narrow(-1, 0, R);                        // (B, L, R)
  const Tensor delta = at::linear(dt_low, p.dt_proj_weight);            // (B, L, E)
  const Tensor z = s.xz.narrow(-1, E, E);                                // (B, L, E)
  auto [dxs_t, ddelta_t, dA, dB_t, dC_t, dDskip, dz_t, ddt_bias] = scan_bwd_op().call(
      tr(dy), tr(s.xs), tr(delta), A, tr(s.x_dbl.narrow(-1, R, N)),
      tr(s.x_dbl.narrow(-1, R + N, N)), p.D, tr(z), p.dt_proj_bias, /*delta_softplus=*/true);
  grads.A_log = dA * A;  // A = -exp(A_log)  =>  dA/dA_log = A
  grads.D = dDskip;
  grads.dt_proj_bias = ddt_bias;

  // delta = dt_low @ W_dt^T;  x_dbl = xs @ W_x^T = [dt_low | B | C]
  const Tensor ddelta = tr(ddelta_t);                                       // (B, L, E)
  grads.dt_proj_weight = at::mm(rows(ddelta).t(), rows(dt_low));           // (E, R)
  const Tensor dx_dbl = at::cat({at::matmul(ddelta, p.dt_proj_weight), as(tr(dB_t), cdt),
                                 as(tr(dC_t), cdt)}, -1);                    // (B, L, R + 2N)
  grads.x_proj_weight = at::mm(rows(dx_dbl).t(), rows(s.xs));              // (R + 2N, E)
  const Tensor dxs = at::addmm(rows(tr(dxs_t)), rows(dx_dbl), p.x_proj_weight).view({B, L, E});
  return {dxs, tr(dz_t)};
}

Tensor bwd_silu_mix2(const Tensor& dxs, const Tensor& dz, const BlockParams& p,
                     const BlockSaved& s, const BlockDims& d, const MixerSpec& spec,
                     BlockParams& grads) {
  const int64_t E = d.E;
  const Tensor x0 = s.xz.narrow(-1, 0, E);
  const Tensor dxm = at::silu_backward(dxs, spec.is_double ? s.xm : x0);  // (B, L, E)
  Tensor dx0 = dxm;
  if (spec.is_double) {
    Tensor dm2w, dm2b;
    std::tie(dx0, dm2w, dm2b) =
        mix_bwd_op().call(dxm, x0, *p.mixer2_weight, p.mixer2_bias, spec.kind, d.M, 0);
    grads.mixer2_weight = dm2w;
    grads.mixer2_bias = dm2b;
  }
  return at::cat({dx0, as(dz, dxs.scalar_type())}, -1);  // (B, L, 2E)
}

Tensor bwd_in_proj(const Tensor& dxz, const BlockParams& p, const BlockSaved& s,
                   BlockParams& grads) {
  grads.in_proj_weight = at::mm(rows(dxz).t(), rows(s.v));                     // (2E, D)
  return at::mm(rows(dxz), p.in_proj_weight).view(s.v.sizes());                // (B, L, D)
}

Tensor bwd_preproj(const Tensor& dv, const Tensor& g, const Tensor& h, const BlockParams& p,
                   const BlockSaved& s, const BlockDims& d, const BlockConfig& cfg,
                   BlockParams& grads) {
  const int64_t Dm = d.D;
  // v = LN_2(h1) (its statistics recomputed)
  const auto stats2 = at::native_layer_norm(s.h1, {Dm}, p.norm2_weight, p.norm2_bias, cfg.eps);
  auto [dh1, dn2w, dn2b] = at::native_layer_norm_backward(
      dv, s.h1, {Dm}, std::get<1>(stats2), std::get<2>(stats2), p.norm2_weight, p.norm2_bias,
      {true, true, true});
  if (cfg.residual()) dh1.add_(g);  // out += h1

  // h1 = h + mixer_1(u), u = LN_1(h) (recomputed with its statistics)
  const auto [u, mean1, rstd1] =
      at::native_layer_norm(h, {Dm}, p.norm1_weight, p.norm1_bias, cfg.eps);
  auto [du, dm1w, dm1b] =
      mix_bwd_op().call(dh1, u, p.mixer1_weight, p.mixer1_bias, cfg.mixer.kind, d.M, 0);
  auto [dh, dn1w, dn1b] = at::native_layer_norm_backward(
      du, h, {Dm}, mean1, rstd1, p.norm1_weight, p.norm1_bias, {true, true, true});
  grads.norm1_weight = dn1w;
  grads.norm1_bias = dn1b;
  grads.mixer1_weight = dm1w;
  grads.mixer1_bias = dm1b;
  grads.norm2_weight = dn2w;
  grads.norm2_bias = dn2b;
  return dh.add_(dh1);
}

std::vector<Tensor> block_bwd(const Tensor& dout, const Tensor& h_in, const BlockParams& params,
                              const BlockSaved& s, const BlockConfig& cfg) {
  const auto d = check_bwd(dout, h_in, params, s, cfg);
  if (h_in.numel() == 0) return zero_grads(h_in, params);  // empty batch or sequence
  const auto cdt = h_in.scalar_type();
  const auto p = cast_params(params, cdt);
  const Tensor h = h_in.contiguous();
  const Tensor g = as(dout, cdt).contiguous();  // (B, L, D)
  BlockParams grads;
  const auto [dxs, dz] = bwd_out_scan(g, p, s, d, grads);
  const Tensor dxz = bwd_silu_mix2(dxs, dz, p, s, d, cfg.mixer, grads);
  const Tensor dv = bwd_in_proj(dxz, p, s, grads);
  const Tensor dh = bwd_preproj(dv, g, h, p, s, d, cfg, grads);
  return grads_list(dh, grads, params, h_in);
}

BlockDims check_step(const Tensor& h_t, const StepCache& cache, const BlockParams& p,
                     const Tensor& A, const MixerSpec& spec, int64_t n_modalities,
                     int64_t position, const char* op) {
  TORCH_CHECK(h_t.dim() == 2, op, ": h_t must be one token (B, D); got ", shape_str(h_t.sizes()));
  const auto d = check_block_params(op, h_t, p, spec, n_modalities);
  TORCH_CHECK(position >= 0, op, ": position must be >= 0; got ", position);
  const int64_t B = h_t.size(0), Dm = d.D, E = d.E, N = d.N;
  const auto cdt = h_t.scalar_type();

  // Caches: activations in h_t's dtype, the SSM state in fp32 (fp64 allowed for fp64 h_t).
  auto check_cache = [&](const Tensor& c, const char* name, const char* formula,
                         at::IntArrayRef expected) {
    check_param(op, c, name, formula, expected, h_t);
    TORCH_CHECK(c.scalar_type() == cdt, op, ": ", name, " must have h_t's dtype ", cdt,
                "; got ", c.scalar_type());
  };
  check_cache(cache.mixer1, "mixer1_cache", "(B, W-1, D)", {B, d.W1 - 1, Dm});
  if (spec.is_double) {
    TORCH_CHECK(present(cache.mixer2), op, ": mixer2_cache (B, W-1, E) = ",
                shape_str({B, d.W2 - 1, E}), " is required for a double mixer");
    check_cache(*cache.mixer2, "mixer2_cache", "(B, W-1, E)", {B, d.W2 - 1, E});
  } else {
    TORCH_CHECK(!present(cache.mixer2), op, ": mixer2_cache must be None for a single mixer");
  }
  check_param(op, cache.ssm_state, "ssm_state", "(B, E, N)", {B, E, N}, h_t);
  const auto sdt = cache.ssm_state.scalar_type();
  TORCH_CHECK(sdt == at::kFloat || (sdt == at::kDouble && cdt == at::kDouble), op,
              ": ssm_state must be float32; got ", sdt);
  check_param(op, A, "A", "(E, N)", {E, N}, h_t);
  TORCH_CHECK(A.scalar_type() == state_dtype(cdt), op, ": A = -exp(A_log) must be ",
              state_dtype(cdt), " for h_t of dtype ", cdt, "; got ", A.scalar_type());
  return d;
}

Tensor step(const Tensor& h_t, const StepCache& cache, const BlockParams& params, const Tensor& A,
            const BlockConfig& cfg, int64_t position) {
  const auto& spec = cfg.mixer;
  const auto d = check_step(h_t, cache, params, A, spec, cfg.n_modalities, position);
  const int64_t Dm = d.D, E = d.E, N = d.N, R = d.R;
  const auto cdt = h_t.scalar_type();
  const auto sdt = cache.ssm_state.scalar_type();
  const auto p = cast_params(params, cdt);
  const int64_t m = position % cfg.n_modalities;

  const Tensor u = at::layer_norm(h_t, {Dm}, p.norm1_weight, p.norm1_bias, cfg.eps);  // (B, D)
  const Tensor h1 = h_t + step_mix(cache.mixer1, u, p.mixer1_weight, p.mixer1_bias, spec.kind, m);
  const Tensor v = at::layer_norm(h1, {Dm}, p.norm2_weight, p.norm2_bias, cfg.eps);
  const Tensor xz = at::linear(v, p.in_proj_weight);                                 // (B, 2E)
  const Tensor x0 = xz.narrow(1, 0, E);
  const Tensor z = xz.narrow(1, E, E);
  const Tensor xm = spec.is_double ? step_mix(*cache.mixer2, x0, *p.mixer2_weight, p.mixer2_bias,
                                              spec.kind, m)
                                   : x0;
  const Tensor xs = at::silu(xm);                                                    // (B, E)
  const Tensor x_dbl = at::linear(xs, p.x_proj_weight);                              // (B, R + 2N)
  const Tensor delta = at::softplus(as(at::linear(x_dbl.narrow(1, 0, R), p.dt_proj_weight), sdt) +
                                    as(p.dt_proj_bias, sdt));                       // (B, E)
  const Tensor Bc = as(x_dbl.narrow(1, R, N), sdt);                                 // (B, N)
  const Tensor Cc = as(x_dbl.narrow(1, R + N, N), sdt);                             // (B, N)
  const Tensor xf = as(xs, sdt);

  // s = exp(delta A) * s + delta * B * x ;  y = <s, C> + D x ;  y *= SiLU(z)
  const Tensor& state = cache.ssm_state;
  state.mul_(at::exp(delta.unsqueeze(-1) * as(A, sdt)))
      .add_((delta * xf).unsqueeze(-1) * Bc.unsqueeze(1));
  Tensor y = at::matmul(state, Cc.unsqueeze(-1)).squeeze(-1) + as(p.D, sdt) * xf;  // (B, E)
  y = y * at::silu(as(z, sdt));
  Tensor out = at::linear(as(y, cdt), p.out_proj_weight);                          // (B, D)
  if (cfg.residual()) out = out + h1;
  return out;
}

}  // namespace composite
}  // namespace dmm
