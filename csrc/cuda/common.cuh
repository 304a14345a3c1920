// Shared helpers of the CUDA kernels: typed loads/stores with run-time dtype tags, accumulation
// type selection, math in the accumulation type, lane-group reductions and argument checks.
//
// Dtype policy. Activations may come as float32 / bfloat16 / float16 in any mix (and float64 for
// exact tests), so each tensor travels as an `InPtr` / `OutPtr` carrying its own dtype tag, and a
// kernel is instantiated only per accumulation type (float, or double when any input is double).
// The switch in `load` is uniform across a warp, so it costs a few instructions, not divergence.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <initializer_list>
#include <optional>

namespace dmm {
namespace cuda {

#define DMM_CUDA_CHECK(expr)                                                            \
  do {                                                                                  \
    cudaError_t err_ = (expr);                                                          \
    TORCH_CHECK(err_ == cudaSuccess, "CUDA error: ", cudaGetErrorString(err_), " at ", \
                __FILE__, ":", __LINE__);                                               \
  } while (0)

// ---- dtype tags --------------------------------------------------------------------------------
enum class DType : int { kFloat = 0, kDouble = 1, kHalf = 2, kBFloat16 = 3 };

inline DType dtype_tag(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::kFloat;
    case at::kDouble: return DType::kDouble;
    case at::kHalf: return DType::kHalf;
    case at::kBFloat16: return DType::kBFloat16;
    default: TORCH_CHECK(false, "dmm: unsupported dtype ", t);
  }
  return DType::kFloat;  // unreachable
}

// Read-only tensor data with its dtype; `p == nullptr` marks an absent optional input.
struct InPtr {
  const void* p = nullptr;
  DType dt = DType::kFloat;
};
struct OutPtr {
  void* p = nullptr;
  DType dt = DType::kFloat;
};

inline InPtr in_ptr(const at::Tensor& t) {
  return {t.defined() && t.numel() > 0 ? t.data_ptr() : nullptr, dtype_tag(t.scalar_type())};
}
inline InPtr in_ptr(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? in_ptr(*t) : InPtr{};
}
inline OutPtr out_ptr(const at::Tensor& t) {
  return {t.numel() > 0 ? t.data_ptr() : nullptr, dtype_tag(t.scalar_type())};
}

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

// ---- host-side checks (shapes and dtypes: ../checks.h, shared with the CPU kernels) ---------------
// `t` must live on the CUDA device of `ref` (checks.h only compares devices).
inline void check_cuda(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref) {
  TORCH_CHECK(ref.is_cuda(), op, ": ", name, " must be a CUDA tensor; got one on ", ref.device());
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but u is on ",
              ref.device(), "; move all inputs to one GPU");
}
inline void check_cuda(const char* op, const char* name, const std::optional<at::Tensor>& t,
                       const at::Tensor& ref) {
  if (t.has_value() && t->defined()) check_cuda(op, name, *t, ref);
}

// Contiguous copy of an optional input (undefined tensor when absent).
inline at::Tensor contiguous_or_empty(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t->contiguous() : at::Tensor();
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks for a grid-stride elementwise kernel over `n` items.
inline unsigned int elementwise_blocks(int64_t n, int threads) {
  const int64_t max_blocks = int64_t(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 32;
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min(ceil_div(n, threads), max_blocks)));
}

}  // namespace cuda
}  // namespace dmm
