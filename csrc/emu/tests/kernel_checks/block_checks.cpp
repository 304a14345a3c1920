// block_kernels.cuh (DMM_BLOCK_HEADER) against naive references: LayerNorm rows, the fused scan, and
// the step in bfloat16 / float16 against a same-precision reference.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "checks.h"
#include DMM_BLOCK_HEADER

namespace kernel_checks {

// ---- block kernels -----------------------------------------------------------------------------------
// LayerNorm rows (ln_rows_kernel, the "line" path) with the residual sum: rows x D.
void block_ln() {
  const int rows = 7, D = 96;
  const std::vector<double> x = randn(rows * D, 21), add = randn(rows * D, 22), w = randn(D, 23),
                            bias = randn(D, 24);
  std::vector<double> want_y(rows * D), want_s(rows * D);
  for (int r = 0; r < rows; ++r) {
    double mean = 0, var = 0;
    for (int d = 0; d < D; ++d) mean += (want_s[r * D + d] = x[r * D + d] + add[r * D + d]) / D;
    for (int d = 0; d < D; ++d) var += (want_s[r * D + d] - mean) * (want_s[r * D + d] - mean) / D;
    for (int d = 0; d < D; ++d)
      want_y[r * D + d] = (want_s[r * D + d] - mean) / std::sqrt(var + 1e-5) * w[d] + bias[d];
  }
  for_seeds("block_ln", [&](uint64_t seed) {
    std::vector<double> y(rows * D), s(rows * D);
    DMM_LAUNCH(2, 64, 0, nullptr, block::ln_rows_kernel<double>)(
        in(x, "x"), in(add, "add"), in(w, "norm_weight"), in(bias, "norm_bias"), out(s, "sum"),
        out(y, "y"), int64_t(rows), D, 1e-5);
    compare("block_ln y", seed, y, want_y);
    compare("block_ln sum", seed, s, want_s);
  });
}

// The fused scan of the block (scan_kernel): dt_proj + softplus + scan + D skip + SiLU(z) gating,
// B x L tokens, E channels (not a multiple of the 32 channels per block), x_dbl staged in chunks
// of T = 10 < L tokens.
void block_scan() {
  const int Bn = 2, L = 24, E = 40, N = 16, R = 3, P = R + 2 * N, T = 10;
  const std::vector<double> xs = randn(Bn * L * E, 31, 0.5), xdbl = randn(Bn * L * P, 32, 0.5),
                            xz = randn(Bn * L * 2 * E, 33, 0.5), wdt = randn(E * R, 34, 0.5),
                            dtb = randn(E, 35, 0.5), Alog = randn(E * N, 36, 0.5),
                            Dsk = randn(E, 37, 0.5);
  std::vector<double> want(Bn * L * E);
  for (int b = 0; b < Bn; ++b)
    for (int e = 0; e < E; ++e) {
      std::vector<double> s(N, 0.0);
      for (int t = 0; t < L; ++t) {
        const double* row = &xdbl[(b * L + t) * P];
        double dt = dtb[e];
        for (int r = 0; r < R; ++r) dt += wdt[e * R + r] * row[r];
        const double delta = softplus(dt), xv = xs[(b * L + t) * E + e];
        double y = Dsk[e] * xv;
        for (int n = 0; n < N; ++n) {
          s[n] = std::exp(-delta * std::exp(Alog[e * N + n])) * s[n] + delta * row[R + n] * xv;
          y += s[n] * row[R + N + n];
        }
        const double z = xz[(b * L + t) * 2 * E + E + e];
        want[(b * L + t) * E + e] = y * z * sigmoid(z);
      }
    }
  for_seeds("block_scan", [&](uint64_t seed) {
    std::vector<double> y(want.size());
    DMM_LAUNCH((dim3((E + 31) / 32, Bn)), 128, sizeof(double) * T * P, nullptr,
               (block::scan_kernel<double, 4, 4>))(
        in(xs, "xs"), in(xdbl, "x_dbl"), in(xz, "xz"), in(wdt, "dt_proj_weight"),
        in(dtb, "dt_proj_bias"), in(Alog, "A_log"), in(Dsk, "D"), out(y, "y"), L, E, N, R, T);
    compare("block_scan", seed, y, want);
  });
}

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

// One token through the block (step_kernel) in bfloat16 and float16 against a float64 reference
// that rounds to the half type exactly where the kernel (and the composite) store an intermediate.
// The SSM state entering the step alternates between +K and -K over n, and the C rows of x_proj are
// equal, so the terms of y = sum_n s_n C_n cancel pairwise: partial sums of size K against a small
// total. Accumulated in float32 (as the kernel does) that costs nothing; accumulated in the half
// type every addition rounds at the scale of K (fault.half_accumulation).
// Measured on this case (max |out - reference| / max |reference|, the same under every seed):
// accumulated in float32 (the kernel) bf16 4.7e-4, fp16 1.2e-4 (a flipped rounding of a stored
// intermediate); accumulated in the half type bf16 0.18, fp16 0.027. Tolerances: about twice the
// kernel's error.
void step_half() {
  const int Bn = 2, D = 40, E = 80, N = 16, R = 3, W = 4, M = 3, m = 1, P = R + 2 * N;
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
  for (int i = 0; i < Bn * E * N; ++i) state0[i] = (i % 2 == 0 ? K : -K);
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
    const std::vector<float> A_logf(A_log.begin(), A_log.end()), dt_biasf(dt_bias.begin(), dt_bias.end()),
        Dskf(Dsk.begin(), Dsk.end());
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
          const double s = std::exp(-delta * std::exp(double(A_logf[e * N + n]))) * state0[i] +
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
      std::vector<uint16_t> outb(Bn * D), cacheb = bits(cache);
      std::vector<float> state(state0.begin(), state0.end());
      block::StepArgs a;
      a.h = half_in(hb, "h_t");
      a.out = make_out_ptr(outb.data(), act, int64_t(outb.size()), "out");
      a.cache1 = make_out_ptr(cacheb.data(), act, int64_t(cacheb.size()), "mixer1_cache");
      a.state = make_out_ptr(state.data(), DType::kFloat, int64_t(state.size()), "ssm_state");
      a.n1w = half_in(n1wb, "norm1_weight"); a.n1b = half_in(n1bb, "norm1_bias");
      a.m1w = half_in(m1wb, "mixer1_weight"); a.m1b = half_in(m1bb, "mixer1_bias");
      a.n2w = half_in(n2wb, "norm2_weight"); a.n2b = half_in(n2bb, "norm2_bias");
      a.w_in = half_in(w_inb, "in_proj_weight"); a.w_x = half_in(w_xb, "x_proj_weight");
      a.w_dt = half_in(w_dtb, "dt_proj_weight");
      a.dt_bias = make_in_ptr(dt_biasf.data(), DType::kFloat, E, "dt_proj_bias");
      a.A_log = make_in_ptr(A_logf.data(), DType::kFloat, E * N, "A_log");
      a.Dskip = make_in_ptr(Dskf.data(), DType::kFloat, E, "D");
      a.w_out = half_in(w_outb, "out_proj_weight");
      a.D = D; a.E = E; a.N = N; a.R = R; a.W1 = W; a.W2 = 0; a.m = m;
      a.line = false; a.is_double = false; a.residual = false; a.eps = eps;
      const size_t smem = sizeof(float) * size_t(block::StepSmem(D, E, N, R, W, 0).total);
      DMM_LAUNCH(unsigned(Bn), 512, smem, nullptr, block::step_kernel<float>)(a);
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
