// selective_scan.cuh (DMM_SCAN_HEADER: the real header or a fault's copy) against naive float64
// references: the op's forward and every gradient of its backward in each launch configuration of
// selective_scan.cu, the forward in bfloat16 on cancelling sums, and the block mode (the (B, L, E)
// layout read in place, dt_proj folded in, A = -exp(A_log)) against central differences.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "checks.h"
#include DMM_SCAN_HEADER

namespace kernel_checks {

// ---- selective scan ---------------------------------------------------------------------------------
namespace {

// Configurations of selective_scan.cu: 16 items x 32 channels (long scans), 8 x 32, 4 x 32 (the
// float64 backward), 4 x 8 (large N).
template <int K, int C>
using ScanKT = ScanTraits<double, double, K, C>;

// Checked pointers to host vectors, as the strided views of the kernels.
template <typename T>
gptr<const void> cview(const std::vector<T>& v, const char* name, size_t offset = 0) {
  if (v.empty()) return nullptr;
  return ptr_cast<const void>(make_gptr<const T>(v.data(), int64_t(v.size()), name) + int64_t(offset));
}
template <typename T>
gptr<void> mview(std::vector<T>& v, const char* name, size_t offset = 0) {
  if (v.empty()) return nullptr;
  return ptr_cast<void>(make_gptr<T>(v.data(), int64_t(v.size()), name) + int64_t(offset));
}

struct ScanGrads {
  std::vector<double> du, ddelta, dA, dB, dC, dD, dz, dbias;
};

// u, delta, z (batch, E, L); A (E, N); B, C (batch, N, L); D, delta_bias (E); softplus on.
struct ScanCase {
  int batch, E, L, N;
  std::vector<double> u, delta, A, B, C, D, z, bias;
  ScanCase(int batch_, int E_, int L_, int N_) : batch(batch_), E(E_), L(L_), N(N_) {
    u = randn(size_t(batch) * E * L, 1);
    delta = randn(size_t(batch) * E * L, 2, 0.5, -1.0);
    A = randn(size_t(E) * N, 3);
    for (auto& a : A) a = -(std::fabs(a) + 0.1);
    B = randn(size_t(batch) * N * L, 4);
    C = randn(size_t(batch) * N * L, 5);
    D = randn(E, 6);
    z = randn(size_t(batch) * E * L, 7);
    bias = randn(E, 8, 0.3);
  }
  size_t x(int b, int e, int t) const { return (size_t(b) * E + e) * L + t; }
  size_t bc(int b, int n, int t) const { return (size_t(b) * N + n) * L + t; }
  double dt(int b, int e, int t) const { return softplus(delta[x(b, e, t)] + bias[e]); }

  // The states s[t][n] of channel (b, e), t = 0..L (s[0] = 0).
  std::vector<std::vector<double>> states(int b, int e) const {
    std::vector<std::vector<double>> s(L + 1, std::vector<double>(N, 0.0));
    for (int t = 0; t < L; ++t)
      for (int n = 0; n < N; ++n)
        s[t + 1][n] = std::exp(dt(b, e, t) * A[size_t(e) * N + n]) * s[t][n] +
                      dt(b, e, t) * B[bc(b, n, t)] * u[x(b, e, t)];
    return s;
  }
  // out (batch, E, L) = (y + D u) * silu(z), y_t = <s_t, C_t>.
  std::vector<double> forward() const {
    std::vector<double> o(size_t(batch) * E * L);
    for (int b = 0; b < batch; ++b)
      for (int e = 0; e < E; ++e) {
        const auto s = states(b, e);
        for (int t = 0; t < L; ++t) {
          double y = D[e] * u[x(b, e, t)];
          for (int n = 0; n < N; ++n) y += s[t + 1][n] * C[bc(b, n, t)];
          o[x(b, e, t)] = y * z[x(b, e, t)] * sigmoid(z[x(b, e, t)]);
        }
      }
    return o;
  }
  // Every gradient of sum(out * g), by reverse mode over the stored states.
  ScanGrads backward(const std::vector<double>& g) const {
    ScanGrads r{std::vector<double>(u.size(), 0.0), std::vector<double>(u.size(), 0.0),
                std::vector<double>(A.size(), 0.0), std::vector<double>(B.size(), 0.0),
                std::vector<double>(C.size(), 0.0), std::vector<double>(D.size(), 0.0),
                std::vector<double>(u.size(), 0.0), std::vector<double>(bias.size(), 0.0)};
    for (int b = 0; b < batch; ++b)
      for (int e = 0; e < E; ++e) {
        const auto s = states(b, e);
        std::vector<double> h(N, 0.0);  // dL/ds_t carried from t + 1
        for (int t = L - 1; t >= 0; --t) {
          const size_t i = x(b, e, t);
          double y = D[e] * u[i];
          for (int n = 0; n < N; ++n) y += s[t + 1][n] * C[bc(b, n, t)];
          const double sg = sigmoid(z[i]), gy = g[i] * z[i] * sg;
          r.dz[i] = g[i] * y * sg * (1 + z[i] * (1 - sg));
          r.dD[e] += gy * u[i];
          r.du[i] += gy * D[e];
          const double d = dt(b, e, t);
          double dd = 0;
          for (int n = 0; n < N; ++n) {
            const double a = A[size_t(e) * N + n], decay = std::exp(d * a);
            r.dC[bc(b, n, t)] += gy * s[t + 1][n];
            h[n] += gy * C[bc(b, n, t)];
            r.dA[size_t(e) * N + n] += h[n] * d * decay * s[t][n];
            dd += h[n] * (a * decay * s[t][n] + B[bc(b, n, t)] * u[i]);
            r.dB[bc(b, n, t)] += h[n] * d * u[i];
            r.du[i] += h[n] * d * B[bc(b, n, t)];
            h[n] *= decay;
          }
          r.ddelta[i] = dd * sigmoid(delta[i] + bias[e]);
          r.dbias[e] += r.ddelta[i];
        }
      }
    return r;
  }
  // The host logic of selective_scan.cu (scan_params / launch_scan) for float64, contiguous inputs.
  template <typename KT>
  ScanParams params(size_t& smem, bool backward) const {
    const int64_t sb = int64_t(E) * L;
    ScanParams p;
    p.u = View3{cview(u, "u"), sb, L, 1};
    p.delta = View3{cview(delta, "delta"), sb, L, 1};
    p.z = View3{cview(z, "z"), sb, L, 1};
    p.B = View4{cview(B, "B"), int64_t(N) * L, 0, L, 1};
    p.C = View4{cview(C, "C"), int64_t(N) * L, 0, L, 1};
    p.A = cview(A, "A"); p.D = cview(D, "D"); p.delta_bias = cview(bias, "delta_bias");
    p.batch = batch; p.dim = E; p.len = L; p.dstate = N; p.n_groups = 1; p.dim_per_group = E;
    p.n_chunks = (L + KT::kChunk - 1) / KT::kChunk;
    p.blocks_per_group = (E + KT::kChans - 1) / KT::kChans;
    p.delta_softplus = true;
    smem = size_t(ScanSmem(N, KT::kChans, KT::kChunk, KT::kRow, backward, 0).total) * sizeof(double);
    return p;
  }
};

// E = 37: no multiple of the 32 (or 8) channels of a block; L = 150 crosses chunks of 16, 32 and 64
// steps with a partial last chunk; N = 40 (2 batch rows, L = 70): the large-N configuration.
const ScanCase& scan_case(int i) {
  static const ScanCase cases[] = {ScanCase(2, 37, 150, 5), ScanCase(2, 18, 70, 40)};
  return cases[i];
}

template <typename KT>
void scan_fwd_config(const ScanCase& c, const std::string& what) {
  const std::vector<double> want = c.forward();
  std::vector<double> want_last(size_t(c.batch) * c.E * c.N);
  for (int b = 0; b < c.batch; ++b)
    for (int e = 0; e < c.E; ++e) {
      const auto s = c.states(b, e);
      for (int n = 0; n < c.N; ++n) want_last[(size_t(b) * c.E + e) * c.N + n] = s[c.L][n];
    }
  for_seeds(what, [&](uint64_t seed) {
    size_t smem;
    ScanParams p = c.params<KT>(smem, false);
    std::vector<double> o(want.size()), last(want_last.size());
    p.out = MutView3{mview(o, "out"), int64_t(c.E) * c.L, c.L, 1};
    p.last_state = make_gptr<void>(last.data(), int64_t(last.size() * sizeof(double)), "last_state", Writes::kAll);
    if (smem > 48 * 1024)
      cudaFuncSetAttribute(selective_scan_fwd_kernel<KT>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    DMM_LAUNCH(unsigned(c.batch * p.blocks_per_group), KT::kThreads, smem, nullptr,
               selective_scan_fwd_kernel<KT>)(p);
    compare(what, seed, o, want);
    compare(what + " last_state", seed, last, want_last);
  });
}

// Every gradient against the reverse-mode reference.
template <typename KT>
void scan_bwd_config(const ScanCase& c, const std::string& what) {
  const size_t n = size_t(c.batch) * c.E * c.L;
  const std::vector<double> g = randn(n, 9);
  const ScanGrads want = c.backward(g);
  for_seeds(what, [&](uint64_t seed) {
    size_t smem;
    ScanParams p = c.params<KT>(smem, true);
    ScanGrads got{std::vector<double>(n), std::vector<double>(n),
                  std::vector<double>(c.A.size(), 0.0), std::vector<double>(c.B.size(), 0.0),
                  std::vector<double>(c.C.size(), 0.0), std::vector<double>(c.E, 0.0),
                  std::vector<double>(n), std::vector<double>(c.E, 0.0)};
    std::vector<double> states(size_t(c.batch) * c.E * p.n_chunks * c.N);
    auto m3 = [&](std::vector<double>& x, const char* name) {
      return MutView3{mview(x, name), int64_t(c.E) * c.L, c.L, 1};
    };
    p.dout = View3{cview(g, "dout"), int64_t(c.E) * c.L, c.L, 1};
    p.du = m3(got.du, "du"); p.ddelta = m3(got.ddelta, "ddelta"); p.dz = m3(got.dz, "dz");
    p.dA = acc(got.dA, "dA"); p.dD = acc(got.dD, "dD"); p.ddelta_bias = acc(got.dbias, "ddelta_bias");
    p.dB = MutView4{mview(got.dB, "dB"), int64_t(c.N) * c.L, 0, c.L, 1};
    p.dC = MutView4{mview(got.dC, "dC"), int64_t(c.N) * c.L, 0, c.L, 1};
    p.chunk_states = acc(states, "chunk_states");
    if (smem > 48 * 1024)
      cudaFuncSetAttribute(selective_scan_bwd_kernel<KT>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    DMM_LAUNCH(unsigned(c.batch * p.blocks_per_group), KT::kThreads, smem, nullptr,
               selective_scan_bwd_kernel<KT>)(p);
    const std::pair<const char*, std::pair<const std::vector<double>*, const std::vector<double>*>> all[] = {
        {"du", {&got.du, &want.du}}, {"ddelta", {&got.ddelta, &want.ddelta}},
        {"dA", {&got.dA, &want.dA}}, {"dB", {&got.dB, &want.dB}}, {"dC", {&got.dC, &want.dC}},
        {"dD", {&got.dD, &want.dD}}, {"dz", {&got.dz, &want.dz}}, {"ddelta_bias", {&got.dbias, &want.dbias}}};
    for (const auto& [name, gw] : all) compare(what + " " + name, seed, *gw.first, *gw.second);
  });
}

}  // namespace

void scan_fwd() {
  scan_fwd_config<ScanKT<16, 32>>(scan_case(0), "scan_fwd 16x32");
  scan_fwd_config<ScanKT<8, 32>>(scan_case(0), "scan_fwd 8x32");
  scan_fwd_config<ScanKT<4, 8>>(scan_case(0), "scan_fwd 4x8");
  scan_fwd_config<ScanKT<4, 8>>(scan_case(1), "scan_fwd 4x8 N 40");
}

void scan_bwd() {
  scan_bwd_config<ScanKT<16, 32>>(scan_case(0), "scan_bwd 16x32");
  scan_bwd_config<ScanKT<8, 32>>(scan_case(0), "scan_bwd 8x32");
  scan_bwd_config<ScanKT<4, 32>>(scan_case(0), "scan_bwd 4x32");
  scan_bwd_config<ScanKT<4, 8>>(scan_case(0), "scan_bwd 4x8");
  scan_bwd_config<ScanKT<4, 8>>(scan_case(1), "scan_bwd 4x8 N 40");
}

// bfloat16 storage, float accumulation, on inputs whose y_t = sum_n s_n C_n cancels: the states
// come in pairs with equal A and B, C = (100 + c, -100) on a pair (c ~ 4), so y is a small
// difference of large terms.
// A bfloat16 accumulator of y loses it; float keeps it (the output's own rounding is 2^-8).
void scan_half() {
  using KT = ScanTraits<__nv_bfloat16, __nv_bfloat16, 16, 32>;
  const int batch = 1, E = 5, L = 90, N = 8;
  auto bf = [](std::vector<double> v) {
    std::vector<__nv_bfloat16> r(v.size());
    for (size_t i = 0; i < v.size(); ++i) r[i] = __float2bfloat16(float(v[i]));
    return r;
  };
  auto back = [](const std::vector<__nv_bfloat16>& v) {
    std::vector<double> r(v.size());
    for (size_t i = 0; i < v.size(); ++i) r[i] = __bfloat162float(v[i]);
    return r;
  };
  std::vector<double> B = randn(size_t(batch) * N * L, 31), C = randn(B.size(), 32, 4.0), A(E * N);
  const std::vector<double> Ah = randn(E * N, 33);
  for (int n = 0; n < N; ++n)
    for (int t = 0; t < L; ++t) {
      B[size_t(n) * L + t] = B[size_t(n / 2 * 2) * L + t];
      C[size_t(n) * L + t] = n % 2 ? -100.0 : 100.0 + C[size_t(n) * L + t];  // pairs: 100 + c, -100
    }
  for (int e = 0; e < E; ++e)
    for (int n = 0; n < N; ++n) A[size_t(e) * N + n] = -(std::fabs(Ah[size_t(e) * N + n / 2 * 2]) + 0.1);
  const auto u = bf(randn(size_t(batch) * E * L, 34)), delta = bf(randn(u.size(), 35, 0.5, -1.0)),
             Bh = bf(B), Ch = bf(C);
  const std::vector<float> Af(A.begin(), A.end());
  // float64 reference from the rounded inputs (no D, z, bias; softplus)
  const std::vector<double> ud = back(u), dd = back(delta), Bd = back(Bh), Cd = back(Ch);
  std::vector<double> want(u.size());
  double scale = 0;
  for (int e = 0; e < E; ++e) {
    std::vector<double> st(N, 0.0);
    for (int t = 0; t < L; ++t) {
      const size_t i = size_t(e) * L + t;
      const double d = std::log1p(std::exp(dd[i]));
      double y = 0;
      for (int n = 0; n < N; ++n) {
        st[n] = std::exp(d * double(Af[size_t(e) * N + n])) * st[n] + d * Bd[size_t(n) * L + t] * ud[i];
        y += st[n] * Cd[size_t(n) * L + t];
      }
      want[i] = y;
      scale = std::max(scale, std::fabs(y));
    }
  }
  for_seeds("scan_half", [&](uint64_t seed) {
    ScanParams p;
    p.u = View3{cview(u, "u"), int64_t(E) * L, L, 1};
    p.delta = View3{cview(delta, "delta"), int64_t(E) * L, L, 1};
    p.B = View4{cview(Bh, "B"), int64_t(N) * L, 0, L, 1};
    p.C = View4{cview(Ch, "C"), int64_t(N) * L, 0, L, 1};
    p.A = cview(Af, "A");
    p.batch = batch; p.dim = E; p.len = L; p.dstate = N; p.n_groups = 1; p.dim_per_group = E;
    p.n_chunks = (L + KT::kChunk - 1) / KT::kChunk;
    p.blocks_per_group = 1;
    p.delta_softplus = true;
    std::vector<__nv_bfloat16> out(u.size());
    p.out = MutView3{mview(out, "out"), int64_t(E) * L, L, 1};
    const size_t smem = size_t(ScanSmem(N, KT::kChans, KT::kChunk, KT::kRow, false, 0).total) * sizeof(float);
    DMM_LAUNCH(1u, KT::kThreads, smem, nullptr, selective_scan_fwd_kernel<KT>)(p);
    const std::vector<double> got = back(out);
    double err = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      const double e = std::fabs(got[i] - want[i]) / scale;
      if (!(e <= err)) err = e;  // NaN-propagating max
    }
    // bfloat16's output rounding is 4e-3 of the largest |y|
    report("scan_half", seed, err, 1e-2, "max error / max|y|");
  });
}

namespace {

// ---- the block's scan: (B, L, E) layout read in place, dt_proj folded in, A = -exp(A_log) ------------
struct BlockScanCase {
  int batch = 2, L = 75, E = 37, N = 3, R = 2, P = R + 2 * N;
  std::vector<double> xs, xdbl, z, w, bias, A_log, D;
  BlockScanCase() {
    xs = randn(size_t(batch) * L * E, 21);
    xdbl = randn(size_t(batch) * L * P, 22, 0.5);
    z = randn(size_t(batch) * L * E, 23);
    w = randn(size_t(E) * R, 24, 0.5);
    bias = randn(E, 25, 0.3, -0.5);
    A_log = randn(size_t(E) * N, 26, 0.3);
    D = randn(E, 27);
  }
  // sum(g * out) of the composite: delta = softplus(W dt_low + bias), scan, D skip, SiLU(z) gate.
  double loss(const std::vector<double>& g, std::vector<double>* out = nullptr) const {
    double total = 0;
    if (out) out->assign(xs.size(), 0.0);
    for (int b = 0; b < batch; ++b)
      for (int e = 0; e < E; ++e) {
        std::vector<double> s(N, 0.0);
        for (int t = 0; t < L; ++t) {
          const size_t row = size_t(b) * L + t, i = row * E + e;
          double dt = bias[e];
          for (int r = 0; r < R; ++r) dt += w[size_t(e) * R + r] * xdbl[row * P + r];
          dt = dt <= 20 ? std::log1p(std::exp(dt)) : dt;
          double y = D[e] * xs[i];
          for (int n = 0; n < N; ++n) {
            const double A = -std::exp(A_log[size_t(e) * N + n]);
            s[n] = std::exp(dt * A) * s[n] + dt * xdbl[row * P + R + n] * xs[i];
            y += s[n] * xdbl[row * P + R + N + n];
          }
          const double o = y * z[i] / (1 + std::exp(-z[i]));
          if (out) (*out)[i] = o;
          total += g[i] * o;
        }
      }
    return total;
  }
  // The kernels' parameters for block mode (block_scan_fwd / block_scan_bwd of selective_scan.cu).
  template <typename KT>
  ScanParams params(size_t& smem, bool backward) const {
    ScanParams p;
    const int64_t rowE = int64_t(L) * E;
    p.u = View3{cview(xs, "xs"), rowE, 1, E};
    p.z = View3{cview(z, "z"), rowE, 1, E};
    p.dt_low = View3{cview(xdbl, "x_dbl"), int64_t(L) * P, 1, P};
    p.B = View4{cview(xdbl, "x_dbl", R), int64_t(L) * P, 0, 1, P};
    p.C = View4{cview(xdbl, "x_dbl", R + N), int64_t(L) * P, 0, 1, P};
    p.w_dt = cview(w, "dt_proj_weight"); p.dt_rank = R; p.a_is_log = true;
    p.A = cview(A_log, "A_log"); p.D = cview(D, "D"); p.delta_bias = cview(bias, "dt_proj_bias");
    p.batch = batch; p.dim = E; p.len = L; p.dstate = N; p.n_groups = 1; p.dim_per_group = E;
    p.n_chunks = (L + KT::kChunk - 1) / KT::kChunk;
    p.blocks_per_group = (E + KT::kChans - 1) / KT::kChans;
    p.delta_softplus = true;
    smem = size_t(ScanSmem(N, KT::kChans, KT::kChunk, KT::kRow, backward, R).total) * sizeof(double);
    return p;
  }
};

}  // namespace

void block_scan() {
  using KT = ScanKT<8, 32>;
  BlockScanCase c;
  const size_t n = c.xs.size();
  const std::vector<double> g = randn(n, 28);
  std::vector<double> want;
  c.loss(g, &want);
  // central differences of sum(g * out) in x_dbl entries (dt_low, B, C columns) and in A_log
  struct Probe { std::vector<double>* v; size_t i; double want; };
  std::vector<Probe> probes;
  for (int t : {0, 31, 32, 74})
    for (int col : {1, c.R + 1, c.R + c.N + 2})
      probes.push_back({&c.xdbl, (size_t(1) * c.L + t) * c.P + col, 0});
  probes.push_back({&c.A_log, size_t(3) * c.N + 1, 0});
  probes.push_back({&c.A_log, size_t(36) * c.N + 2, 0});
  probes.push_back({&c.w, size_t(3) * c.R + 1, 0});
  probes.push_back({&c.w, size_t(36) * c.R + 0, 0});
  for (auto& pr : probes) {
    const double keep = (*pr.v)[pr.i];
    (*pr.v)[pr.i] = keep + 1e-6;
    const double lp = c.loss(g);
    (*pr.v)[pr.i] = keep - 1e-6;
    const double lm = c.loss(g);
    (*pr.v)[pr.i] = keep;
    pr.want = (lp - lm) / 2e-6;
  }
  for_seeds("block_scan", [&](uint64_t seed) {
    size_t smem;
    ScanParams p = c.params<KT>(smem, false);
    std::vector<double> out(n);
    p.out = MutView3{mview(out, "y"), int64_t(c.L) * c.E, 1, c.E};
    DMM_LAUNCH(unsigned(c.batch * p.blocks_per_group), KT::kThreads, smem, nullptr,
               selective_scan_fwd_kernel<KT>)(p);
    compare("block_scan fwd", seed, out, want);

    p = c.params<KT>(smem, true);
    std::vector<double> dxs(n), ddt(n), dz(n), dA(size_t(c.E) * c.N, 0.0), dD(c.E, 0.0),
        dbias(c.E, 0.0), dB(size_t(c.batch) * c.L * c.N, 0.0), dC(dB.size(), 0.0),
        dlow(size_t(c.batch) * c.L * c.R, 0.0), dw(size_t(c.E) * c.R, 0.0),
        states(size_t(c.batch) * c.E * p.n_chunks * c.N);
    auto m3 = [&](std::vector<double>& x, const char* name) {
      return MutView3{mview(x, name), int64_t(c.L) * c.E, 1, c.E};
    };
    p.dout = View3{cview(g, "dy"), int64_t(c.L) * c.E, 1, c.E};
    p.du = m3(dxs, "dxs"); p.ddelta = m3(ddt, "ddt"); p.dz = m3(dz, "dz");
    p.dA = acc(dA, "dA_log"); p.dD = acc(dD, "dD"); p.ddelta_bias = acc(dbias, "ddt_proj_bias");
    p.dB = MutView4{mview(dB, "dB"), int64_t(c.L) * c.N, 0, 1, c.N};  // (B, L, N)
    p.dC = MutView4{mview(dC, "dC"), int64_t(c.L) * c.N, 0, 1, c.N};
    p.ddt_low = MutView3{mview(dlow, "ddt_low"), int64_t(c.L) * c.R, 1, c.R};  // (B, L, R)
    p.dw_dt = acc(dw, "ddt_proj_weight");
    p.chunk_states = acc(states, "chunk_states");
    if (smem > 48 * 1024)
      cudaFuncSetAttribute(selective_scan_bwd_kernel<KT>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    DMM_LAUNCH(unsigned(c.batch * p.blocks_per_group), KT::kThreads, smem, nullptr,
               selective_scan_bwd_kernel<KT>)(p);
    std::vector<double> got, wanted;
    for (const auto& pr : probes) {
      wanted.push_back(pr.want);
      if (pr.v == &c.A_log) { got.push_back(dA[pr.i]); continue; }
      if (pr.v == &c.w) { got.push_back(dw[pr.i]); continue; }
      const size_t row = pr.i / c.P;
      const int col = int(pr.i % c.P);
      if (col < c.R) {  // d dt_low, and ddt @ W_dt alike
        double d = 0;
        for (int e = 0; e < c.E; ++e) d += ddt[row * c.E + e] * c.w[size_t(e) * c.R + col];
        got.push_back(dlow[row * c.R + col]);
        got.push_back(d);
        wanted.push_back(pr.want);
      } else if (col < c.R + c.N) {
        got.push_back(dB[row * c.N + col - c.R]);
      } else {
        got.push_back(dC[row * c.N + col - c.R - c.N]);
      }
    }
    compare("block_scan bwd (central differences)", seed, got, wanted, 1e-6);
    double dot = 0;  // <dxs, xs> = sum g * out (out is linear in xs)
    for (size_t i = 0; i < n; ++i) dot += dxs[i] * c.xs[i];
    double want_dot = 0;
    for (size_t i = 0; i < n; ++i) want_dot += g[i] * want[i];
    compare("block_scan <dxs,xs>", seed, {dot}, {want_dot}, 1e-8);
  });
}

}  // namespace kernel_checks

