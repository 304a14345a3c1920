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
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <type_traits>
#include <utility>

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

// Dynamic shared memory a launch may use without opting in.
constexpr size_t kDefaultSmem = 48 * 1024;

// Raise a kernel's dynamic shared-memory limit past kDefaultSmem, once per (kernel, device, size),
// so that a replay or graph capture after a first eager call makes no runtime-config call.
template <typename Kernel>
void allow_smem(Kernel kernel, size_t bytes) {
  if (bytes <= kDefaultSmem) return;
  static std::mutex mutex;
  static std::map<std::pair<const void*, int>, size_t> granted;
  const std::lock_guard<std::mutex> lock(mutex);
  size_t& g = granted[{reinterpret_cast<const void*>(kernel), current_device()}];
  if (g >= bytes) return;
  DMM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(bytes)));
  g = bytes;
}

// ---- dtype tags and device buffers of tensors ----------------------------------------------------
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

// The kernels' checked pointers (device.cuh) to a contiguous tensor's data. `name` (a string
// literal) is how the emulator's reports call the buffer. An undefined tensor (an absent optional
// made contiguous_or_empty) or an empty one gives a null pointer: an absent input.
//   in_*   read-only input;
//   out_*  an output that the launch it is passed to writes in full (the emulator checks it);
//   rw_*   read and written, or accumulated into (no full-write check).
inline InPtr in_ptr(const at::Tensor& t, const char* name) {
  if (!t.defined() || t.numel() == 0) return InPtr{};
  TORCH_INTERNAL_ASSERT(t.is_contiguous(), name, " must be contiguous");
  return make_in_ptr(t.const_data_ptr(), dtype_tag(t.scalar_type()), t.numel(), name);
}
inline InPtr in_ptr(const std::optional<at::Tensor>& t, const char* name) {
  return t.has_value() ? in_ptr(*t, name) : InPtr{};
}
inline OutPtr out_ptr(const at::Tensor& t, const char* name, Writes w = Writes::kAll) {
  if (t.numel() == 0) return OutPtr{};
  TORCH_INTERNAL_ASSERT(t.is_contiguous(), name, " must be contiguous");
  return make_out_ptr(t.data_ptr(), dtype_tag(t.scalar_type()), t.numel(), name, w);
}

template <typename T>
struct scalar_type_of;
template <>
struct scalar_type_of<float> : std::integral_constant<at::ScalarType, at::kFloat> {};
template <>
struct scalar_type_of<double> : std::integral_constant<at::ScalarType, at::kDouble> {};
template <>
struct scalar_type_of<__half> : std::integral_constant<at::ScalarType, at::kHalf> {};
template <>
struct scalar_type_of<__nv_bfloat16> : std::integral_constant<at::ScalarType, at::kBFloat16> {};
template <>
struct scalar_type_of<int32_t> : std::integral_constant<at::ScalarType, at::kInt> {};
template <>
struct scalar_type_of<int64_t> : std::integral_constant<at::ScalarType, at::kLong> {};

// T = void: type-erased (the extent in bytes; the kernel casts with ptr_cast<T>).
template <typename T>
gptr<T> tensor_gptr(const at::Tensor& t, const char* name, Writes w) {
  using E = std::remove_const_t<T>;
  if (!t.defined() || t.numel() == 0) return make_gptr<T>(nullptr, 0, name);
  TORCH_INTERNAL_ASSERT(t.is_contiguous(), name, " must be contiguous");
  if constexpr (std::is_void_v<E>) {
    return make_gptr<T>(static_cast<T*>(t.data_ptr()), int64_t(t.nbytes()), name, w);
  } else {
    TORCH_INTERNAL_ASSERT(t.scalar_type() == scalar_type_of<E>::value, name, " is ", t.scalar_type());
    return make_gptr<T>(static_cast<T*>(t.data_ptr()), t.numel(), name, w);
  }
}
template <typename T>
gptr<const T> in_gptr(const at::Tensor& t, const char* name) {
  return tensor_gptr<const T>(t, name, Writes::kSome);
}
template <typename T>
gptr<T> out_gptr(const at::Tensor& t, const char* name) {
  return tensor_gptr<T>(t, name, Writes::kAll);
}
template <typename T>
gptr<T> rw_gptr(const at::Tensor& t, const char* name) {
  return tensor_gptr<T>(t, name, Writes::kSome);
}

// A tensor for kernels to write: NaN-filled in emulated builds (-1 bytes for integers), so that an
// element no kernel writes shows in the results, as uninitialised GPU memory can.
inline at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
#ifdef DMM_CUDA_EMULATION
  if (at::isFloatingType(t.scalar_type())) t.fill_(std::numeric_limits<double>::quiet_NaN());
  else t.fill_(-1);
#endif
  return t;
}
inline at::Tensor empty_output_like(const at::Tensor& t) {
  return empty_output(t.sizes(), t.options().memory_format(at::MemoryFormat::Contiguous));
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
