// Host glue of the CUDA kernels: tensors to typed pointers, argument checks, and the few runtime
// services the host code needs (stream, device guard, device properties, launch check, the dispatch
// key), each in two versions:
//   * nvcc (the real library): torch's CUDA context, c10::cuda::CUDAGuard, the device's properties;
//   * DMM_CUDA_EMULATION (the emulated library, csrc/emu): the same host code compiled as C++ for
//     CPU tensors: stream nullptr, no device guard, a fixed emulated device (an H100-class part:
//     132 SMs, 227 KB opt-in shared memory per block), kernels registered for the CPU dispatch key.
// The device side (dtype tags, loads/stores, math, reductions) is in device.cuh.
#pragma once

#include <ATen/ATen.h>
#ifndef DMM_CUDA_EMULATION
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#endif

#include <algorithm>
#include <initializer_list>
#include <optional>

#include "cuda/device.cuh"
#include "emu/launch.h"

// The dispatch key the kernels register for: CUDA, or CPU for the emulated library.
#ifdef DMM_CUDA_EMULATION
#define DMM_KERNEL_DISPATCH_KEY CPU
#else
#define DMM_KERNEL_DISPATCH_KEY CUDA
#endif

namespace dmm {
namespace cuda {

#define DMM_CUDA_CHECK(expr)                                                            \
  do {                                                                                  \
    cudaError_t err_ = (expr);                                                          \
    TORCH_CHECK(err_ == cudaSuccess, "CUDA error: ", cudaGetErrorString(err_), " at ", \
                __FILE__, ":", __LINE__);                                               \
  } while (0)

// ---- runtime services -----------------------------------------------------------------------------
#ifdef DMM_CUDA_EMULATION
// The emulator reports a bad launch by throwing at the launch (a c10 error reaches Python).
#define DMM_KERNEL_LAUNCH_CHECK() DMM_CUDA_CHECK(cudaGetLastError())
constexpr const char* kKernelDeviceName = "CPU (emulated CUDA)";
inline bool on_kernel_device(const at::Tensor& t) { return t.is_cpu(); }
inline cudaStream_t current_stream() { return nullptr; }
struct DeviceGuard {
  explicit DeviceGuard(c10::Device) {}
};
inline int current_device() { return 0; }
struct EmulatedDeviceProperties {
  int multiProcessorCount = 132;
  size_t sharedMemPerBlock = 48 * 1024;
  size_t sharedMemPerBlockOptin = 227 * 1024;
};
inline const EmulatedDeviceProperties& device_properties() {
  static const EmulatedDeviceProperties props;
  return props;
}
#else
#define DMM_KERNEL_LAUNCH_CHECK() C10_CUDA_KERNEL_LAUNCH_CHECK()
constexpr const char* kKernelDeviceName = "CUDA";
inline bool on_kernel_device(const at::Tensor& t) { return t.is_cuda(); }
inline cudaStream_t current_stream() { return at::cuda::getCurrentCUDAStream(); }
using DeviceGuard = c10::cuda::CUDAGuard;
inline int current_device() { return int(c10::cuda::current_device()); }
inline const cudaDeviceProp& device_properties() { return *at::cuda::getCurrentDeviceProperties(); }
#endif

// ---- dtype tags and typed pointers ------------------------------------------------------------------
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


// An undefined tensor (an absent optional made contiguous_or_empty) is an absent input: its
// scalar_type() is UNKNOWN_SCALAR, so no dtype tag is read from it.
inline InPtr in_ptr(const at::Tensor& t) {
  if (!t.defined()) return InPtr{};
  return {t.numel() > 0 ? t.data_ptr() : nullptr, dtype_tag(t.scalar_type())};
}
inline InPtr in_ptr(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? in_ptr(*t) : InPtr{};
}
inline OutPtr out_ptr(const at::Tensor& t) {
  return {t.numel() > 0 ? t.data_ptr() : nullptr, dtype_tag(t.scalar_type())};
}


// ---- host-side checks (shapes and dtypes: ../checks.h, shared with the CPU kernels) ---------------
// `t` must live on the CUDA device of `ref` (checks.h only compares devices).
inline void check_cuda(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref) {
  TORCH_CHECK(on_kernel_device(ref), op, ": ", name, " must be a ", kKernelDeviceName,
              " tensor; got one on ", ref.device());
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

// Blocks for a grid-stride elementwise kernel over `n` items.
inline unsigned int elementwise_blocks(int64_t n, int threads) {
  const int64_t max_blocks = int64_t(device_properties().multiProcessorCount) * 32;
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min(ceil_div(n, threads), max_blocks)));
}

}  // namespace cuda
}  // namespace dmm
