// Fused kernels of the MetaMamba block (docs/ARCHITECTURE.md, "What the fused kernels compute") for
// the offline-RL shapes (L = 24..60 tokens, D = 64..256), launched by csrc/cuda/block.cu:
//   preproj_conv_kernel  LN_1 + conv mixer_1 + residual + LN_2        -> h1, v
//   ln_rows_kernel       LN of (x [+ add]) per row (the "line" path around the cuBLAS mixer)
//   silu_mix2_kernel     [conv mixer_2 +] SiLU on the x half of in_proj
// (the scan: selective_scan.cuh via scan_launch.h; the step's kernels: step_kernels.cuh; the
// backward's: block_bwd_kernels.cuh)
//
// Shapes: B batch, L tokens, D d_model, E inner width, N state size, R dt rank, W window,
// M modalities, P = R + 2N (x_proj rows). Activations are row-major (B, L, width).
//
// Precision. Every value is computed in acc_t (float, or double for float64 inputs). Where the
// unfused composite (csrc/block/composite.cpp) stores an intermediate tensor in the activation
// dtype, these kernels round to that dtype too (`round_as`), so the fused forward, the fused step
// and the composite agree to within one rounding of each stored intermediate. Weights are rounded
// to the activation dtype on load (the composite casts them); A_log, D and dt_proj_bias are read
// in acc_t (the composite's fp32 scan parameters).
#pragma once

#include "cuda/block_device.cuh"

namespace dmm {
namespace cuda {
namespace block {

// ================================================================================================
// LN_1 + conv mixer_1 + residual + LN_2. Grid (ceil(L / TL), B), one warp per row; blockDim a
// multiple of 32. A CTA owns tokens [t0, t0 + TL) of one sequence and recomputes LN_1 of the W-1
// tokens before t0 (the window halo) instead of reading them from another CTA.
// Dynamic shared memory: acc_t u[(TL + W - 1) * D] (LN_1 rows, halo first), hs[TL * D] (h1 rows).
// ================================================================================================
template <typename acc_t>
__global__ void preproj_conv_kernel(InPtr h, InPtr n1w, InPtr n1b, InPtr m1w, InPtr m1b,
                                    InPtr n2w, InPtr n2b, OutPtr h1_out, OutPtr v_out, int L,
                                    int D, int W, int M, int TL, acc_t eps) {
  const sptr<acc_t> u = dynamic_smem<acc_t>();          // (TL + W - 1, D)
  const sptr<acc_t> hs = u + int64_t(TL + W - 1) * D;  // (TL, D)
  const DType act = h1_out.dt;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
  const int b = blockIdx.y, t0 = blockIdx.x * TL;
  const int r0 = t0 - (W - 1);  // token of smem row 0
  const int n_rows = TL + W - 1;

  // LN_1 of the tile and its halo; rows before token 0 are the mixer's zero padding. Each lane
  // touches only columns d = lane + 32 j of its warp's row, so no barrier is needed inside a row.
  for (int i = warp; i < n_rows; i += n_warps) {
    const int t = r0 + i;
    const sptr<acc_t> row = u + int64_t(i) * D;
    if (t < 0 || t >= L) {
      for (int d = lane; d < D; d += 32) row[d] = acc_t(0);
      continue;
    }
    const int64_t base = (int64_t(b) * L + t) * D;
    acc_t s = 0;
    for (int d = lane; d < D; d += 32) {
      row[d] = load<acc_t>(h, base + d);
      s += row[d];
    }
    const acc_t mean = group_sum(s, 32) / D;
    acc_t q = 0;
    for (int d = lane; d < D; d += 32) q += (row[d] - mean) * (row[d] - mean);
    const acc_t rstd = acc_t(1) / sqrt(group_sum(q, 32) / D + eps);
    for (int d = lane; d < D; d += 32)
      row[d] = round_as(act, (row[d] - mean) * rstd * load_w<acc_t>(n1w, d, act) +
                                 load_w<acc_t>(n1b, d, act));
  }
  __syncthreads();

  // Mixer, residual and LN_2 per output token. Output token t0 + j reads smem rows j .. j+W-1.
  for (int j = warp; j < TL; j += n_warps) {
    const int t = t0 + j;
    if (t >= L) break;  // rows are visited in increasing j: the rest are past the end too
    const int m = t % M;
    const int64_t base = (int64_t(b) * L + t) * D;
    const sptr<acc_t> hrow = hs + int64_t(j) * D;
    acc_t s = 0;
    for (int d = lane; d < D; d += 32) {
      acc_t mix = m1b.p != nullptr ? load_w<acc_t>(m1b, int64_t(m) * D + d, act) : acc_t(0);
      for (int k = 0; k < W; ++k)
        mix += load_w<acc_t>(m1w, (int64_t(m) * W + k) * D + d, act) * u[int64_t(j + k) * D + d];
      const acc_t h1 = round_as(act, load<acc_t>(h, base + d) + round_as(act, mix));
      hrow[d] = h1;
      store(h1_out, base + d, h1);
      s += h1;
    }
    const acc_t mean = group_sum(s, 32) / D;
    acc_t q = 0;
    for (int d = lane; d < D; d += 32) q += (hrow[d] - mean) * (hrow[d] - mean);
    const acc_t rstd = acc_t(1) / sqrt(group_sum(q, 32) / D + eps);
    for (int d = lane; d < D; d += 32)
      store(v_out, base + d,
            (hrow[d] - mean) * rstd * load_w<acc_t>(n2w, d, act) + load_w<acc_t>(n2b, d, act));
  }
}

// ================================================================================================
// y = LN(x [+ add]) per row, also writing s = x + add when `sum_out` is given. One warp per row,
// grid-stride over rows. Used around the "line" mixer, which stays a cuBLAS-backed op.
// Three passes over the row in global memory (re-reads hit L1: a row is <= a few KB).
// ================================================================================================
template <typename acc_t>
__global__ void ln_rows_kernel(InPtr x, InPtr add, InPtr w, InPtr bias, OutPtr sum_out,
                               OutPtr y, int64_t rows, int D, acc_t eps) {
  const DType act = y.dt;
  const int lane = threadIdx.x & 31;
  const int64_t warps_total = int64_t(gridDim.x) * (blockDim.x >> 5);
  auto value = [&](int64_t i) {
    return add.p != nullptr ? round_as(act, load<acc_t>(x, i) + load<acc_t>(add, i))
                            : load<acc_t>(x, i);
  };
  for (int64_t r = int64_t(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5); r < rows;
       r += warps_total) {
    const int64_t base = r * D;
    acc_t s = 0;
    for (int d = lane; d < D; d += 32) s += value(base + d);
    const acc_t mean = group_sum(s, 32) / D;
    acc_t q = 0;
    for (int d = lane; d < D; d += 32) {
      const acc_t c = value(base + d) - mean;
      q += c * c;
    }
    const acc_t rstd = acc_t(1) / sqrt(group_sum(q, 32) / D + eps);
    for (int d = lane; d < D; d += 32) {
      const acc_t val = value(base + d);
      if (sum_out.p != nullptr) store(sum_out, base + d, val);
      store(y, base + d, (val - mean) * rstd * load_w<acc_t>(w, d, act) + load_w<acc_t>(bias, d, act));
    }
  }
}

// ================================================================================================
// xs = SiLU(mixer_2(x)) (double-conv) or SiLU(x), elementwise over (B, L, E). x rows have pitch
// `x_pitch` (2E when x is the front half of in_proj's output). m2w == nullptr: no mixer; else
// xm receives mixer_2(x) too (the backward's input of the SiLU), when xm.p is not null.
// ================================================================================================
template <typename acc_t>
__global__ void silu_mix2_kernel(InPtr x, int64_t x_pitch, InPtr m2w, InPtr m2b, OutPtr xm,
                                 OutPtr xs, int64_t n_rows, int L, int E, int W, int M) {
  const DType act = xs.dt;
  const int64_t n = n_rows * E;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int e = int(i % E);
    const int64_t row = i / E;  // b * L + t
    acc_t val;
    if (m2w.p != nullptr) {
      const int t = int(row % L), m = t % M;
      acc_t mix = m2b.p != nullptr ? load_w<acc_t>(m2b, int64_t(m) * E + e, act) : acc_t(0);
      for (int k = 0; k < W; ++k) {
        const int tk = t - (W - 1) + k;  // the window's k-th token; zero padding before 0
        if (tk >= 0)
          mix += load_w<acc_t>(m2w, (int64_t(m) * W + k) * E + e, act) *
                 load<acc_t>(x, (row - t + tk) * x_pitch + e);
      }
      val = round_as(act, mix);
      if (xm.p != nullptr) store(xm, i, val);
    } else {
      val = load<acc_t>(x, row * x_pitch + e);
    }
    store(xs, i, silu_(val));
  }
}


}  // namespace block
}  // namespace cuda
}  // namespace dmm
