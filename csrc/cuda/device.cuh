// Device-side helpers of the CUDA kernels, free of torch: checked memory access (gptr / sptr /
// InPtr / OutPtr), typed loads/stores with run-time dtype tags, math in the accumulation type,
// lane-group reductions. Kernel headers (csrc/cuda/*.cuh) include this only, so that they compile as
// plain host C++ under the emulator (csrc/emu) without torch; the host glue (tensors, streams,
// devices, checks) is in common.cuh.
//
// Memory access. Kernels reach memory only through these types, which are plain pointers under nvcc
// (the same machine code as writing `T*`) and checked views under DMM_CUDA_EMULATION (bounds,
// alignment, byte counts, race check: csrc/emu/README.md):
//   gptr<T>   global memory of element type T (const T: read-only). p[i], p[i] = v, p[i] += v,
//             p + k, atomicAdd(p + i, v), load_vec<N>(p, i) / store_vec(p, i, v) (N elements as one
//             16-byte-or-smaller access; natural alignment required), ptr_cast<U>(p);
//             gptr<void> is type-erased (ptr_cast<T> gives the typed view).
//   sptr<T>   shared memory, the same operations:
//             dynamic_smem<T>()              the launch's dynamic shared memory
//             DMM_DYNAMIC_SMEM(T, name);     the same as `sptr<T> name` (fewer registers: nvcc)
//             DMM_SHARED_ARRAY(T, name, n);  a static __shared__ T[n], seen as `sptr<T> name`
//   InPtr / OutPtr  a buffer with a run-time dtype tag; load<acc_t>(p, i) / store(p, i, v).
// The host glue builds them with extent and name (common.cuh: in_gptr / out_gptr / rw_gptr /
// in_ptr / out_ptr; torch-free code: make_gptr / make_in_ptr / make_out_ptr below).
//
// Dtype policy of the InPtr / OutPtr kernels. Activations may come as float32 / bfloat16 / float16
// in any mix (and float64 for exact tests), so each tensor travels as an `InPtr` / `OutPtr` carrying
// its own dtype tag, and a kernel is instantiated only per accumulation type (float, or double when
// any input is double). The switch in `load` is uniform across a warp, so it costs a few
// instructions, not divergence.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "../dmm_limits.h"
#ifdef DMM_CUDA_EMULATION
#include "emu/checked.h"
#endif

namespace dmm {
namespace cuda {

// ---- checked pointers ----------------------------------------------------------------------------
// N consecutive elements moved as one access (16 bytes at most: 8 halves, 4 floats, 2 doubles).
template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

// Whether an output must be written in full by every launch it is passed to (checked by the
// emulator after the launch), or is read-write / accumulated into.
enum class Writes : int { kSome = 0, kAll = 1 };

#ifdef DMM_CUDA_EMULATION
template <typename T>
using gptr = ::dmm::emu::Ptr<T, ::dmm::emu::Space::kGlobal>;
template <typename T>
using sptr = ::dmm::emu::Ptr<T, ::dmm::emu::Space::kShared>;
using ::dmm::emu::ptr_cast;

template <int N, typename T, ::dmm::emu::Space S>
Vec<std::remove_const_t<T>, N> load_vec(const ::dmm::emu::Ptr<T, S>& p, int64_t i) {
  return ::dmm::emu::load_block<Vec<std::remove_const_t<T>, N>>(p, i);
}
template <int N, typename T, ::dmm::emu::Space S>
void store_vec(const ::dmm::emu::Ptr<T, S>& p, int64_t i, const Vec<T, N>& v) {
  ::dmm::emu::store_block(p, i, v);
}
template <typename T>
sptr<T> dynamic_smem() {
  return ::dmm::emu::dynamic_smem<T>();
}
// The address a pointer holds (alignment tests before vector access).
template <typename T, ::dmm::emu::Space S>
uintptr_t address_of(const ::dmm::emu::Ptr<T, S>& p) {
  return reinterpret_cast<uintptr_t>(p.raw());
}
// A static shared array (NaN-filled at the start of every block in the emulator).
#define DMM_SHARED_ARRAY(T, name, n) DMM_SHARED_ARRAY_ALIGNED(T, name, n, alignof(T))
#define DMM_SHARED_ARRAY_ALIGNED(T, name, n, align)                                     \
  alignas(16) __shared__ T name##_dmm_storage[n];                                       \
  const ::dmm::cuda::sptr<T> name = ::dmm::emu::static_smem(name##_dmm_storage, #name, align)
// The launch's dynamic shared memory as `sptr<T> name` (dynamic_smem<T>() in a statement).
#define DMM_DYNAMIC_SMEM(T, name) const ::dmm::cuda::sptr<T> name = ::dmm::cuda::dynamic_smem<T>()

// Host side (torch-free): n elements of T at p (T = void: n bytes).
template <typename T>
gptr<T> make_gptr(T* p, int64_t n, const char* name, Writes w = Writes::kSome) {
  return ::dmm::emu::global_ptr(p, n, name, w == Writes::kAll);
}
#else
template <typename T>
using gptr = T*;
template <typename T>
using sptr = T*;

template <typename U, typename T>
__host__ __device__ __forceinline__ U* ptr_cast(T* p) {
  return reinterpret_cast<U*>(p);
}
template <int N, typename T>
__device__ __forceinline__ Vec<std::remove_const_t<T>, N> load_vec(T* p, int64_t i) {
  return *reinterpret_cast<const Vec<std::remove_const_t<T>, N>*>(p + i);
}
template <int N, typename T>
__device__ __forceinline__ void store_vec(T* p, int64_t i, const Vec<T, N>& v) {
  *reinterpret_cast<Vec<T, N>*>(p + i) = v;
}
template <typename T>
__host__ __device__ __forceinline__ uintptr_t address_of(T* p) {
  return reinterpret_cast<uintptr_t>(p);
}
template <typename T>
__device__ __forceinline__ T* dynamic_smem() {
  extern __shared__ __align__(16) unsigned char dmm_dynamic_smem[];
  return reinterpret_cast<T*>(dmm_dynamic_smem);
}
#define DMM_SHARED_ARRAY(T, name, n) \
  __shared__ T name##_dmm_storage[n];   \
  T* const name = name##_dmm_storage
#define DMM_SHARED_ARRAY_ALIGNED(T, name, n, align)  \
  __shared__ __align__(align) T name##_dmm_storage[n]; \
  T* const name = name##_dmm_storage
// Declared in the kernel itself: ptxas allocated up to 5 more registers (scan backward, sm_80)
// when the pointer came through dynamic_smem<T>().
#define DMM_DYNAMIC_SMEM(T, name)                                     \
  extern __shared__ __align__(16) unsigned char name##_dmm_dynamic[]; \
  T* const name = reinterpret_cast<T*>(name##_dmm_dynamic)

template <typename T>
__host__ __forceinline__ gptr<T> make_gptr(T* p, int64_t, const char*, Writes = Writes::kSome) {
  return p;
}
#endif

// ---- dtype tags --------------------------------------------------------------------------------
enum class DType : int { kFloat = 0, kDouble = 1, kHalf = 2, kBFloat16 = 3 };

__host__ __device__ __forceinline__ int dtype_size(DType dt) {
  return dt == DType::kDouble ? 8 : dt == DType::kFloat ? 4 : 2;
}

// Tensor data with its dtype; `p == nullptr` marks an absent optional input.
#ifdef DMM_CUDA_EMULATION
struct InPtr {
  const void* p = nullptr;
  DType dt = DType::kFloat;
  ::dmm::emu::BufferRef buf;
  InPtr() = default;
  InPtr(const void* data, DType t, const ::dmm::emu::BufferRef& b) : p(data), dt(t), buf(b) {}
};
struct OutPtr {
  void* p = nullptr;
  DType dt = DType::kFloat;
  ::dmm::emu::BufferRef buf;
  OutPtr() = default;
  OutPtr(void* data, DType t, const ::dmm::emu::BufferRef& b) : p(data), dt(t), buf(b) {}
};
// Host side (torch-free): n elements of dtype dt at p.
inline InPtr make_in_ptr(const void* p, DType dt, int64_t n, const char* name) {
  if (p == nullptr || n == 0) return InPtr{};
  const int e = dtype_size(dt);
  return InPtr(p, dt, ::dmm::emu::BufferRef(p, n * e, name, 0, uint8_t(e)));
}
inline OutPtr make_out_ptr(void* p, DType dt, int64_t n, const char* name, Writes w = Writes::kAll) {
  if (p == nullptr || n == 0) return OutPtr{};
  const int e = dtype_size(dt);
  const uint8_t flags = ::dmm::emu::BufferRef::kWritable |
                        (w == Writes::kAll ? ::dmm::emu::BufferRef::kWriteAll : 0);
  return OutPtr(p, dt, ::dmm::emu::BufferRef(p, n * e, name, flags, uint8_t(e)));
}
// A read view of an output (an in-place update reads what it then overwrites).
__device__ __forceinline__ InPtr in_view(const OutPtr& o) { return InPtr(o.p, o.dt, o.buf); }
#else
struct InPtr {
  const void* p = nullptr;
  DType dt = DType::kFloat;
};
struct OutPtr {
  void* p = nullptr;
  DType dt = DType::kFloat;
};
__host__ __forceinline__ InPtr make_in_ptr(const void* p, DType dt, int64_t n, const char*) {
  return n == 0 ? InPtr{} : InPtr{p, dt};
}
__host__ __forceinline__ OutPtr make_out_ptr(void* p, DType dt, int64_t n, const char*,
                                             Writes = Writes::kAll) {
  return n == 0 ? OutPtr{} : OutPtr{p, dt};
}
__device__ __forceinline__ InPtr in_view(const OutPtr& o) { return InPtr{o.p, o.dt}; }
#endif

// Element i of `a`, read as acc_t (checked in the emulator: absent, out of bounds).
template <typename acc_t>
__device__ __forceinline__ acc_t load(const InPtr& a, int64_t i) {
#ifdef DMM_CUDA_EMULATION
  ::dmm::emu::detail::check(a.buf, ::dmm::emu::detail::advance(a.p, i * dtype_size(a.dt)),
                            dtype_size(a.dt), ::dmm::emu::Access::kRead);
#endif
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
#ifdef DMM_CUDA_EMULATION
  ::dmm::emu::detail::check(a.buf, ::dmm::emu::detail::advance(a.p, i * dtype_size(a.dt)),
                            dtype_size(a.dt), ::dmm::emu::Access::kWrite);
#endif
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
