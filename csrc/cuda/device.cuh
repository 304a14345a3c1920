// Device-side helpers of the CUDA kernels, free of torch: typed loads/stores with run-time dtype
// tags, math in the accumulation type, lane-group reductions. Kernel headers (csrc/cuda/*.cuh)
// include this only, so that they compile as plain host C++ under the emulator (csrc/emu) without
// torch; the host glue (tensors, streams, devices, checks) is in common.cuh.
//
// Dtype policy. Activations may come as float32 / bfloat16 / float16 in any mix (and float64 for
// exact tests), so each tensor travels as an `InPtr` / `OutPtr` carrying its own dtype tag, and a
// kernel is instantiated only per accumulation type (float, or double when any input is double).
// The switch in `load` is uniform across a warp, so it costs a few instructions, not divergence.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "../dmm_limits.h"

namespace dmm {
namespace cuda {

// ---- dtype tags --------------------------------------------------------------------------------
enum class DType : int { kFloat = 0, kDouble = 1, kHalf = 2, kBFloat16 = 3 };

// Read-only tensor data with its dtype; `p == nullptr` marks an absent optional input.
struct InPtr {
  const void* p = nullptr;
  DType dt = DType::kFloat;
};
struct OutPtr {
  void* p = nullptr;
  DType dt = DType::kFloat;
};

template <typename acc_t>
__device__ __forceinline__ acc_t load(const InPtr& a, int64_t i) {
  switch (a.dt) {
    case DType::kFloat: return static_cast<acc_t>(static_cast<const float*>(a.p)[i]);
    case DType::kDouble: return static_cast<acc_t>(static_cast<const double*>(a.p)[i]);
    case DType::kHalf: return static_cast<acc_t>(__half2float(static_cast<const __half*>(a.p)[i]));
    default:
      return static_cast<acc_t>(__bfloat162float(static_cast<const __nv_bfloat16*>(a.p)[i]));
  }
}

template <typename acc_t>
__device__ __forceinline__ void store(const OutPtr& a, int64_t i, acc_t v) {
  switch (a.dt) {
    case DType::kFloat: static_cast<float*>(a.p)[i] = static_cast<float>(v); break;
    case DType::kDouble: static_cast<double*>(a.p)[i] = static_cast<double>(v); break;
    case DType::kHalf: static_cast<__half*>(a.p)[i] = __float2half(static_cast<float>(v)); break;
    default:
      static_cast<__nv_bfloat16*>(a.p)[i] = __float2bfloat16(static_cast<float>(v));
      break;
  }
}

// ---- math in the accumulation type (accurate library functions: no fast-math) -------------------
__device__ __forceinline__ float exp_(float x) { return expf(x); }
__device__ __forceinline__ double exp_(double x) { return exp(x); }
__device__ __forceinline__ float log1p_(float x) { return log1pf(x); }
__device__ __forceinline__ double log1p_(double x) { return log1p(x); }

template <typename acc_t>
__device__ __forceinline__ acc_t sigmoid_(acc_t x) {
  return acc_t(1) / (acc_t(1) + exp_(-x));
}
// torch.nn.functional.softplus with beta 1, threshold 20 (what mamba-ssm applies to delta).
template <typename acc_t>
__device__ __forceinline__ acc_t softplus_(acc_t x) {
  return x <= acc_t(20) ? log1p_(exp_(x)) : x;
}
// d softplus(x) / dx with the same threshold.
template <typename acc_t>
__device__ __forceinline__ acc_t softplus_grad_(acc_t x) {
  return x <= acc_t(20) ? sigmoid_(x) : acc_t(1);
}

// Sum over aligned groups of `width` lanes (a power of two <= 32). Every lane of the warp must call
// it (full mask); xor offsets below `width` never leave the group.
template <typename acc_t>
__device__ __forceinline__ acc_t group_sum(acc_t v, int width) {
  for (int off = width >> 1; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace cuda
}  // namespace dmm
