// The real kernels of csrc/cuda (selective_scan.cuh, modal_mix.cuh), compiled as host C++ by the
// emulator without torch, run against naive float64 references under several schedule seeds.
//
// CMake builds this file once with the unchanged headers (ctest `kernel_checks.*`: must pass, also
// under ASan / UBSan) and once per deliberately broken copy of a header (ctest `fault_*`: a removed
// __syncthreads, an off-by-one loop bound, a full-mask shuffle in a divergent branch, a shared
// memory layout one row short); each of those must be reported (PASS_REGULAR_EXPRESSION: MISMATCH
// from the comparison, `dmm-emu:` from the emulator, or ASan's report). The headers come from
// DMM_SCAN_HEADER / DMM_MIX_HEADER (paths of the unchanged or the patched copies).
//
//   kernel_checks NAME   NAME: scan_fwd | scan_bwd | block_scan | scan_half | conv_fwd | conv_bwd
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "emu/launch.h"
namespace dmm { namespace cuda { DMM_EMU_DYNAMIC_SHARED(smem_raw); } }
#include DMM_SCAN_HEADER
#include DMM_MIX_HEADER

using namespace dmm::cuda;

namespace {

const uint64_t kSeeds[] = {0, 1, 2, 3};

std::vector<double> randn(size_t n, uint32_t seed, double scale = 1.0, double shift = 0.0) {
  std::mt19937 g(seed);
  std::normal_distribution<double> nd;
  std::vector<double> v(n);
  for (auto& x : v) x = nd(g) * scale + shift;
  return v;
}
InPtr in(const std::vector<double>& v) { return {v.empty() ? nullptr : v.data(), DType::kDouble}; }
OutPtr out(std::vector<double>& v) { return {v.data(), DType::kDouble}; }

// Compares and prints; returns false on a mismatch (or a NaN).
bool compare(const char* what, uint64_t seed, const std::vector<double>& got,
             const std::vector<double>& want, double tol = 1e-9) {
  double err = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double e = std::fabs(got[i] - want[i]) / (1.0 + std::fabs(want[i]));
    if (!(e <= err)) err = e;  // NaN-propagating max
  }
  const bool ok = err <= tol;
  std::printf("%s seed %llu: max rel error %.3g%s\n", what, (unsigned long long)seed, err,
              ok ? "" : "  MISMATCH");
  return ok;
}

// ---- selective scan ---------------------------------------------------------------------------------
// Configurations of selective_scan.cu: 16 items x 32 channels (long scans), 8 x 32, 4 x 32 (the
// float64 backward), 4 x 8 (large N).
template <int K, int C>
using ScanKT = ScanTraits<double, double, K, C>;

struct ScanCase {
  int batch = 2, E = 37, L = 150, N = 5;  // E not a multiple of 32 channels; L crosses chunks of
                                          // 16, 32 and 64 steps with a partial last chunk
  std::vector<double> u, delta, A, B, C, D, z, bias;
  ScanCase() {
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
  double dt(int b, int e, int t) const {
    const double x = delta[(size_t(b) * E + e) * L + t] + bias[e];
    return x <= 20 ? std::log1p(std::exp(x)) : x;
  }
  // out (batch, E, L) of the scan with D, z, delta_bias, softplus; the final states (batch, E, N).
  std::vector<double> reference(std::vector<double>* last = nullptr) const {
    std::vector<double> o(size_t(batch) * E * L);
    if (last) last->assign(size_t(batch) * E * N, 0.0);
    for (int b = 0; b < batch; ++b)
      for (int e = 0; e < E; ++e) {
        std::vector<double> s(N, 0.0);
        for (int t = 0; t < L; ++t) {
          const size_t i = (size_t(b) * E + e) * L + t;
          const double d = dt(b, e, t);
          double y = 0;
          for (int n = 0; n < N; ++n) {
            s[n] = std::exp(d * A[size_t(e) * N + n]) * s[n] + d * B[(size_t(b) * N + n) * L + t] * u[i];
            y += s[n] * C[(size_t(b) * N + n) * L + t];
          }
          y += D[e] * u[i];
          o[i] = y * z[i] / (1 + std::exp(-z[i]));
        }
        if (last)
          for (int n = 0; n < N; ++n) (*last)[(size_t(b) * E + e) * N + n] = s[n];
      }
    return o;
  }
  // The host logic of selective_scan.cu (scan_params / launch_scan) for float64, contiguous inputs.
  template <typename KT>
  ScanParams params(size_t& smem, bool backward) const {
    auto v3 = [&](const std::vector<double>& x) { return View3{x.data(), int64_t(E) * L, L, 1}; };
    ScanParams p;
    p.u = v3(u); p.delta = v3(delta); p.z = v3(z);
    p.B = View4{B.data(), int64_t(N) * L, 0, L, 1};
    p.C = View4{C.data(), int64_t(N) * L, 0, L, 1};
    p.A = A.data(); p.D = D.data(); p.delta_bias = bias.data();
    p.batch = batch; p.dim = E; p.len = L; p.dstate = N; p.n_groups = 1; p.dim_per_group = E;
    p.n_chunks = (L + KT::kChunk - 1) / KT::kChunk;
    p.blocks_per_group = (E + KT::kChans - 1) / KT::kChans;
    p.delta_softplus = true;
    smem = size_t(ScanSmem(N, KT::kChans, KT::kChunk, KT::kRow, backward, 0).total) * sizeof(double);
    return p;
  }
};

template <typename KT>
bool scan_fwd_config(const ScanCase& c, const char* name) {
  std::vector<double> want_last;
  const std::vector<double> want = c.reference(&want_last);
  bool ok = true;
  for (uint64_t seed : kSeeds) {
    dmm::emu::set_schedule_seed(seed);
    size_t smem;
    ScanParams p = c.params<KT>(smem, false);
    std::vector<double> o(want.size()), last(want_last.size());
    p.out = MutView3{o.data(), int64_t(c.E) * c.L, c.L, 1};
    p.last_state = last.data();
    if (smem > 48 * 1024)
      cudaFuncSetAttribute(selective_scan_fwd_kernel<KT>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    DMM_LAUNCH(unsigned(c.batch * p.blocks_per_group), KT::kThreads, smem, nullptr,
               selective_scan_fwd_kernel<KT>)(p);
    ok = compare(name, seed, o, want) && ok;
    ok = compare("  last_state", seed, last, want_last) && ok;
  }
  return ok;
}

bool scan_fwd() {
  const ScanCase c;
  return scan_fwd_config<ScanKT<16, 32>>(c, "scan_fwd 16x32") &
         scan_fwd_config<ScanKT<8, 32>>(c, "scan_fwd 8x32") &
         scan_fwd_config<ScanKT<4, 8>>(c, "scan_fwd 4x8");
}

// Backward: dD and <du, u> against the reference (out is linear in u for fixed delta, so
// <du, u> = sum g * out), dB and dA against central differences of sum(g * out) in B and A.
template <typename KT>
bool scan_bwd_config(const ScanCase& c, const char* name) {
  const size_t n = size_t(c.batch) * c.E * c.L;
  const std::vector<double> g = randn(n, 9);
  std::vector<double> want_dD(c.E, 0.0);
  for (int b = 0; b < c.batch; ++b)
    for (int e = 0; e < c.E; ++e)
      for (int t = 0; t < c.L; ++t) {
        const size_t i = (size_t(b) * c.E + e) * c.L + t;
        want_dD[e] += g[i] * c.u[i] * c.z[i] / (1 + std::exp(-c.z[i]));
      }
  const std::vector<double> o = c.reference();
  double want_dot = 0;
  for (size_t i = 0; i < n; ++i) want_dot += g[i] * o[i];
  // d/dB[b=1, n=2, t] of sum(g * out) at a few t, including both sides of chunk edges
  const int probe_t[] = {0, 31, 32, 63, 64, 149};
  std::vector<double> want_dB;
  for (int t : probe_t) {
    ScanCase cp = c, cm = c;
    const size_t i = (size_t(1) * c.N + 2) * c.L + t;
    cp.B[i] += 1e-6;
    cm.B[i] -= 1e-6;
    const auto op = cp.reference(), om = cm.reference();
    double d = 0;
    for (size_t k = 0; k < n; ++k) d += g[k] * (op[k] - om[k]);
    want_dB.push_back(d / 2e-6);
  }
  // d/dA[e, n] at channels of both channel tiles: the only check here that needs the forward
  // states the backward recomputes per chunk (du and dB need only the adjoint)
  const int probe_en[][2] = {{1, 2}, {33, 4}};
  std::vector<double> want_dA;
  for (const auto& en : probe_en) {
    ScanCase cp = c, cm = c;
    cp.A[size_t(en[0]) * c.N + en[1]] += 1e-6;
    cm.A[size_t(en[0]) * c.N + en[1]] -= 1e-6;
    const auto op = cp.reference(), om = cm.reference();
    double d = 0;
    for (size_t k = 0; k < n; ++k) d += g[k] * (op[k] - om[k]);
    want_dA.push_back(d / 2e-6);
  }
  bool ok = true;
  for (uint64_t seed : kSeeds) {
    dmm::emu::set_schedule_seed(seed);
    size_t smem;
    ScanParams p = c.params<KT>(smem, true);
    std::vector<double> du(n), ddelta(n), dz(n), dA(size_t(c.E) * c.N, 0.0),
        dB(size_t(c.batch) * c.N * c.L, 0.0), dC(dB.size(), 0.0), dD(c.E, 0.0), dbias(c.E, 0.0),
        states(size_t(c.batch) * c.E * p.n_chunks * c.N);
    auto m3 = [&](std::vector<double>& x) { return MutView3{x.data(), int64_t(c.E) * c.L, c.L, 1}; };
    p.dout = View3{g.data(), int64_t(c.E) * c.L, c.L, 1};
    p.du = m3(du); p.ddelta = m3(ddelta); p.dz = m3(dz);
    p.dA = dA.data(); p.dD = dD.data(); p.ddelta_bias = dbias.data();
    p.dB = MutView4{dB.data(), int64_t(c.N) * c.L, 0, c.L, 1};
    p.dC = MutView4{dC.data(), int64_t(c.N) * c.L, 0, c.L, 1};
    p.chunk_states = states.data();
    if (smem > 48 * 1024)
      cudaFuncSetAttribute(selective_scan_bwd_kernel<KT>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    DMM_LAUNCH(unsigned(c.batch * p.blocks_per_group), KT::kThreads, smem, nullptr,
               selective_scan_bwd_kernel<KT>)(p);
    ok = compare(name, seed, dD, want_dD) && ok;
    double dot = 0;
    for (size_t i = 0; i < n; ++i) dot += du[i] * c.u[i];
    ok = compare("  <du,u>", seed, {dot}, {want_dot}, 1e-8) && ok;
    std::vector<double> got_dB;
    for (int t : probe_t) got_dB.push_back(dB[(size_t(1) * c.N + 2) * c.L + t]);
    ok = compare("  dB (central difference)", seed, got_dB, want_dB, 1e-6) && ok;
    std::vector<double> got_dA;
    for (const auto& en : probe_en) got_dA.push_back(dA[size_t(en[0]) * c.N + en[1]]);
    ok = compare("  dA (central difference)", seed, got_dA, want_dA, 1e-6) && ok;
  }
  return ok;
}

bool scan_bwd() {
  const ScanCase c;
  return scan_bwd_config<ScanKT<16, 32>>(c, "scan_bwd 16x32 dD") &
         scan_bwd_config<ScanKT<8, 32>>(c, "scan_bwd 8x32 dD") &
         scan_bwd_config<ScanKT<4, 32>>(c, "scan_bwd 4x32 dD") &
         scan_bwd_config<ScanKT<4, 8>>(c, "scan_bwd 4x8 dD");
}

// bfloat16 storage, float accumulation, on inputs whose y_t = sum_n s_n C_n cancels: the states
// come in pairs with equal A and B, C = (100 + c, -100) on a pair (c ~ 4), so y is a small
// difference of large terms.
// A bfloat16 accumulator of y loses it; float keeps it (the output's own rounding is 2^-8).
bool scan_half() {
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
  bool ok = true;
  for (uint64_t seed : kSeeds) {
    dmm::emu::set_schedule_seed(seed);
    ScanParams p;
    p.u = View3{u.data(), int64_t(E) * L, L, 1};
    p.delta = View3{delta.data(), int64_t(E) * L, L, 1};
    p.B = View4{Bh.data(), int64_t(N) * L, 0, L, 1};
    p.C = View4{Ch.data(), int64_t(N) * L, 0, L, 1};
    p.A = Af.data();
    p.batch = batch; p.dim = E; p.len = L; p.dstate = N; p.n_groups = 1; p.dim_per_group = E;
    p.n_chunks = (L + KT::kChunk - 1) / KT::kChunk;
    p.blocks_per_group = 1;
    p.delta_softplus = true;
    std::vector<__nv_bfloat16> out(u.size());
    p.out = MutView3{out.data(), int64_t(E) * L, L, 1};
    const size_t smem = size_t(ScanSmem(N, KT::kChans, KT::kChunk, KT::kRow, false, 0).total) * sizeof(float);
    DMM_LAUNCH(1u, KT::kThreads, smem, nullptr, selective_scan_fwd_kernel<KT>)(p);
    const std::vector<double> got = back(out);
    double err = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      const double e = std::fabs(got[i] - want[i]) / scale;
      if (!(e <= err)) err = e;  // NaN-propagating max
    }
    const bool pass = err <= 1e-2;  // bfloat16's output rounding is 4e-3 of the largest |y|
    std::printf("scan_half seed %llu: max error %.3g of max|y| = %.3g%s\n", (unsigned long long)seed,
                err, scale, pass ? "" : "  MISMATCH");
    ok = ok && pass;
  }
  return ok;
}

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
    p.u = View3{xs.data(), rowE, 1, E};
    p.z = View3{z.data(), rowE, 1, E};
    p.dt_low = View3{xdbl.data(), int64_t(L) * P, 1, P};
    p.B = View4{xdbl.data() + R, int64_t(L) * P, 0, 1, P};
    p.C = View4{xdbl.data() + R + N, int64_t(L) * P, 0, 1, P};
    p.w_dt = w.data(); p.dt_rank = R; p.a_is_log = true;
    p.A = A_log.data(); p.D = D.data(); p.delta_bias = bias.data();
    p.batch = batch; p.dim = E; p.len = L; p.dstate = N; p.n_groups = 1; p.dim_per_group = E;
    p.n_chunks = (L + KT::kChunk - 1) / KT::kChunk;
    p.blocks_per_group = (E + KT::kChans - 1) / KT::kChans;
    p.delta_softplus = true;
    smem = size_t(ScanSmem(N, KT::kChans, KT::kChunk, KT::kRow, backward, R).total) * sizeof(double);
    return p;
  }
};

bool block_scan() {
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
  bool ok = true;
  for (uint64_t seed : kSeeds) {
    dmm::emu::set_schedule_seed(seed);
    size_t smem;
    ScanParams p = c.params<KT>(smem, false);
    std::vector<double> out(n);
    p.out = MutView3{out.data(), int64_t(c.L) * c.E, 1, c.E};
    DMM_LAUNCH(unsigned(c.batch * p.blocks_per_group), KT::kThreads, smem, nullptr,
               selective_scan_fwd_kernel<KT>)(p);
    ok = compare("block_scan fwd", seed, out, want) && ok;

    p = c.params<KT>(smem, true);
    std::vector<double> dxs(n), ddt(n), dz(n), dA(size_t(c.E) * c.N, 0.0), dD(c.E, 0.0),
        dbias(c.E, 0.0), dB(size_t(c.batch) * c.L * c.N, 0.0), dC(dB.size(), 0.0),
        dlow(size_t(c.batch) * c.L * c.R, 0.0), dw(size_t(c.E) * c.R, 0.0),
        states(size_t(c.batch) * c.E * p.n_chunks * c.N);
    auto m3 = [&](std::vector<double>& x) { return MutView3{x.data(), int64_t(c.L) * c.E, 1, c.E}; };
    p.dout = View3{g.data(), int64_t(c.L) * c.E, 1, c.E};
    p.du = m3(dxs); p.ddelta = m3(ddt); p.dz = m3(dz);
    p.dA = dA.data(); p.dD = dD.data(); p.ddelta_bias = dbias.data();
    p.dB = MutView4{dB.data(), int64_t(c.L) * c.N, 0, 1, c.N};  // (B, L, N)
    p.dC = MutView4{dC.data(), int64_t(c.L) * c.N, 0, 1, c.N};
    p.ddt_low = MutView3{dlow.data(), int64_t(c.L) * c.R, 1, c.R};  // (B, L, R)
    p.dw_dt = dw.data();
    p.chunk_states = states.data();
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
    ok = compare("block_scan bwd (central differences)", seed, got, wanted, 1e-6) && ok;
    double dot = 0;  // <dxs, xs> = sum g * out (out is linear in xs)
    for (size_t i = 0; i < n; ++i) dot += dxs[i] * c.xs[i];
    double want_dot = 0;
    for (size_t i = 0; i < n; ++i) want_dot += g[i] * want[i];
    ok = compare("  <dxs,xs>", seed, {dot}, {want_dot}, 1e-8) && ok;
  }
  return ok;
}

// ---- modal mixer (conv) ------------------------------------------------------------------------------
struct ConvCase {
  int batch = 2, L = 23, Dm = 37, M = 3, W = 6, phase = 1;
  std::vector<double> u = randn(size_t(batch) * L * Dm, 11), w = randn(size_t(M) * W * Dm, 12),
                      bias = randn(size_t(M) * Dm, 13);
  ModalMixParams params() const {
    ModalMixParams p;
    p.u = in(u); p.weight = in(w); p.bias = in(bias);
    p.batch = batch; p.len = L; p.dim = Dm; p.n_modalities = M; p.width = W; p.phase = phase;
    return p;
  }
  double y(int b, int i, int d) const {
    const int m = (phase + i) % M;
    double acc = bias[size_t(m) * Dm + d];
    for (int k = 0; k < W; ++k) {
      const int j = i - W + 1 + k;
      if (j >= 0) acc += w[(size_t(m) * W + k) * Dm + d] * u[(size_t(b) * L + j) * Dm + d];
    }
    return acc;
  }
};

bool conv_fwd() {
  const ConvCase c;
  std::vector<double> want(c.u.size());
  for (int b = 0; b < c.batch; ++b)
    for (int i = 0; i < c.L; ++i)
      for (int d = 0; d < c.Dm; ++d) want[(size_t(b) * c.L + i) * c.Dm + d] = c.y(b, i, d);
  bool ok = true;
  for (uint64_t seed : kSeeds) {
    dmm::emu::set_schedule_seed(seed);
    ModalMixParams p = c.params();
    std::vector<double> y(want.size());
    p.y = out(y);
    DMM_LAUNCH(unsigned((y.size() + kMixThreads - 1) / kMixThreads), kMixThreads, 0, nullptr,
               modal_conv_fwd_kernel<double>)(p);
    ok = compare("conv_fwd", seed, y, want) && ok;
  }
  return ok;
}

bool conv_bwd() {
  const ConvCase c;
  const std::vector<double> g = randn(c.u.size(), 14);
  std::vector<double> want_dw(c.w.size(), 0.0), want_db(c.bias.size(), 0.0);
  for (int b = 0; b < c.batch; ++b)
    for (int i = 0; i < c.L; ++i) {
      const int m = (c.phase + i) % c.M;
      for (int d = 0; d < c.Dm; ++d) {
        const double gg = g[(size_t(b) * c.L + i) * c.Dm + d];
        want_db[size_t(m) * c.Dm + d] += gg;
        for (int k = 0; k < c.W; ++k) {
          const int j = i - c.W + 1 + k;
          if (j >= 0) want_dw[(size_t(m) * c.W + k) * c.Dm + d] += gg * c.u[(size_t(b) * c.L + j) * c.Dm + d];
        }
      }
    }
  bool ok = true;
  for (uint64_t seed : kSeeds) {
    dmm::emu::set_schedule_seed(seed);
    ModalMixParams p = c.params();
    std::vector<double> dw(c.w.size(), 0.0), db(c.bias.size(), 0.0);
    p.dy = in(g);
    p.dweight_acc = dw.data();
    p.dbias_acc = db.data();
    const dim3 grid(unsigned((c.Dm + kWeightBlockX - 1) / kWeightBlockX), unsigned(c.M), 3u);
    DMM_LAUNCH(grid, dim3(kWeightBlockX, kWeightBlockY), 0, nullptr,
               modal_conv_bwd_weight_kernel<double>)(p);
    ok = compare("conv_bwd dweight", seed, dw, want_dw) && ok;
    ok = compare("conv_bwd dbias", seed, db, want_db) && ok;
  }
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string name = argc > 1 ? argv[1] : "";
  try {
    bool ok;
    if (name == "scan_fwd") ok = scan_fwd();
    else if (name == "scan_bwd") ok = scan_bwd();
    else if (name == "block_scan") ok = block_scan();
    else if (name == "scan_half") ok = scan_half();
    else if (name == "conv_fwd") ok = conv_fwd();
    else if (name == "conv_bwd") ok = conv_bwd();
    else {
      std::fprintf(stderr, "usage: %s scan_fwd|scan_bwd|block_scan|scan_half|conv_fwd|conv_bwd\n", argv[0]);
      return 2;
    }
    std::printf("%s: %s\n", name.c_str(), ok ? "ok" : "FAILED");
    return ok ? 0 : 1;
  } catch (const std::exception& e) {
    std::printf("%s: %s\n", name.c_str(), e.what());
    return 1;
  }
}
