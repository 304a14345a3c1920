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
//   kernel_checks NAME   NAME: scan_fwd | scan_bwd | conv_fwd | conv_bwd
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
struct ScanCase {
  int batch = 2, E = 20, L = 150, N = 40;  // E not a multiple of the channels per block; N > 32:
                                           // 2 states per lane; L > 64: several chunks
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
  // out (batch, E, L) of the scan with D, z, delta_bias, softplus.
  std::vector<double> reference() const {
    std::vector<double> o(size_t(batch) * E * L);
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
      }
    return o;
  }
  // The host logic of selective_scan.cu (scan_config / scan_params) for float64.
  ScanParams params(bool backward, size_t& smem, int& npl) const {
    ScanParams p;
    p.u = in(u); p.delta = in(delta); p.A = in(A); p.B = in(B); p.C = in(C); p.D = in(D);
    p.z = in(z); p.delta_bias = in(bias);
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

bool scan_fwd() {
  const ScanCase c;
  const std::vector<double> want = c.reference();
  bool ok = true;
  for (uint64_t seed : kSeeds) {
    dmm::emu::set_schedule_seed(seed);
    size_t smem;
    int npl;
    ScanParams p = c.params(false, smem, npl);
    std::vector<double> o(want.size()), last(size_t(c.batch) * c.E * c.N);
    p.out = out(o);
    p.last_state = out(last);
    const unsigned grid = unsigned(c.batch * p.blocks_per_group);
    if (npl == 2) DMM_LAUNCH(grid, kScanThreads, smem, nullptr, selective_scan_fwd_kernel<2, double>)(p);
    else DMM_LAUNCH(grid, kScanThreads, smem, nullptr, selective_scan_fwd_kernel<1, double>)(p);
    ok = compare("scan_fwd", seed, o, want) && ok;
  }
  return ok;
}

// Backward: du against a central finite difference of sum(out * w) would be slow; instead the
// gradient of the loss sum(out * g) w.r.t. D (dD = sum g * dout/dD, dout/dD = u * silu(z)) and
// w.r.t. u checked through the reference's linearity in u (out is linear in u for fixed delta).
bool scan_bwd() {
  const ScanCase c;
  const size_t n = size_t(c.batch) * c.E * c.L;
  const std::vector<double> g = randn(n, 9);
  // dD[e] = sum_{b,t} g * u * silu(z)
  std::vector<double> want_dD(c.E, 0.0);
  for (int b = 0; b < c.batch; ++b)
    for (int e = 0; e < c.E; ++e)
      for (int t = 0; t < c.L; ++t) {
        const size_t i = (size_t(b) * c.E + e) * c.L + t;
        want_dD[e] += g[i] * c.u[i] * c.z[i] / (1 + std::exp(-c.z[i]));
      }
  // <du, u> = sum g * out (out is linear in u).
  const std::vector<double> o = c.reference();
  double want_dot = 0;
  for (size_t i = 0; i < n; ++i) want_dot += g[i] * o[i];
  bool ok = true;
  for (uint64_t seed : kSeeds) {
    dmm::emu::set_schedule_seed(seed);
    size_t smem;
    int npl;
    ScanParams p = c.params(true, smem, npl);
    std::vector<double> du(n), ddelta(n), dz(n), dA(size_t(c.E) * c.N, 0.0),
        dB(size_t(c.batch) * c.N * c.L, 0.0), dC(dB.size(), 0.0), dD(c.E, 0.0), dbias(c.E, 0.0),
        states(size_t(c.batch) * c.E * p.n_chunks * c.N);
    p.dout = in(g);
    p.du = out(du); p.ddelta = out(ddelta); p.dz = out(dz);
    p.dA_acc = dA.data(); p.dB_acc = dB.data(); p.dC_acc = dC.data(); p.dD_acc = dD.data();
    p.ddelta_bias_acc = dbias.data(); p.chunk_states = states.data();
    const unsigned grid = unsigned(c.batch * p.blocks_per_group);
    if (npl == 2) DMM_LAUNCH(grid, kScanThreads, smem, nullptr, selective_scan_bwd_kernel<2, double>)(p);
    else DMM_LAUNCH(grid, kScanThreads, smem, nullptr, selective_scan_bwd_kernel<1, double>)(p);
    ok = compare("scan_bwd dD", seed, dD, want_dD) && ok;
    double dot = 0;
    for (size_t i = 0; i < n; ++i) dot += du[i] * c.u[i];
    ok = compare("scan_bwd <du,u>", seed, {dot}, {want_dot}, 1e-8) && ok;
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
    else if (name == "conv_fwd") ok = conv_fwd();
    else if (name == "conv_bwd") ok = conv_bwd();
    else {
      std::fprintf(stderr, "usage: %s scan_fwd|scan_bwd|conv_fwd|conv_bwd\n", argv[0]);
      return 2;
    }
    std::printf("%s: %s\n", name.c_str(), ok ? "ok" : "FAILED");
    return ok ? 0 : 1;
  } catch (const std::exception& e) {
    std::printf("%s: %s\n", name.c_str(), e.what());
    return 1;
  }
}
