// modal_mix.cuh (DMM_MIX_HEADER) against naive float64 references: the conv forward and its weight /
// bias gradients.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "checks.h"
#include DMM_MIX_HEADER

namespace kernel_checks {

// ---- modal mixer (conv) ------------------------------------------------------------------------------
namespace {

struct ConvCase {
  int batch = 2, L = 23, Dm = 37, M = 3, W = 6, phase = 1;
  std::vector<double> u = randn(size_t(batch) * L * Dm, 11), w = randn(size_t(M) * W * Dm, 12),
                      bias = randn(size_t(M) * Dm, 13);
  ModalMixParams params() const {
    ModalMixParams p;
    p.u = in(u, "u"); p.weight = in(w, "weight"); p.bias = in(bias, "bias");
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

}  // namespace

void conv_fwd() {
  const ConvCase c;
  std::vector<double> want(c.u.size());
  for (int b = 0; b < c.batch; ++b)
    for (int i = 0; i < c.L; ++i)
      for (int d = 0; d < c.Dm; ++d) want[(size_t(b) * c.L + i) * c.Dm + d] = c.y(b, i, d);
  for_seeds("conv_fwd", [&](uint64_t seed) {
    ModalMixParams p = c.params();
    std::vector<double> y(want.size());
    p.y = out(y, "y");
    DMM_LAUNCH(unsigned((y.size() + kMixThreads - 1) / kMixThreads), kMixThreads, 0, nullptr,
               modal_conv_fwd_kernel<double>)(p);
    compare("conv_fwd", seed, y, want);
  });
}

void conv_bwd() {
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
  for_seeds("conv_bwd", [&](uint64_t seed) {
    ModalMixParams p = c.params();
    std::vector<double> dw(c.w.size(), 0.0), db(c.bias.size(), 0.0);
    p.dy = in(g, "dy");
    p.dweight_acc = acc(dw, "dweight");
    p.dbias_acc = acc(db, "dbias");
    const dim3 grid(unsigned((c.Dm + kWeightBlockX - 1) / kWeightBlockX), unsigned(c.M), 3u);
    DMM_LAUNCH(grid, dim3(kWeightBlockX, kWeightBlockY), 0, nullptr,
               modal_conv_bwd_weight_kernel<double>)(p);
    compare("conv_bwd dweight", seed, dw, want_dw);
    compare("conv_bwd dbias", seed, db, want_db);
  });
}

}  // namespace kernel_checks
