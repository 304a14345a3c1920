// Modal mixer on the GPU: parameters, per-point device routines and the kernels of
// dmm::modal_mix_fwd / modal_mix_bwd (launched by modal_mix.cu). In a header so that a fused block
// kernel can evaluate the mixer at the tokens it owns, and so that the kernels compile unchanged
// as host C++ under the emulator (csrc/emu).
//
// u, y, dy: (batch, L, D) channels-last. Token i has modality (phase + i) % M and sees
// u_{i-W+1..i} (zeros before 0); conv weight (M, W, D), bias (M, D).
#pragma once

#include "device.cuh"

namespace dmm {
namespace cuda {

struct ModalMixParams {
  InPtr u, weight, bias, dy;  // bias.p == nullptr when absent
  OutPtr y, du;
  gptr<void> dweight_acc;  // conv backward: (M, W, D) acc_t, zero-initialised
  gptr<void> dbias_acc;    // conv backward: (M, D) acc_t, zero-initialised; null without bias
  bool split_partials = false;  // conv backward: (splits, M, W, D) / (splits, M, D) partials
  int batch, len, dim, n_modalities, width, phase;
};

__host__ __device__ __forceinline__ int token_modality(int i, int phase, int n_modalities) {
  return (phase + i) % n_modalities;
}

// First token index of modality m (tokens of m are first, first + M, ...); phase in [0, M).
__host__ __device__ __forceinline__ int first_token_of(int m, int phase, int n_modalities) {
  return ((m - phase) % n_modalities + n_modalities) % n_modalities;
}

// conv output y[b, i, d] = bias[m, d] + sum_k weight[m, k, d] * u[b, i - W + 1 + k, d].
template <typename acc_t>
__device__ __forceinline__ acc_t modal_conv_point(const ModalMixParams& p, int b, int i, int d) {
  const int m = token_modality(i, p.phase, p.n_modalities);
  const int W = p.width;
  acc_t acc = p.bias.p != nullptr ? load<acc_t>(p.bias, int64_t(m) * p.dim + d) : acc_t(0);
  const int64_t row0 = int64_t(b) * p.len;
  for (int k = 0; k < W; ++k) {
    const int j = i - W + 1 + k;
    if (j >= 0)
      acc += load<acc_t>(p.weight, (int64_t(m) * W + k) * p.dim + d) *
             load<acc_t>(p.u, (row0 + j) * p.dim + d);
  }
  return acc;
}

// conv input gradient du[b, j, d] = sum_k dy[b, i, d] * weight[m(i), k, d] with i = j + W - 1 - k.
template <typename acc_t>
__device__ __forceinline__ acc_t modal_conv_grad_input_point(const ModalMixParams& p, int b, int j,
                                                             int d) {
  const int W = p.width;
  const int64_t row0 = int64_t(b) * p.len;
  acc_t acc = acc_t(0);
  for (int k = 0; k < W; ++k) {
    const int i = j + W - 1 - k;
    if (i < p.len) {
      const int m = token_modality(i, p.phase, p.n_modalities);
      acc += load<acc_t>(p.dy, (row0 + i) * p.dim + d) *
             load<acc_t>(p.weight, (int64_t(m) * W + k) * p.dim + d);
    }
  }
  return acc;
}

// ---- kernels -------------------------------------------------------------------------------------

constexpr int kMixThreads = 256;
constexpr int kWeightBlockX = 32;  // channels per weight-gradient block
constexpr int kWeightBlockY = 8;   // token rows per weight-gradient block

template <typename acc_t>
__global__ void __launch_bounds__(kMixThreads) modal_conv_fwd_kernel(const ModalMixParams p) {
  const int64_t total = int64_t(p.batch) * p.len * p.dim;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int d = int(idx % p.dim);
    const int64_t bi = idx / p.dim;  // b * L + i
    const int i = int(bi % p.len), b = int(bi / p.len);
    store(p.y, idx, modal_conv_point<acc_t>(p, b, i, d));
  }
}

template <typename acc_t>
__global__ void __launch_bounds__(kMixThreads) modal_conv_bwd_input_kernel(const ModalMixParams p) {
  const int64_t total = int64_t(p.batch) * p.len * p.dim;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int d = int(idx % p.dim);
    const int64_t bj = idx / p.dim;
    const int j = int(bj % p.len), b = int(bj / p.len);
    store(p.du, idx, modal_conv_grad_input_point<acc_t>(p, b, j, d));
  }
}

// dweight[m, k, d] = sum over tokens i of modality m, all b: dy[b, i, d] * u[b, i - W + 1 + k, d];
// dbias[m, d] = sum of dy[b, i, d]. Grid (ceil(D / 32), M, splits), block (32, 8). The splits of
// the token rows add into one sum with atomics (order varies from run to run), or under
// `split_partials` each into its own slice (bit-reproducible).
template <typename acc_t>
__global__ void __launch_bounds__(kWeightBlockX* kWeightBlockY)
    modal_conv_bwd_weight_kernel(const ModalMixParams p) {
  DMM_SHARED_ARRAY(acc_t, red, kWeightBlockY * kWeightBlockX);  // [threadIdx.y][threadIdx.x]
  const int d = blockIdx.x * kWeightBlockX + threadIdx.x;
  const int m = blockIdx.y;
  const int M = p.n_modalities, W = p.width, L = p.len;
  const int first = first_token_of(m, p.phase, M);
  const int64_t per_batch = first < L ? (L - 1 - first) / M + 1 : 0;  // tokens of m per row
  const int64_t rows = int64_t(p.batch) * per_batch;

  acc_t w[kMaxModalMixWindow];
#pragma unroll
  for (int k = 0; k < kMaxModalMixWindow; ++k) w[k] = acc_t(0);
  acc_t bsum = acc_t(0);
  if (d < p.dim) {
    for (int64_t rr = int64_t(blockIdx.z) * kWeightBlockY + threadIdx.y; rr < rows;
         rr += int64_t(gridDim.z) * kWeightBlockY) {
      const int64_t b = rr / per_batch;
      const int i = first + M * int(rr % per_batch);
      const acc_t g = load<acc_t>(p.dy, (b * L + i) * p.dim + d);
      bsum += g;
#pragma unroll
      for (int k = 0; k < kMaxModalMixWindow; ++k) {
        const int j = i - W + 1 + k;
        if (k < W && j >= 0) w[k] += g * load<acc_t>(p.u, (b * L + j) * p.dim + d);
      }
    }
  }
  // Reduce over threadIdx.y: slots k < W are the weight taps, slot W the bias.
  // Deterministic mode: this split's own slice of (splits, M, W, D) / (splits, M, D) partials,
  // each element added once (onto zero), summed over the splits in a fixed order by the host.
  const int64_t split = p.split_partials ? int64_t(blockIdx.z) : 0;
  const gptr<acc_t> dweight = ptr_cast<acc_t>(p.dweight_acc) + split * p.n_modalities * W * p.dim;
  const gptr<acc_t> dbias =
      p.dbias_acc != nullptr ? ptr_cast<acc_t>(p.dbias_acc) + split * p.n_modalities * p.dim : nullptr;
#pragma unroll
  for (int k = 0; k <= kMaxModalMixWindow; ++k) {
    if (k > W) break;  // uniform across the block: every thread reaches the same barriers
    // k % kMax keeps the (compile-time) register index in range at k == kMax, where W == kMax.
    const acc_t v = k < W ? w[k % kMaxModalMixWindow] : bsum;
    red[threadIdx.y * kWeightBlockX + threadIdx.x] = v;
    __syncthreads();
    if (threadIdx.y == 0 && d < p.dim) {
      acc_t sum = acc_t(0);
#pragma unroll
      for (int y = 0; y < kWeightBlockY; ++y) sum += red[y * kWeightBlockX + threadIdx.x];
      if (k < W) atomicAdd(dweight + (int64_t(m) * W + k) * p.dim + d, sum);
      else if (dbias != nullptr) atomicAdd(dbias + int64_t(m) * p.dim + d, sum);
    }
    __syncthreads();
  }
}

// cols[b, i, k * D + d] = u[b, i - W + 1 + k, d] (zero before token 0). cols: (batch, L, W*D).
template <typename acc_t>
__global__ void __launch_bounds__(kMixThreads) im2col_kernel(const ModalMixParams p, gptr<acc_t> cols) {
  const int W = p.width;
  const int64_t total = int64_t(p.batch) * p.len * W * p.dim;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int d = int(idx % p.dim);
    const int k = int((idx / p.dim) % W);
    const int64_t bi = idx / (int64_t(W) * p.dim);  // b * L + i
    const int i = int(bi % p.len);
    const int shift = W - 1 - k;                     // u row = i - shift
    cols[idx] = i >= shift ? load<acc_t>(p.u, (bi - shift) * p.dim + d) : acc_t(0);
  }
}

// du[b, j, d] = sum_k dcols[b, j + W - 1 - k, k * D + d] over rows inside the sequence.
template <typename acc_t>
__global__ void __launch_bounds__(kMixThreads) col2im_kernel(const ModalMixParams p,
                                                          gptr<const acc_t> dcols) {
  const int W = p.width;
  const int64_t total = int64_t(p.batch) * p.len * p.dim;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int d = int(idx % p.dim);
    const int64_t bj = idx / p.dim;
    const int j = int(bj % p.len);
    acc_t acc = acc_t(0);
    for (int k = 0; k < W; ++k) {
      const int shift = W - 1 - k;  // row i = j + shift
      if (j + shift < p.len) acc += dcols[((bj + shift) * W + k) * p.dim + d];
    }
    store(p.du, idx, acc);
  }
}

}  // namespace cuda
}  // namespace dmm
