// Fused kernels of the block's backward (csrc/cuda/block.cu, block_bwd), from the forward's saved
// activations (csrc/block/params.h):
//   silu_bwd_kernel          dx = SiLU'(xm) dxs into in_proj's gradient dxz[..., :E], and dz into
//                            dxz[..., E:]: the SiLU backward and the concatenation in one pass
//   preproj_bwd_conv_kernel  LN_2 backward + residual + conv mixer_1 backward + LN_1 backward
//                            -> dh, and per-CTA partial sums of the six parameter gradients
//   reduce_rows_kernel       those partials summed over CTAs in a fixed order (deterministic)
// Precision as the forward kernels (block_kernels.cuh): acc_t arithmetic, each value the
// composite stores in the activation dtype rounded to it (round_as).
#pragma once

#include "cuda/block_device.cuh"

namespace dmm {
namespace cuda {
namespace block {

// ================================================================================================
// dxz[r, e] = round(dxs[r, e] * SiLU'(xm[r, e])), dxz[r, E + e] = dz[b, l, e] (r = b * L + l), over
// (B, L, E). xm rows have pitch xm_pitch (2E when xm is in_proj's x half); dz is read through its
// strides (sb, sl, se) (nullptr: dz is already in place).
// ================================================================================================
template <typename acc_t>
__global__ void silu_bwd_kernel(InPtr dxs, InPtr xm, int64_t xm_pitch, InPtr dz, int64_t dz_sb,
                                int64_t dz_sl, int64_t dz_se, OutPtr dxz, int64_t n_rows, int L,
                                int E) {
  const DType act = dxz.dt;
  const int64_t n = n_rows * E;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / E;
    const int e = int(i % E);
    const acc_t x = load<acc_t>(xm, r * xm_pitch + e);
    const acc_t sg = sigmoid_(x);
    store(dxz, r * 2 * E + e,
          round_as(act, load<acc_t>(dxs, i) * sg * (acc_t(1) + x * (acc_t(1) - sg))));
    if (dz.p != nullptr)
      store(dxz, r * 2 * E + E + e, load<acc_t>(dz, (r / L) * dz_sb + (r % L) * dz_sl + e * dz_se));
  }
}

// Columns of one CTA's row of partial sums (preproj_bwd_conv_kernel), each a D- or (M, D)-block.
struct PreprojPartials {
  int64_t dn1w, dn1b, dn2w, dn2b, dm1w, dm1b, cols;
  __host__ __device__ PreprojPartials(int D, int W, int M) {
    dn1w = 0;
    dn1b = D;
    dn2w = 2 * int64_t(D);
    dn2b = 3 * int64_t(D);
    dm1w = 4 * int64_t(D);                 // (M, W, D)
    dm1b = dm1w + int64_t(M) * W * D;      // (M, D)
    cols = dm1b + int64_t(M) * D;
  }
};

// Shared memory of preproj_bwd_conv_kernel, in acc_t elements, for a tile of TL tokens.
struct PreprojBwdSmem {
  int64_t u, dh1, du, stats, total;
  __host__ __device__ PreprojBwdSmem(int D, int W, int TL) {
    u = 0;                                    // (TL + W - 1, D) LN_1 rows, halo before the tile
    dh1 = u + int64_t(TL + W - 1) * D;        // (TL + W - 1, D) dh1 rows, halo after the tile
    du = dh1 + int64_t(TL + W - 1) * D;       // (TL, D)
    stats = du + int64_t(TL) * D;             // 8 per row: the dh1 rows', then the u rows'
    total = stats + 2 * int64_t(TL + W - 1) * 8;
  }
};

// ================================================================================================
// The backward of h1 = h + conv_mixer(LN_1(h)), v = LN_2(h1), out (+)= h1, for tokens
// [t0, t0 + TL) of sequence b (grid (ceil(L / TL), B), one warp per row for the row statistics,
// one thread per column elsewhere). Per token t, modality m(t) = t % M, window W:
//   dh1_t = round(LN_2 backward(dv_t)) [+ g_t]                  (tokens t0 .. t0 + TL + W - 2: the
//                                                                 mixer's adjoint reads ahead)
//   du_s  = round(sum_k w_m(t)[k] dh1_t), t = s + W - 1 - k < L  (LN_1 of the W - 1 tokens before
//                                                                 the tile is recomputed)
//   dh_s  = round(round(LN_1 backward(du_s)) + dh1_s)
// and this CTA's partial sums of dgamma / dbeta of both LayerNorms, dw and db of the mixer over its
// own tokens: one row of `partial` (PreprojPartials columns), summed by reduce_rows_kernel.
// ================================================================================================
template <typename acc_t>
__global__ void preproj_bwd_conv_kernel(InPtr h, InPtr h1, InPtr dv, InPtr g, InPtr n1w, InPtr n1b,
                                        InPtr m1w, InPtr n2w, InPtr n2b, OutPtr dh, gptr<acc_t> partial,
                                        int L, int D, int W, int M, int TL, acc_t eps) {
  const PreprojBwdSmem lay(D, W, TL);
  const sptr<acc_t> sm = dynamic_smem<acc_t>();
  const sptr<acc_t> u = sm + lay.u, dh1 = sm + lay.dh1, du = sm + lay.du, stats = sm + lay.stats;
  const DType act = dh.dt;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
  const int b = blockIdx.y, t0 = blockIdx.x * TL;
  const int n_own = min(TL, L - t0);               // tokens of the tile
  const int n_ahead = min(TL + W - 1, L - t0);     // dh1 rows: the tile and W - 1 after it
  const int n_u = n_own + W - 1;                   // u rows: W - 1 before the tile and the tile
  const PreprojPartials cols(D, W, M);
  const gptr<acc_t> part = partial + (int64_t(b) * gridDim.x + blockIdx.x) * cols.cols;
  auto row_of = [&](int t) { return (int64_t(b) * L + t) * D; };

  // 1. Row statistics, one warp per row: LN_2 backward's (of the dh1 rows) and LN_1's (u rows).
  for (int i = warp; i < n_ahead + n_u; i += n_warps) {
    const bool ln2 = i < n_ahead;
    const int t = ln2 ? t0 + i : t0 - (W - 1) + (i - n_ahead);
    const sptr<acc_t> st = stats + 8 * int64_t(i);  // LN_2: mean, rstd, a, c at 2..5; LN_1: mean, rstd at 0, 1
    if (t < 0) continue;  // u rows before token 0: the mixer's zero padding (step 2)
    const InPtr x = ln2 ? h1 : h;
    acc_t s = 0;
    for (int d = lane; d < D; d += 32) s += load<acc_t>(x, row_of(t) + d);
    const acc_t mean = group_sum(s, 32) / D;
    acc_t q = 0;
    for (int d = lane; d < D; d += 32) {
      const acc_t c = load<acc_t>(x, row_of(t) + d) - mean;
      q += c * c;
    }
    const acc_t rstd = acc_t(1) / sqrt(group_sum(q, 32) / D + eps);
    if (ln2) {  // mean over d of dy * gamma and of dy * gamma * xhat
      acc_t a = 0, c = 0;
      for (int d = lane; d < D; d += 32) {
        const acc_t dy = load<acc_t>(dv, row_of(t) + d) * load_w<acc_t>(n2w, d, act);
        a += dy;
        c += dy * (load<acc_t>(h1, row_of(t) + d) - mean) * rstd;
      }
      a = group_sum(a, 32) / D;
      c = group_sum(c, 32) / D;
      if (lane == 0) { st[2] = mean; st[3] = rstd; st[4] = a; st[5] = c; }
    } else if (lane == 0) {
      st[0] = mean;
      st[1] = rstd;
    }
  }
  __syncthreads();

  // 2. Per column d: dh1 rows, u rows, and the LN_2 partials of the tile's own tokens.
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    const acc_t w2 = load_w<acc_t>(n2w, d, act);
    acc_t dg2 = 0, db2 = 0;
    for (int i = 0; i < n_ahead; ++i) {
      const int t = t0 + i;
      const sptr<const acc_t> st = stats + 8 * int64_t(i);
      const acc_t xhat = (load<acc_t>(h1, row_of(t) + d) - st[2]) * st[3];
      const acc_t dy = load<acc_t>(dv, row_of(t) + d);
      acc_t v = round_as(act, st[3] * (dy * w2 - st[4] - xhat * st[5]));
      if (g.p != nullptr) v = round_as(act, v + load<acc_t>(g, row_of(t) + d));
      dh1[int64_t(i) * D + d] = v;
      if (i < n_own) {
        dg2 += dy * xhat;
        db2 += dy;
      }
    }
    part[cols.dn2w + d] = dg2;
    part[cols.dn2b + d] = db2;
    const acc_t w1 = load_w<acc_t>(n1w, d, act), b1 = load_w<acc_t>(n1b, d, act);
    for (int i = 0; i < n_u; ++i) {
      const int t = t0 - (W - 1) + i;
      const sptr<const acc_t> st = stats + 8 * int64_t(n_ahead + i);
      u[int64_t(i) * D + d] =
          t < 0 ? acc_t(0)
                : round_as(act, (load<acc_t>(h, row_of(t) + d) - st[0]) * st[1] * w1 + b1);
    }
  }
  __syncthreads();

  // 3. Per column d: du of the tile's tokens, the mixer's partials, LN_1's dgamma / dbeta partials.
  //    Token s's window is u rows s - t0 .. s - t0 + W - 1 (row W - 1 + s - t0 is s itself).
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    for (int m = 0; m < M; ++m) {
      for (int k = 0; k < W; ++k) part[cols.dm1w + (int64_t(m) * W + k) * D + d] = 0;
      part[cols.dm1b + int64_t(m) * D + d] = 0;
    }
    acc_t dg1 = 0, db1 = 0;
    for (int j = 0; j < n_own; ++j) {
      const int s = t0 + j;
      acc_t acc = 0;
      for (int k = 0; k < W; ++k) {
        const int t = s + W - 1 - k;  // the token whose window has s at position k
        if (t < L) acc += load_w<acc_t>(m1w, (int64_t(t % M) * W + k) * D + d, act) *
                          dh1[int64_t(t - t0) * D + d];
      }
      const acc_t dus = round_as(act, acc);
      du[int64_t(j) * D + d] = dus;
      const sptr<const acc_t> st = stats + 8 * int64_t(n_ahead + W - 1 + j);
      const acc_t xhat = (load<acc_t>(h, row_of(s) + d) - st[0]) * st[1];
      dg1 += dus * xhat;
      db1 += dus;
      const acc_t gs = dh1[int64_t(j) * D + d];  // dh1 of token s: its mixer's output gradient
      const int m = s % M;
      for (int k = 0; k < W; ++k)
        part[cols.dm1w + (int64_t(m) * W + k) * D + d] += gs * u[int64_t(j + k) * D + d];
      part[cols.dm1b + int64_t(m) * D + d] += gs;
    }
    part[cols.dn1w + d] = dg1;
    part[cols.dn1b + d] = db1;
  }
  __syncthreads();

  // 4. LN_1 backward's row means, one warp per own row; then dh per column.
  for (int j = warp; j < n_own; j += n_warps) {
    const int s = t0 + j;
    const sptr<acc_t> st = stats + 8 * int64_t(n_ahead + W - 1 + j);
    acc_t a = 0, c = 0;
    for (int d = lane; d < D; d += 32) {
      const acc_t dy = du[int64_t(j) * D + d] * load_w<acc_t>(n1w, d, act);
      a += dy;
      c += dy * (load<acc_t>(h, row_of(s) + d) - st[0]) * st[1];
    }
    a = group_sum(a, 32) / D;
    c = group_sum(c, 32) / D;
    if (lane == 0) { st[6] = a; st[7] = c; }
  }
  __syncthreads();
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    const acc_t w1 = load_w<acc_t>(n1w, d, act);
    for (int j = 0; j < n_own; ++j) {
      const int s = t0 + j;
      const sptr<const acc_t> st = stats + 8 * int64_t(n_ahead + W - 1 + j);
      const acc_t xhat = (load<acc_t>(h, row_of(s) + d) - st[0]) * st[1];
      const acc_t dx = round_as(act, st[1] * (du[int64_t(j) * D + d] * w1 - st[6] - xhat * st[7]));
      store(dh, row_of(s) + d, round_as(act, dx + dh1[int64_t(j) * D + d]));
    }
  }
}

// ================================================================================================
// out[c] = sum over rows r of part[r, c], rows in order (the same sum every run); column c of
// `part` (rows, cols) goes to outs.p[k] element c - outs.begin[k] for the block k holding it.
// ================================================================================================
constexpr int kMaxReduceOuts = 8;
struct ReduceOuts {
  OutPtr p[kMaxReduceOuts];
  int64_t begin[kMaxReduceOuts + 1];  // block k is columns [begin[k], begin[k + 1])
  int n = 0;
};

template <typename acc_t>
__global__ void reduce_rows_kernel(gptr<const acc_t> part, int64_t rows, int64_t cols, ReduceOuts outs) {
  for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < cols;
       c += int64_t(gridDim.x) * blockDim.x) {
    acc_t s = 0;
    for (int64_t r = 0; r < rows; ++r) s += part[r * cols + c];
    int k = 0;
    while (k + 1 < outs.n && c >= outs.begin[k + 1]) ++k;
    if (outs.p[k].p != nullptr) store(outs.p[k], c - outs.begin[k], s);
  }
}

}  // namespace block
}  // namespace cuda
}  // namespace dmm
