// Modal mixer on the GPU: parameters and per-point device routines, in a header so that a fused
// block kernel can evaluate the mixer at the tokens it owns.
//
// u, y, dy: (batch, L, D) channels-last. Token i has modality (phase + i) % M and sees
// u_{i-W+1..i} (zeros before 0); conv weight (M, W, D), bias (M, D).
#pragma once

#include "common.cuh"

namespace dmm {
namespace cuda {

struct ModalMixParams {
  InPtr u, weight, bias, dy;  // bias.p == nullptr when absent
  OutPtr y, du;
  void* dweight_acc = nullptr;  // conv backward: (M, W, D) acc_t, zero-initialised
  void* dbias_acc = nullptr;    // conv backward: (M, D) acc_t, zero-initialised
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

}  // namespace cuda
}  // namespace dmm
