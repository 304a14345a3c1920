// Device helpers shared by the block's kernels (block_kernels.cuh, block_bwd_kernels.cuh,
// step_kernels.cuh): rounding to the activation dtype, CTA-wide sums, row-wise mat-vecs and
// LayerNorm of a row held in shared memory.
#pragma once

#include "cuda/device.cuh"

namespace dmm {
namespace cuda {
namespace block {

constexpr unsigned kFullMask = 0xffffffffu;

// Value of `v` after a round trip through the storage dtype `dt`.
template <typename acc_t>
__device__ __forceinline__ acc_t round_as(DType dt, acc_t v) {
  switch (dt) {
    case DType::kFloat: return static_cast<acc_t>(static_cast<float>(v));
    case DType::kDouble: return v;
    case DType::kHalf: return static_cast<acc_t>(__half2float(__float2half(static_cast<float>(v))));
    default:
      return static_cast<acc_t>(__bfloat162float(__float2bfloat16(static_cast<float>(v))));
  }
}

// A weight element as the composite sees it: cast to the activation dtype.
template <typename acc_t>
__device__ __forceinline__ acc_t load_w(const InPtr& w, int64_t i, DType act) {
  return round_as<acc_t>(act, load<acc_t>(w, i));
}

template <typename acc_t>
__device__ __forceinline__ acc_t silu_(acc_t x) {
  return x * sigmoid_(x);
}

// Sum over the whole CTA; every thread gets the total. `red` holds >= 32 acc_t. Deterministic
// (fixed order). Starts with a barrier so that back-to-back calls may reuse `red`.
template <typename acc_t>
__device__ __forceinline__ acc_t block_sum(acc_t v, sptr<acc_t> red) {
  v = group_sum(v, 32);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  acc_t s = 0;
  for (int i = 0; i < n_warps; ++i) s += red[i];
  return s;
}

// Rows [row_begin, row_end) of a row-major (rows, cols) matrix (from element w_off) times a
// vector x in shared memory: one warp per row, lanes stride the (contiguous) row. `emit(r, value)`
// runs on lane 0.
template <typename acc_t, typename Emit>
__device__ __forceinline__ void warp_matvec(const InPtr& w, int64_t w_off, int row_begin,
                                            int row_end, int cols,
                                            std::type_identity_t<sptr<const acc_t>> x, DType act,
                                            Emit emit) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
  for (int r = row_begin + warp; r < row_end; r += n_warps) {
    const int64_t base = w_off + int64_t(r) * cols;
    acc_t s = 0;
    for (int c = lane; c < cols; c += 32) s += load_w<acc_t>(w, base + c, act) * x[c];
    s = group_sum(s, 32);
    if (lane == 0) emit(r, s);
  }
}

// LayerNorm of a D-vector in shared memory, whole CTA; writes round(LN(x)) to y (may alias x).
template <typename acc_t>
__device__ __forceinline__ void block_layernorm(std::type_identity_t<sptr<const acc_t>> x,
                                                sptr<acc_t> y, int D, const InPtr& w,
                                                const InPtr& bias, acc_t eps, DType act,
                                                sptr<acc_t> red) {
  acc_t s = 0;
  for (int d = threadIdx.x; d < D; d += blockDim.x) s += x[d];
  const acc_t mean = block_sum(s, red) / D;
  acc_t q = 0;
  for (int d = threadIdx.x; d < D; d += blockDim.x) q += (x[d] - mean) * (x[d] - mean);
  const acc_t rstd = acc_t(1) / sqrt(block_sum(q, red) / D + eps);
  for (int d = threadIdx.x; d < D; d += blockDim.x)
    y[d] = round_as(act, (x[d] - mean) * rstd * load_w<acc_t>(w, d, act) + load_w<acc_t>(bias, d, act));
}

}  // namespace block
}  // namespace cuda
}  // namespace dmm
