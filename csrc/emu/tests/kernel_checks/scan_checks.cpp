// selective_scan.cuh (DMM_SCAN_HEADER: the real header or a fault's copy) against naive float64
// references: the forward, and every gradient of the backward.
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
  // The host logic of selective_scan.cu (scan_config / scan_params) for float64.
  ScanParams params(bool backward, size_t& smem, int& npl) const {
    ScanParams p;
    p.u = in(u, "u"); p.delta = in(delta, "delta"); p.A = in(A, "A"); p.B = in(B, "B");
    p.C = in(C, "C"); p.D = in(D, "D"); p.z = in(z, "z"); p.delta_bias = in(bias, "delta_bias");
    p.batch = batch; p.dim = E; p.len = L; p.dstate = N; p.n_groups = 1; p.dim_per_group = E;
    p.lanes = 8;
    while (p.lanes < N && p.lanes < 32) p.lanes *= 2;
    npl = 1;
    while (npl < (N + p.lanes - 1) / p.lanes) npl *= 2;
    p.chans = kScanThreads / p.lanes;
    for (p.chunk = 64; p.chunk > 1; p.chunk /= 2)
      if (ScanSmem(N, p.chans, p.chunk, npl, backward).total * sizeof(double) <= size_t(kScanSmemBytes)) break;
    smem = size_t(ScanSmem(N, p.chans, p.chunk, npl, backward).total) * sizeof(double);
    p.n_chunks = (L + p.chunk - 1) / p.chunk;
    p.blocks_per_group = (E + p.chans - 1) / p.chans;
    p.delta_softplus = true;
    return p;
  }
};

// E = 18 is no multiple of the channels per block (4 at N = 40): the last block has idle slots;
// N = 40: 2 states per lane; L = 70 and 150 cross the forward's chunks of 64 (the backward's are 8).
// One batch row, then two.
const ScanCase& scan_case(int i) {
  static const ScanCase cases[] = {ScanCase(1, 18, 150, 40), ScanCase(2, 18, 70, 40)};
  return cases[i];
}

}  // namespace

void scan_fwd() {
  for (int ci = 0; ci < 2; ++ci) {
    const ScanCase& c = scan_case(ci);
    const std::vector<double> want = c.forward();
    const std::string what = "scan_fwd batch " + std::to_string(c.batch);
    for_seeds(what, [&](uint64_t seed) {
      size_t smem;
      int npl;
      ScanParams p = c.params(false, smem, npl);
      std::vector<double> o(want.size()), last(size_t(c.batch) * c.E * c.N);
      p.out = out(o, "out");
      p.last_state = out(last, "last_state");
      const unsigned grid = unsigned(c.batch * p.blocks_per_group);
      DMM_LAUNCH(grid, kScanThreads, smem, nullptr, selective_scan_fwd_kernel<2, double>)(p);
      compare(what, seed, o, want);
    });
  }
}

// Every gradient against the reverse-mode reference. The first case (one channel pair of a block,
// N = 16: 16 lanes per channel, so two channels share a warp) puts the block's channels in one warp.
void scan_bwd() {
  const ScanCase cases[] = {ScanCase(1, 2, 40, 16), ScanCase(2, 18, 70, 40)};
  for (const ScanCase& c : cases) {
    const size_t n = size_t(c.batch) * c.E * c.L;
    const std::vector<double> g = randn(n, 9);
    const ScanGrads want = c.backward(g);
    const std::string what = "scan_bwd N " + std::to_string(c.N);
    for_seeds(what, [&](uint64_t seed) {
      size_t smem;
      int npl;
      ScanParams p = c.params(true, smem, npl);
      ScanGrads got{std::vector<double>(n), std::vector<double>(n),
                    std::vector<double>(c.A.size(), 0.0), std::vector<double>(c.B.size(), 0.0),
                    std::vector<double>(c.C.size(), 0.0), std::vector<double>(c.E, 0.0),
                    std::vector<double>(n), std::vector<double>(c.E, 0.0)};
      std::vector<double> states(size_t(c.batch) * c.E * p.n_chunks * c.N);
      p.dout = in(g, "dout");
      p.du = out(got.du, "du"); p.ddelta = out(got.ddelta, "ddelta"); p.dz = out(got.dz, "dz");
      p.dA_acc = acc(got.dA, "dA_acc"); p.dB_acc = acc(got.dB, "dB_acc"); p.dC_acc = acc(got.dC, "dC_acc");
      p.dD_acc = acc(got.dD, "dD_acc"); p.ddelta_bias_acc = acc(got.dbias, "ddelta_bias_acc");
      p.chunk_states = acc(states, "chunk_states");
      const unsigned grid = unsigned(c.batch * p.blocks_per_group);
      if (npl == 2) DMM_LAUNCH(grid, kScanThreads, smem, nullptr, selective_scan_bwd_kernel<2, double>)(p);
      else DMM_LAUNCH(grid, kScanThreads, smem, nullptr, selective_scan_bwd_kernel<1, double>)(p);
      const std::pair<const char*, std::pair<const std::vector<double>*, const std::vector<double>*>> all[] = {
          {"du", {&got.du, &want.du}}, {"ddelta", {&got.ddelta, &want.ddelta}},
          {"dA", {&got.dA, &want.dA}}, {"dB", {&got.dB, &want.dB}}, {"dC", {&got.dC, &want.dC}},
          {"dD", {&got.dD, &want.dD}}, {"dz", {&got.dz, &want.dz}}, {"ddelta_bias", {&got.dbias, &want.dbias}}};
      for (const auto& [name, gw] : all) compare(what + " " + name, seed, *gw.first, *gw.second);
    });
  }
}

}  // namespace kernel_checks
