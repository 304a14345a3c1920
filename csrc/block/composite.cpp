// Device-generic MetaMamba block: ATen ops plus the dmm scan / mixer ops via the dispatcher.
// Shapes: B batch, L tokens, D d_model, E inner width, N state size, R dt rank, W window.
#include "block/composite.h"

#include <ATen/core/dispatch/Dispatcher.h>

#include <sstream>
#include <vector>

namespace dmm::composite {
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

// `formula` spells the expected shape in symbols, e.g. "(2*E, D)".
void check_param(const char* op, const Tensor& t, const char* name, const char* formula,
                 std::vector<int64_t> expected, const Tensor& h) {
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
  return t.has_value() && t->defined() ? OptTensor(as(*t, dt)) : std::nullopt;
}
bool present(const OptTensor& t) { return t.has_value() && t->defined(); }
// Gradient of an absent optional input: numel 0, float32 (what the fake kernel in ops.py says).
Tensor absent_grad(const Tensor& like) { return at::empty({0}, like.options().dtype(at::kFloat)); }
// Gradient for an optional input: in its dtype, or numel 0 when it was absent.
Tensor opt_grad(const Tensor& g, const OptTensor& t, const Tensor& like) {
  if (!present(t)) return absent_grad(like);
  return as(g, t->scalar_type());
}

// ---- forward with the intermediates the backward needs -----------------------------------------
struct Params {  // in compute dtype; scan params in state dtype
  Tensor n1w, n1b, m1w, n2w, n2b, w_in, w_x, w_dt, w_out, A, D, dt_bias;
  OptTensor m1b, m2w, m2b;
};

Params cast_params(at::ScalarType cdt, const Tensor& norm1_weight, const Tensor& norm1_bias,
                   const Tensor& mixer1_weight, const OptTensor& mixer1_bias,
                   const Tensor& norm2_weight, const Tensor& norm2_bias,
                   const Tensor& in_proj_weight, const OptTensor& mixer2_weight,
                   const OptTensor& mixer2_bias, const Tensor& x_proj_weight,
                   const Tensor& dt_proj_weight, const Tensor& dt_proj_bias, const Tensor& A_log,
                   const Tensor& D, const Tensor& out_proj_weight) {
  const auto sdt = state_dtype(cdt);
  Params p;
  p.n1w = as(norm1_weight, cdt);
  p.n1b = as(norm1_bias, cdt);
  p.m1w = as(mixer1_weight, cdt);
  p.m1b = as(mixer1_bias, cdt);
  p.n2w = as(norm2_weight, cdt);
  p.n2b = as(norm2_bias, cdt);
  p.w_in = as(in_proj_weight, cdt);
  p.m2w = as(mixer2_weight, cdt);
  p.m2b = as(mixer2_bias, cdt);
  p.w_x = as(x_proj_weight, cdt);
  p.w_dt = as(dt_proj_weight, cdt);
  p.w_out = as(out_proj_weight, cdt);
  p.A = -at::exp(as(A_log, sdt));  // (E, N)
  p.D = as(D, sdt).contiguous();
  p.dt_bias = as(dt_proj_bias, sdt).contiguous();
  return p;
}

struct Acts {
  Tensor u, mean1, rstd1;  // LN1: (B, L, D), stats
  Tensor h1, v, mean2, rstd2;
  Tensor x0;               // in_proj x half, input of mixer2 (B, L, E)
  Tensor xm;               // pre-SiLU x (B, L, E)
  Tensor xs;               // SiLU(xm) (B, L, E)
  Tensor dt_low;           // (B, L, R)
  // Scan inputs in mamba-ssm layout, contiguous: (B, E, L) / (B, N, L).
  Tensor xs_t, delta_t, B_t, C_t, z_t;
  Tensor y_t;              // scan output (B, E, L)
  Tensor out;              // (B, L, D) incl. residual
};

Acts forward_acts(const Tensor& h, const Params& p, const MixerSpec& spec, const BlockDims& d,
                  int64_t M, bool residual, double eps) {
  Acts a;
  const int64_t D = d.D, E = d.E, N = d.N, R = d.R;
  std::tie(a.u, a.mean1, a.rstd1) = at::native_layer_norm(h, {D}, p.n1w, p.n1b, eps);
  const Tensor mixed = mix_fwd_op().call(a.u, p.m1w, p.m1b, spec.kind, M, 0);  // (B, L, D)
  a.h1 = h + mixed;
  std::tie(a.v, a.mean2, a.rstd2) = at::native_layer_norm(a.h1, {D}, p.n2w, p.n2b, eps);
  const Tensor xz = at::linear(a.v, p.w_in);  // (B, L, 2E)
  a.x0 = xz.narrow(-1, 0, E).contiguous();    // (B, L, E)
  const Tensor z = xz.narrow(-1, E, E);       // (B, L, E)
  a.xm = spec.is_double ? mix_fwd_op().call(a.x0, *p.m2w, p.m2b, spec.kind, M, 0) : a.x0;
  a.xs = at::silu(a.xm);
  const Tensor x_dbl = at::linear(a.xs, p.w_x);  // (B, L, R + 2N)
  a.dt_low = x_dbl.narrow(-1, 0, R);             // (B, L, R)
  const Tensor delta = at::linear(a.dt_low, p.w_dt);  // (B, L, E); bias + softplus in the scan
  a.xs_t = a.xs.transpose(1, 2).contiguous();
  a.delta_t = delta.transpose(1, 2).contiguous();
  a.B_t = x_dbl.narrow(-1, R, N).transpose(1, 2).contiguous();      // (B, N, L)
  a.C_t = x_dbl.narrow(-1, R + N, N).transpose(1, 2).contiguous();  // (B, N, L)
  a.z_t = z.transpose(1, 2).contiguous();
  a.y_t = std::get<0>(scan_fwd_op().call(a.xs_t, a.delta_t, p.A, a.B_t, a.C_t, p.D, a.z_t,
                                         p.dt_bias, /*delta_softplus=*/true));
  a.out = at::linear(a.y_t.transpose(1, 2), p.w_out);  // (B, L, D)
  if (residual) a.out = a.out + a.h1;
  return a;
}

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

BlockDims check_block_params(
    const char* op, const Tensor& h, const Tensor& norm1_weight, const Tensor& norm1_bias,
    const Tensor& mixer1_weight, const OptTensor& mixer1_bias, const Tensor& norm2_weight,
    const Tensor& norm2_bias, const Tensor& in_proj_weight, const OptTensor& mixer2_weight,
    const OptTensor& mixer2_bias, const Tensor& x_proj_weight, const Tensor& dt_proj_weight,
    const Tensor& dt_proj_bias, const Tensor& A_log, const Tensor& D,
    const Tensor& out_proj_weight, const MixerSpec& spec, int64_t n_modalities) {
  TORCH_CHECK(n_modalities >= 1, op, ": n_modalities must be >= 1; got ", n_modalities);
  TORCH_CHECK(at::isFloatingType(h.scalar_type()), op,
              ": h must be a floating-point tensor; got ", h.scalar_type());
  TORCH_CHECK(A_log.defined() && A_log.dim() == 2, op,
              ": A_log must be (E, N) (inner width, state size); got ",
              A_log.defined() ? shape_str(A_log.sizes()) : std::string("None"));
  TORCH_CHECK(dt_proj_weight.defined() && dt_proj_weight.dim() == 2, op,
              ": dt_proj_weight must be (E, R) (inner width, dt rank); got ",
              dt_proj_weight.defined() ? shape_str(dt_proj_weight.sizes()) : std::string("None"));
  BlockDims d;
  d.D = h.size(-1);
  d.E = A_log.size(0);
  d.N = A_log.size(1);
  d.R = dt_proj_weight.size(1);
  d.M = n_modalities;
  const int64_t M = d.M, Dm = d.D, E = d.E, N = d.N, R = d.R;
  check_param(op, norm1_weight, "norm1_weight", "(D,)", {Dm}, h);
  check_param(op, norm1_bias, "norm1_bias", "(D,)", {Dm}, h);
  d.W1 = check_mixer_weight(op, mixer1_weight, "mixer1_weight", spec.kind, M, Dm, h);
  if (present(mixer1_bias))
    check_param(op, *mixer1_bias, "mixer1_bias", "(n_modalities, D)", {M, Dm}, h);
  check_param(op, norm2_weight, "norm2_weight", "(D,)", {Dm}, h);
  check_param(op, norm2_bias, "norm2_bias", "(D,)", {Dm}, h);
  check_param(op, in_proj_weight, "in_proj_weight", "(2*E, D)", {2 * E, Dm}, h);
  if (spec.is_double) {
    TORCH_CHECK(present(mixer2_weight), op, ": mixer2_weight is required for a double mixer");
    d.W2 = check_mixer_weight(op, *mixer2_weight, "mixer2_weight", spec.kind, M, E, h);
    if (present(mixer2_bias))
      check_param(op, *mixer2_bias, "mixer2_bias", "(n_modalities, E)", {M, E}, h);
  } else {
    TORCH_CHECK(!present(mixer2_weight) && !present(mixer2_bias), op,
                ": mixer2_weight / mixer2_bias must be None for a single mixer; use a "
                "\"double-\" mixer to get a second mixer");
    d.W2 = 0;
  }
  check_param(op, x_proj_weight, "x_proj_weight", "(R + 2*N, E)", {R + 2 * N, E}, h);
  check_param(op, dt_proj_weight, "dt_proj_weight", "(E, R)", {E, R}, h);
  check_param(op, dt_proj_bias, "dt_proj_bias", "(E,)", {E}, h);
  check_param(op, A_log, "A_log", "(E, N)", {E, N}, h);
  check_param(op, D, "D", "(E,)", {E}, h);
  check_param(op, out_proj_weight, "out_proj_weight", "(D, E)", {Dm, E}, h);
  return d;
}

Tensor metamamba_block_fwd(
    const Tensor& h, const Tensor& norm1_weight, const Tensor& norm1_bias,
    const Tensor& mixer1_weight, const OptTensor& mixer1_bias, const Tensor& norm2_weight,
    const Tensor& norm2_bias, const Tensor& in_proj_weight, const OptTensor& mixer2_weight,
    const OptTensor& mixer2_bias, const Tensor& x_proj_weight, const Tensor& dt_proj_weight,
    const Tensor& dt_proj_bias, const Tensor& A_log, const Tensor& D,
    const Tensor& out_proj_weight, c10::string_view mixer, int64_t n_modalities,
    bool residual_ssm, double eps) {
  const auto spec = parse_mixer(mixer);
  TORCH_CHECK(h.dim() == 3, "metamamba_block: h must be (B, L, D); got ", shape_str(h.sizes()));
  const auto d = check_block_params("metamamba_block", h, norm1_weight, norm1_bias, mixer1_weight,
                                    mixer1_bias, norm2_weight, norm2_bias, in_proj_weight,
                                    mixer2_weight, mixer2_bias, x_proj_weight, dt_proj_weight,
                                    dt_proj_bias, A_log, D, out_proj_weight, spec, n_modalities);
  if (h.numel() == 0) return at::empty_like(h, at::MemoryFormat::Contiguous);
  const auto p = cast_params(h.scalar_type(), norm1_weight, norm1_bias, mixer1_weight, mixer1_bias,
                             norm2_weight, norm2_bias, in_proj_weight, mixer2_weight, mixer2_bias,
                             x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D,
                             out_proj_weight);
  const bool residual = residual_ssm || spec.is_double;
  return forward_acts(h.contiguous(), p, spec, d, n_modalities, residual, eps).out;
}

BlockGrads metamamba_block_bwd(
    const Tensor& dout, const Tensor& h, const Tensor& norm1_weight, const Tensor& norm1_bias,
    const Tensor& mixer1_weight, const OptTensor& mixer1_bias, const Tensor& norm2_weight,
    const Tensor& norm2_bias, const Tensor& in_proj_weight, const OptTensor& mixer2_weight,
    const OptTensor& mixer2_bias, const Tensor& x_proj_weight, const Tensor& dt_proj_weight,
    const Tensor& dt_proj_bias, const Tensor& A_log, const Tensor& D,
    const Tensor& out_proj_weight, c10::string_view mixer, int64_t n_modalities,
    bool residual_ssm, double eps) {
  const auto spec = parse_mixer(mixer);
  TORCH_CHECK(h.dim() == 3, "metamamba_block_bwd: h must be (B, L, D); got ",
              shape_str(h.sizes()));
  TORCH_CHECK(dout.sizes() == h.sizes(), "metamamba_block_bwd: dout must have h's shape ",
              shape_str(h.sizes()), "; got ", shape_str(dout.sizes()));
  const auto d = check_block_params("metamamba_block_bwd", h, norm1_weight, norm1_bias,
                                    mixer1_weight, mixer1_bias, norm2_weight, norm2_bias,
                                    in_proj_weight, mixer2_weight, mixer2_bias, x_proj_weight,
                                    dt_proj_weight, dt_proj_bias, A_log, D, out_proj_weight, spec,
                                    n_modalities);
  const int64_t Dm = d.D, E = d.E, N = d.N, R = d.R, M = d.M;
  const auto cdt = h.scalar_type();
  const bool residual = residual_ssm || spec.is_double;

  if (h.numel() == 0) {  // empty batch or sequence: all gradients are zero
    auto z = [](const Tensor& t) { return at::zeros_like(t, at::MemoryFormat::Contiguous); };
    auto zo = [&](const OptTensor& t) { return present(t) ? z(*t) : absent_grad(h); };
    return {z(h), z(norm1_weight), z(norm1_bias), z(mixer1_weight), zo(mixer1_bias),
            z(norm2_weight), z(norm2_bias), z(in_proj_weight), zo(mixer2_weight),
            zo(mixer2_bias), z(x_proj_weight), z(dt_proj_weight), z(dt_proj_bias), z(A_log),
            z(D), z(out_proj_weight)};
  }

  const auto p = cast_params(cdt, norm1_weight, norm1_bias, mixer1_weight, mixer1_bias,
                             norm2_weight, norm2_bias, in_proj_weight, mixer2_weight, mixer2_bias,
                             x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D,
                             out_proj_weight);
  const Tensor hc = h.contiguous();
  const Tensor g = as(dout, cdt).contiguous();  // (B, L, D)
  const Acts a = forward_acts(hc, p, spec, d, M, /*residual=*/false, eps);

  // out = y^T @ W_out^T
  const Tensor y = a.y_t.transpose(1, 2);                                  // (B, L, E)
  const Tensor dw_out = at::mm(g.reshape({-1, Dm}).t(), y.reshape({-1, E}));  // (D, E)
  const Tensor dy_t = at::matmul(g, p.w_out).transpose(1, 2).contiguous();   // (B, E, L)

  auto [dxs_t, ddelta_t, dA, dB_t, dC_t, dDskip, dz_t, ddt_bias] = scan_bwd_op().call(
      dy_t, a.xs_t, a.delta_t, p.A, a.B_t, a.C_t, p.D, a.z_t, p.dt_bias, true);
  const Tensor dA_log = dA * p.A;  // A = -exp(A_log)  =>  dA/dA_log = A

  // delta = dt_low @ W_dt^T
  const Tensor ddelta = ddelta_t.transpose(1, 2);                                   // (B, L, E)
  const Tensor dw_dt = at::mm(ddelta.reshape({-1, E}).t(), a.dt_low.reshape({-1, R}));  // (E, R)
  const Tensor ddt_low = at::matmul(ddelta, p.w_dt);                                // (B, L, R)

  // x_dbl = xs @ W_x^T = [dt_low, B, C]
  const Tensor dx_dbl = at::cat({ddt_low, dB_t.transpose(1, 2).to(cdt),
                                 dC_t.transpose(1, 2).to(cdt)}, -1);  // (B, L, R + 2N)
  const Tensor dw_x = at::mm(dx_dbl.reshape({-1, R + 2 * N}).t(), a.xs.reshape({-1, E}));
  const Tensor dxs = dxs_t.transpose(1, 2) + at::matmul(dx_dbl, p.w_x);  // (B, L, E)
  const Tensor dxm = at::silu_backward(dxs, a.xm);                       // (B, L, E)

  Tensor dx0 = dxm, dm2w, dm2b;
  if (spec.is_double) {
    std::tie(dx0, dm2w, dm2b) =
        mix_bwd_op().call(dxm.contiguous(), a.x0, *p.m2w, p.m2b, spec.kind, M, 0);
  }

  // xz = v @ W_in^T
  const Tensor dxz = at::cat({dx0, dz_t.transpose(1, 2).to(cdt)}, -1);           // (B, L, 2E)
  const Tensor dw_in = at::mm(dxz.reshape({-1, 2 * E}).t(), a.v.reshape({-1, Dm}));  // (2E, D)
  const Tensor dv = at::matmul(dxz, p.w_in);                                     // (B, L, D)

  auto [dh1, dn2w, dn2b] = at::native_layer_norm_backward(
      dv, a.h1, {Dm}, a.mean2, a.rstd2, p.n2w, p.n2b, {true, true, true});
  if (residual) dh1 = dh1 + g;  // out += h1

  // h1 = h + mixer1(LN1(h))
  auto [du, dm1w, dm1b] = mix_bwd_op().call(dh1.contiguous(), a.u, p.m1w, p.m1b, spec.kind, M, 0);
  auto [dh_ln, dn1w, dn1b] = at::native_layer_norm_backward(
      du, hc, {Dm}, a.mean1, a.rstd1, p.n1w, p.n1b, {true, true, true});
  const Tensor dh = dh1 + dh_ln;

  return {as(dh, h.scalar_type()),
          as(dn1w, norm1_weight.scalar_type()),
          as(dn1b, norm1_bias.scalar_type()),
          as(dm1w, mixer1_weight.scalar_type()),
          opt_grad(dm1b, mixer1_bias, h),
          as(dn2w, norm2_weight.scalar_type()),
          as(dn2b, norm2_bias.scalar_type()),
          as(dw_in, in_proj_weight.scalar_type()),
          spec.is_double ? opt_grad(dm2w, mixer2_weight, h) : absent_grad(h),
          spec.is_double ? opt_grad(dm2b, mixer2_bias, h) : absent_grad(h),
          as(dw_x, x_proj_weight.scalar_type()),
          as(dw_dt, dt_proj_weight.scalar_type()),
          as(ddt_bias, dt_proj_bias.scalar_type()),
          as(dA_log, A_log.scalar_type()),
          as(dDskip, D.scalar_type()),
          as(dw_out, out_proj_weight.scalar_type())};
}

BlockDims check_step(
    const Tensor& h_t, const Tensor& mixer1_cache, const OptTensor& mixer2_cache,
    const Tensor& ssm_state, const Tensor& norm1_weight, const Tensor& norm1_bias,
    const Tensor& mixer1_weight, const OptTensor& mixer1_bias, const Tensor& norm2_weight,
    const Tensor& norm2_bias, const Tensor& in_proj_weight, const OptTensor& mixer2_weight,
    const OptTensor& mixer2_bias, const Tensor& x_proj_weight, const Tensor& dt_proj_weight,
    const Tensor& dt_proj_bias, const Tensor& A_log, const Tensor& D,
    const Tensor& out_proj_weight, c10::string_view mixer, int64_t n_modalities,
    int64_t position) {
  constexpr const char* op = "metamamba_step";
  const auto spec = parse_mixer(mixer);
  TORCH_CHECK(h_t.dim() == 2, op, ": h_t must be one token (B, D); got ", shape_str(h_t.sizes()));
  const auto d = check_block_params(op, h_t, norm1_weight, norm1_bias, mixer1_weight, mixer1_bias,
                                    norm2_weight, norm2_bias, in_proj_weight, mixer2_weight,
                                    mixer2_bias, x_proj_weight, dt_proj_weight, dt_proj_bias,
                                    A_log, D, out_proj_weight, spec, n_modalities);
  TORCH_CHECK(position >= 0, op, ": position must be >= 0; got ", position);
  const int64_t B = h_t.size(0), Dm = d.D, E = d.E, N = d.N;
  const auto cdt = h_t.scalar_type();

  // Caches: activations in h_t's dtype, the SSM state in fp32 (fp64 allowed for fp64 h_t).
  auto check_cache = [&](const Tensor& c, const char* name, const char* formula,
                         std::vector<int64_t> expected) {
    check_param(op, c, name, formula, std::move(expected), h_t);
    TORCH_CHECK(c.scalar_type() == cdt, op, ": ", name, " must have h_t's dtype ", cdt,
                "; got ", c.scalar_type());
  };
  check_cache(mixer1_cache, "mixer1_cache", "(B, W-1, D)", {B, d.W1 - 1, Dm});
  if (spec.is_double) {
    TORCH_CHECK(present(mixer2_cache), op, ": mixer2_cache (B, W-1, E) = ",
                shape_str({B, d.W2 - 1, E}), " is required for a double mixer");
    check_cache(*mixer2_cache, "mixer2_cache", "(B, W-1, E)", {B, d.W2 - 1, E});
  } else {
    TORCH_CHECK(!present(mixer2_cache), op, ": mixer2_cache must be None for a single mixer");
  }
  check_param(op, ssm_state, "ssm_state", "(B, E, N)", {B, E, N}, h_t);
  const auto sdt = ssm_state.scalar_type();
  TORCH_CHECK(sdt == at::kFloat || (sdt == at::kDouble && cdt == at::kDouble), op,
              ": ssm_state must be float32; got ", sdt);
  return d;
}

Tensor metamamba_step(
    const Tensor& h_t, const Tensor& mixer1_cache, const OptTensor& mixer2_cache,
    const Tensor& ssm_state, const Tensor& norm1_weight, const Tensor& norm1_bias,
    const Tensor& mixer1_weight, const OptTensor& mixer1_bias, const Tensor& norm2_weight,
    const Tensor& norm2_bias, const Tensor& in_proj_weight, const OptTensor& mixer2_weight,
    const OptTensor& mixer2_bias, const Tensor& x_proj_weight, const Tensor& dt_proj_weight,
    const Tensor& dt_proj_bias, const Tensor& A_log, const Tensor& D,
    const Tensor& out_proj_weight, c10::string_view mixer, int64_t n_modalities,
    bool residual_ssm, double eps, int64_t position) {
  const auto spec = parse_mixer(mixer);
  const auto d = check_step(h_t, mixer1_cache, mixer2_cache, ssm_state, norm1_weight, norm1_bias,
                            mixer1_weight, mixer1_bias, norm2_weight, norm2_bias, in_proj_weight,
                            mixer2_weight, mixer2_bias, x_proj_weight, dt_proj_weight,
                            dt_proj_bias, A_log, D, out_proj_weight, mixer, n_modalities, position);
  const int64_t Dm = d.D, E = d.E, N = d.N, R = d.R;
  const auto cdt = h_t.scalar_type();
  const auto sdt = ssm_state.scalar_type();

  const auto p = cast_params(cdt, norm1_weight, norm1_bias, mixer1_weight, mixer1_bias,
                             norm2_weight, norm2_bias, in_proj_weight, mixer2_weight, mixer2_bias,
                             x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D,
                             out_proj_weight);
  const int64_t m = position % n_modalities;

  const Tensor u = at::layer_norm(h_t, {Dm}, p.n1w, p.n1b, eps);            // (B, D)
  const Tensor h1 = h_t + step_mix(mixer1_cache, u, p.m1w, p.m1b, spec.kind, m);
  const Tensor v = at::layer_norm(h1, {Dm}, p.n2w, p.n2b, eps);
  const Tensor xz = at::linear(v, p.w_in);                                  // (B, 2E)
  const Tensor x0 = xz.narrow(1, 0, E);
  const Tensor z = xz.narrow(1, E, E);
  const Tensor xm =
      spec.is_double ? step_mix(*mixer2_cache, x0, *p.m2w, p.m2b, spec.kind, m) : x0;
  const Tensor xs = at::silu(xm);                                           // (B, E)
  const Tensor x_dbl = at::linear(xs, p.w_x);                               // (B, R + 2N)
  const Tensor delta = at::softplus(
      as(at::linear(x_dbl.narrow(1, 0, R), p.w_dt), sdt) + as(p.dt_bias, sdt));  // (B, E)
  const Tensor Bc = as(x_dbl.narrow(1, R, N), sdt);                        // (B, N)
  const Tensor Cc = as(x_dbl.narrow(1, R + N, N), sdt);                    // (B, N)
  const Tensor xf = as(xs, sdt);
  const Tensor A = as(p.A, sdt);                                           // (E, N)

  // s = exp(delta A) * s + delta * B * x ;  y = <s, C> + D x ;  y *= SiLU(z)
  const Tensor dA = at::exp(delta.unsqueeze(-1) * A);                      // (B, E, N)
  ssm_state.mul_(dA).add_((delta * xf).unsqueeze(-1) * Bc.unsqueeze(1));
  Tensor y = at::matmul(ssm_state, Cc.unsqueeze(-1)).squeeze(-1) + as(p.D, sdt) * xf;  // (B, E)
  y = y * at::silu(as(z, sdt));
  Tensor out = at::linear(as(y, cdt), p.w_out);                            // (B, D)
  if (residual_ssm || spec.is_double) out = out + h1;
  return out;
}

}  // namespace dmm::composite
