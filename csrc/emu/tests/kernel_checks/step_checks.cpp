// step_kernels.cuh (DMM_STEP_HEADER): metamamba_step's stages in bfloat16 / float16 against a
// same-precision reference.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "checks.h"
#include DMM_STEP_HEADER

namespace kernel_checks {

namespace {

// A half type and the kernel's tolerance for it (see step_half).
struct HalfType {
  const char* name;
  DType dt;
  double tol;
};
double round_to(DType dt, double v) {
  return dt == DType::kHalf ? double(__half2float(__float2half(float(v))))
                            : double(__bfloat162float(__float2bfloat16(float(v))));
}
uint16_t half_bits(DType dt, double v) {
  return dt == DType::kHalf ? __half_as_ushort(__float2half(float(v)))
                            : __bfloat16_as_ushort(__float2bfloat16(float(v)));
}

}  // namespace

// One token through the block (the step's stages for "conv": in_proj, x_proj, scan, out) in
// bfloat16 and float16 against a float64 reference that rounds to the half type exactly where the
// kernels (and the composite) store an intermediate. N = 64: the scan stage's 32 lanes of a channel
// each hold states n and n + 32. The SSM state entering the step is +K for n < 32 and -K above, and
// the C rows of x_proj are equal, so each lane's terms of y = sum_n s_n C_n cancel: partial sums of
// size K against a small total. Accumulated in float32 (as the kernel does) that costs nothing;
// accumulated in the half type every addition rounds at the scale of K (fault.half_accumulation).
// Measured on this case (max |out - reference| / max |reference|, the same under every seed):
// accumulated in float32 (the kernels) bf16 0, fp16 9.2e-5 (a flipped rounding of a stored
// intermediate; the single-kernel step before the staged one, on this case at N = 16: 4.7e-4 /
// 1.2e-4); each lane's part accumulated in the half type (fault.half_accumulation) bf16 1.0,
// fp16 0.15. Tolerances: about twice the larger of the two kernels' errors.
void step_half() {
  const int Bn = 2, D = 40, E = 80, N = 64, R = 3, W = 4, M = 3, m = 1, P = R + 2 * N;
  const double eps = 1e-5, K = 256;
  // Parameters and inputs (double; the half-typed ones rounded below).
  const std::vector<double> h = randn(Bn * D, 41), cache = randn(Bn * (W - 1) * D, 42),
                            n1w = randn(D, 43, 0.1, 1.0), n1b = randn(D, 44, 0.1),
                            m1w = randn(M * W * D, 45, 0.3), m1b = randn(M * D, 46, 0.1),
                            n2w = randn(D, 47, 0.1, 1.0), n2b = randn(D, 48, 0.1),
                            w_in = randn(2 * E * D, 49, 1 / std::sqrt(double(D))),
                            w_dt = randn(E * R, 51, 0.5), w_out = randn(D * E, 52, 1 / std::sqrt(double(E))),
                            dt_bias = randn(E, 53, 0.3, -1.0), Dsk = randn(E, 54);
  std::vector<double> w_x = randn(P * E, 50, 1 / std::sqrt(double(E)));
  for (int n = 1; n < N; ++n)  // equal C rows
    std::copy_n(&w_x[(R + N) * E], E, &w_x[(R + N + n) * E]);
  std::vector<double> A_log(E * N), state0(Bn * E * N);
  for (int e = 0; e < E; ++e)
    for (int n = 0; n < N; ++n) A_log[e * N + n] = std::log(0.5 + 0.05 * e);  // equal over n
  for (int i = 0; i < Bn * E * N; ++i) state0[i] = (i % N < 32 ? K : -K);
  for (const HalfType ht : {HalfType{"bf16", DType::kBFloat16, 1e-3}, HalfType{"fp16", DType::kHalf, 2.5e-4}}) {
    const DType act = ht.dt;
    auto rnd = [&](double v) { return round_to(act, v); };
    auto bits = [&](const std::vector<double>& v) {
      std::vector<uint16_t> b(v.size());
      for (size_t i = 0; i < v.size(); ++i) b[i] = half_bits(act, v[i]);
      return b;
    };
    auto half_in = [&](const std::vector<uint16_t>& b, const char* name) {
      return make_in_ptr(b.data(), act, int64_t(b.size()), name);
    };
    auto as_act = [&](const std::vector<double>& v) {
      std::vector<double> r(v.size());
      for (size_t i = 0; i < v.size(); ++i) r[i] = rnd(v[i]);
      return r;
    };
    const auto hb = bits(h), n1wb = bits(n1w), n1bb = bits(n1b), m1wb = bits(m1w), m1bb = bits(m1b),
               n2wb = bits(n2w), n2bb = bits(n2b), w_inb = bits(w_in), w_xb = bits(w_x),
               w_dtb = bits(w_dt), w_outb = bits(w_out);
    std::vector<float> Af(A_log.size());  // A = -exp(A_log), as metamamba_step takes it
    for (size_t i = 0; i < Af.size(); ++i) Af[i] = float(-std::exp(A_log[i]));
    const std::vector<float> dt_biasf(dt_bias.begin(), dt_bias.end()), Dskf(Dsk.begin(), Dsk.end());
    // ---- the reference, rounding where the kernel stores in the half type
    const auto H = as_act(h), C1 = as_act(cache), N1w = as_act(n1w), N1b = as_act(n1b),
               M1w = as_act(m1w), M1b = as_act(m1b), N2w = as_act(n2w), N2b = as_act(n2b),
               Win = as_act(w_in), Wx = as_act(w_x), Wdt = as_act(w_dt), Wout = as_act(w_out);
    std::vector<double> want_out(Bn * D), want_cache(Bn * (W - 1) * D), want_state(Bn * E * N);
    auto layernorm = [&](const double* x, const std::vector<double>& w, const std::vector<double>& b,
                         double* y) {
      double mean = 0, var = 0;
      for (int d = 0; d < D; ++d) mean += x[d] / D;
      for (int d = 0; d < D; ++d) var += (x[d] - mean) * (x[d] - mean) / D;
      for (int d = 0; d < D; ++d) y[d] = rnd((x[d] - mean) / std::sqrt(var + eps) * w[d] + b[d]);
    };
    for (int b = 0; b < Bn; ++b) {
      std::vector<double> win(W * D), h1(D), v(D), xz(2 * E), xs(E), xd(P), ys(E);
      std::copy_n(&C1[b * (W - 1) * D], (W - 1) * D, win.begin());
      layernorm(&H[b * D], N1w, N1b, &win[(W - 1) * D]);
      std::copy_n(&win[D], (W - 1) * D, &want_cache[b * (W - 1) * D]);
      for (int d = 0; d < D; ++d) {
        double s = M1b[m * D + d];
        for (int k = 0; k < W; ++k) s += M1w[(m * W + k) * D + d] * win[k * D + d];
        h1[d] = rnd(H[b * D + d] + rnd(s));
      }
      layernorm(h1.data(), N2w, N2b, v.data());
      for (int r = 0; r < 2 * E; ++r) {
        double s = 0;
        for (int d = 0; d < D; ++d) s += Win[r * D + d] * v[d];
        xz[r] = rnd(s);
      }
      for (int e = 0; e < E; ++e) xs[e] = rnd(xz[e] * sigmoid(xz[e]));
      for (int r = 0; r < P; ++r) {
        double s = 0;
        for (int e = 0; e < E; ++e) s += Wx[r * E + e] * xs[e];
        xd[r] = rnd(s);
      }
      for (int e = 0; e < E; ++e) {
        double dt = 0;
        for (int r = 0; r < R; ++r) dt += Wdt[e * R + r] * xd[r];
        const double delta = softplus(rnd(dt) + double(dt_biasf[e]));
        double y = double(Dskf[e]) * xs[e];
        for (int n = 0; n < N; ++n) {
          const size_t i = (size_t(b) * E + e) * N + n;
          const double s = std::exp(delta * double(Af[e * N + n])) * state0[i] +
                           delta * xd[R + n] * xs[e];
          want_state[i] = s;
          y += s * xd[R + N + n];
        }
        ys[e] = rnd(y * xz[E + e] * sigmoid(xz[E + e]));
      }
      for (int d = 0; d < D; ++d) {
        double s = 0;
        for (int e = 0; e < E; ++e) s += Wout[d * E + e] * ys[e];
        want_out[b * D + d] = rnd(s);
      }
    }
    const std::string what = std::string("step_half ") + ht.name;
    for_seeds(what, [&](uint64_t seed) {
      const block::StepWs lay(D, E, P);
      std::vector<uint16_t> outb(Bn * D), cacheb = bits(cache), ws(size_t(Bn) * lay.row);
      std::vector<float> state(state0.begin(), state0.end());
      block::StepArgs a;
      a.lay = lay;
      a.ws = make_out_ptr(ws.data(), act, int64_t(ws.size()), "workspace", Writes::kSome);
      a.h = half_in(hb, "h_t");
      a.out = make_out_ptr(outb.data(), act, int64_t(outb.size()), "out", Writes::kSome);
      a.cache1 = make_out_ptr(cacheb.data(), act, int64_t(cacheb.size()), "mixer1_cache", Writes::kSome);
      a.state = make_out_ptr(state.data(), DType::kFloat, int64_t(state.size()), "ssm_state", Writes::kSome);
      a.n1w = half_in(n1wb, "norm1_weight"); a.n1b = half_in(n1bb, "norm1_bias");
      a.m1w = half_in(m1wb, "mixer1_weight"); a.m1b = half_in(m1bb, "mixer1_bias");
      a.n2w = half_in(n2wb, "norm2_weight"); a.n2b = half_in(n2bb, "norm2_bias");
      a.w_in = half_in(w_inb, "in_proj_weight"); a.w_x = half_in(w_xb, "x_proj_weight");
      a.w_dt = half_in(w_dtb, "dt_proj_weight");
      a.dt_bias = make_in_ptr(dt_biasf.data(), DType::kFloat, E, "dt_proj_bias");
      a.A = make_in_ptr(Af.data(), DType::kFloat, E * N, "A");
      a.Dskip = make_in_ptr(Dskf.data(), DType::kFloat, E, "D");
      a.w_out = half_in(w_outb, "out_proj_weight");
      a.D = D; a.E = E; a.N = N; a.R = R; a.W1 = W; a.W2 = 0; a.m = m;
      a.line = false; a.is_double = false; a.residual = false; a.eps = eps;
      // The stages as block.cu's launch_step runs them for "conv" at N = 64 (32 lanes per channel).
      using block::kStepRows;
      using block::kStepThreads;
      using block::StepSmem;
      auto grid = [&](int rows, int per_cta) { return dim3(unsigned((rows + per_cta - 1) / per_cta), unsigned(Bn)); };
      DMM_LAUNCH(grid(2 * E, kStepRows), kStepThreads, sizeof(float) * StepSmem::in_proj(D, W, false),
                 nullptr, block::step_in_proj_kernel<float>)(a);
      DMM_LAUNCH(grid(P, kStepRows), kStepThreads, sizeof(float) * StepSmem::x_proj(E), nullptr,
                 block::step_x_proj_kernel<float>)(a);
      DMM_LAUNCH(grid(E, kStepThreads / 32), kStepThreads, sizeof(float) * StepSmem::scan(P), nullptr,
                 (block::step_scan_kernel<float, 32>))(a);
      block::StepArgs last = a;  // the last stage writes all of out
      last.out = make_out_ptr(outb.data(), act, int64_t(outb.size()), "out");
      DMM_LAUNCH(grid(D, kStepRows), kStepThreads, sizeof(float) * StepSmem::out(E), nullptr,
                 block::step_out_kernel<float>)(last);
      auto decode = [&](const std::vector<uint16_t>& b) {
        std::vector<double> v(b.size());
        for (size_t i = 0; i < b.size(); ++i)
          v[i] = act == DType::kHalf ? double(__half2float(__ushort_as_half(b[i])))
                                     : double(__bfloat162float(__ushort_as_bfloat16(b[i])));
        return v;
      };
      const std::vector<double> got = decode(outb);
      double err = 0, scale = 0;
      for (size_t i = 0; i < got.size(); ++i) {
        const double e = std::fabs(got[i] - want_out[i]);
        if (!(e <= err)) err = e;
        scale = std::max(scale, std::fabs(want_out[i]));
      }
      report(what + " out", seed, err / scale, ht.tol, "max error / output scale");
      compare(what + " mixer1_cache", seed, decode(cacheb), want_cache, 0.0);
      compare(what + " ssm_state", seed, std::vector<double>(state.begin(), state.end()), want_state, 1e-6);
    });
  }
}

}  // namespace kernel_checks
