// block_kernels.cuh (DMM_BLOCK_HEADER) against naive references: LayerNorm rows. (The block's scan
// is checked in scan_checks.cpp, the step's kernels in step_checks.cpp.)
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

}  // namespace kernel_checks
