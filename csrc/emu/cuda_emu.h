// The CUDA execution model on the CPU: what the kernel bodies of csrc/cuda need to compile unchanged
// as host C++ and run on the CPU when DMM_CUDA_EMULATION is defined. Include this instead of
// cuda_runtime.h / cuda_fp16.h / cuda_bf16.h (csrc/emu/shim/ holds headers of those names that
// forward here, so an unchanged `#include <cuda_runtime.h>` lands here too).
//
// Execution model (runtime.cpp): a launch runs its blocks one after another on the calling OS
// thread; a block's threads are cooperative user-space threads (ucontext fibers) that switch only at
// __syncthreads, at warp intrinsics and at exit. Between two such points the threads run in an order
// chosen by the schedule seed (set_schedule_seed / DMM_EMU_SEED), so a missing barrier changes
// results across seeds. What the hardware enforces is enforced here, as a dmm::emu::Error naming the
// kernel (never a hang): blockDim <= 1024 (x, y <= 1024, z <= 64), grid y/z <= 65535, dynamic shared
// memory <= 48 KB unless raised with cudaFuncSetAttribute, every thread of the block at each
// barrier, every lane of the mask at a warp intrinsic.
//
// Shared memory. `__shared__` is `thread_local`: a block-scope `thread_local` has static storage on
// the launching OS thread, which every fiber of the block runs on, and blocks run one after another,
// so one copy serves as the block's shared memory. `extern __shared__ T name[]` then declares a
// namespace-scope thread_local array that the translation unit including the kernels must define,
// once per namespace that declares one, with DMM_EMU_DYNAMIC_SHARED(name) (a missing definition is a
// link error naming it). Before each block the runtime fills the launch's dynamic shared memory with
// 0xFF bytes (NaN as float, double, half and bfloat16) and guards the bytes past the requested size
// (ASan-poisoned in sanitizer builds, else a canary checked after the block). Compile emulated
// kernels with -fno-extern-tls-init (GCC otherwise emits a call through a null TLS-init pointer for
// block-scope extern thread_local arrays); the CMake target dmm_emu carries the flag.
#pragma once

#ifndef DMM_CUDA_EMULATION
#error "emu/cuda_emu.h is the CPU emulation of CUDA: define DMM_CUDA_EMULATION"
#endif

#include <math.h>  // the C++ <math.h> also puts the float overloads (sqrt(float), ...) in ::

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#pragma GCC diagnostic ignored "-Wunknown-pragmas"  // #pragma unroll

// ---- qualifiers ----------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ thread_local
#define __constant__
#define __managed__
#define __grid_constant__

// ---- vector types and launch configuration ---------------------------------------------------------
struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return uint3{x, y, z}; }
};

// ---- runtime API subset ----------------------------------------------------------------------------
enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDeviceFunction = 98,
  cudaErrorLaunchFailure = 719,
};
using cudaError = cudaError_t;
struct CUstream_st;
using cudaStream_t = CUstream_st*;
enum cudaFuncAttribute : int {
  cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
  cudaFuncAttributePreferredSharedMemoryCarveout = 9,
};

const char* cudaGetErrorString(cudaError_t err);
const char* cudaGetErrorName(cudaError_t err);
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value);
template <typename T>
cudaError_t cudaFuncSetAttribute(T* entry, cudaFuncAttribute attr, int value) {
  return cudaFuncSetAttribute(reinterpret_cast<const void*>(entry), attr, value);
}

namespace dmm {
namespace emu {

// A launch or a block broke a rule the hardware enforces (or the emulator checks).
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Limits of the emulated device (an sm_90 part).
constexpr int kWarpSize = 32;
constexpr unsigned kMaxThreadsPerBlock = 1024;
constexpr unsigned kMaxBlockDimXY = 1024, kMaxBlockDimZ = 64;
constexpr unsigned kMaxGridDimX = 2147483647u, kMaxGridDimYZ = 65535;
constexpr size_t kDefaultDynamicSmem = 48 * 1024;  // without cudaFuncSetAttribute
constexpr size_t kMaxDynamicSmem = 232448;         // sharedMemPerBlockOptin of sm_90 (227 KB)
constexpr size_t kSmemGuard = 4096;                // canary bytes past the requested size

// Schedule seed: 0 runs a block's threads in thread-index order between synchronisation points and
// the blocks in grid order; any other value a pseudo-random order drawn from it (threads and blocks).
// The initial value comes from the environment variable DMM_EMU_SEED (0 when unset). Per OS thread.
void set_schedule_seed(uint64_t seed);
uint64_t schedule_seed();
// Fill dynamic shared memory with 0xFF (NaN) before each block (default on).
void set_nan_fill(bool on);
bool nan_fill();
// Blocks run by this OS thread so far (a test hook).
uint64_t blocks_run();
// Kernel launches this OS thread made so far (each valid DMM_LAUNCH).
uint64_t launches_run();
// The race check of shared and global memory (memcheck.cpp; initially DMM_EMU_RACECHECK=1). Process-wide.
void set_racecheck(bool on);
bool racecheck();

// What the launches of each kernel did, by the kernel's text in DMM_LAUNCH (process-wide, summed
// over launches until reset): global-memory bytes moved through checked pointers (every access),
// and distinct bytes read / written per launch (what a launch must move from or to DRAM at least).
struct KernelCounters {
  uint64_t launches = 0, blocks = 0;
  uint64_t bytes_read = 0, bytes_written = 0;
  uint64_t unique_bytes_read = 0, unique_bytes_written = 0;
};
std::vector<std::pair<std::string, KernelCounters>> kernel_counters();
void reset_kernel_counters();

// The dynamic shared-memory limit a launch of `kernel` may use now (48 KB or the opt-in value).
size_t dynamic_smem_limit(const void* kernel);

namespace detail {

// The built-in variables of the running fiber (out of line: the current-fiber pointer is a
// thread_local of runtime.cpp, set by the scheduler at every switch; calling one outside a kernel
// aborts with a message).
const uint3& thread_idx();
const uint3& block_idx();
const dim3& block_dim();
const dim3& grid_dim();

// Barrier: every thread of the block, same call site. `pred` feeds __syncthreads_count/and/or;
// returns the number of threads whose pred was nonzero.
int barrier(int pred, const char* file, int line);

// Warp rendezvous of the lanes in `mask`. kind: what the lanes execute; every lane of the mask must
// execute the same kind at the same call site with the same mask and width. `bits` is this lane's
// value (<= 8 bytes), `arg` its lane operand (xor mask, delta or source lane).
enum class WarpOp : int { kSync, kShflIdx, kShflUp, kShflDown, kShflXor, kBallot, kAny, kAll };
uint64_t warp_exchange(WarpOp op, unsigned mask, uint64_t bits, int arg, int width, const char* file,
                       int line);

// ---- dynamic shared memory buffers -----------------------------------------------------------------
using SmemGetter = unsigned char* (*)();
bool register_dynamic_smem(SmemGetter get, const char* name, const char* file, int line);

// ---- launch -----------------------------------------------------------------------------------------
// Between begin_capture and end_capture (DMM_LAUNCH copying the kernel's arguments) every checked
// pointer copied registers its buffer with the next launch (checked.h).
void begin_capture();
void end_capture();
struct CaptureScope {
  CaptureScope() { begin_capture(); }
  ~CaptureScope() { end_capture(); }
  CaptureScope(const CaptureScope&) = delete;
  CaptureScope& operator=(const CaptureScope&) = delete;
};

// Runs `thread_body` once per thread of every block of the grid (blocks one after another).
void launch(const void* kernel, const char* name, dim3 grid, dim3 block, size_t smem,
            cudaStream_t stream, const std::function<void()>& thread_body);

template <typename... Params>
class Launcher {
 public:
  using Kernel = void (*)(Params...);
  Launcher(Kernel k, const char* name, dim3 grid, dim3 block, size_t smem, cudaStream_t stream)
      : k_(k), name_(name), grid_(grid), block_(block), smem_(smem), stream_(stream) {}

  // Arguments convert to the kernel's parameter types once, as a CUDA launch copies them; every
  // thread then calls the kernel with its own copies.
  template <typename... Args>
  void operator()(Args&&... args) const {
    static_assert(sizeof...(Args) == sizeof...(Params), "DMM_LAUNCH: wrong number of kernel arguments");
    const std::tuple<std::decay_t<Params>...> stored = [&] {
      const CaptureScope capture;
      return std::tuple<std::decay_t<Params>...>(std::forward<Args>(args)...);
    }();
    const Kernel k = k_;
    launch(reinterpret_cast<const void*>(k_), name_, grid_, block_, smem_, stream_,
           [&stored, k]() { std::apply(k, stored); });
  }

 private:
  Kernel k_;
  const char* name_;
  dim3 grid_, block_;
  size_t smem_;
  cudaStream_t stream_;
};

template <typename... Params>
Launcher<Params...> make_launcher(void (*k)(Params...), const char* name, dim3 grid, dim3 block,
                                  size_t smem, cudaStream_t stream) {
  return Launcher<Params...>(k, name, grid, block, smem, stream);
}

template <typename T>
uint64_t to_bits(const T& v) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8,
                "warp shuffles take trivially copyable values of at most 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <typename T>
T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

// ---- fp16 / bf16 bit conversions (round to nearest even; NaN -> canonical NaN) ----------------------
inline uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float f32_from(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint16_t float_to_half_bits(float f);
float half_bits_to_float(uint16_t h);
inline uint16_t float_to_bf16_bits(float f) {
  const uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fff;  // NaN
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
inline float bf16_bits_to_float(uint16_t b) { return f32_from(uint32_t(b) << 16); }

}  // namespace detail
}  // namespace emu
}  // namespace dmm

// Defines the dynamic shared-memory array that `extern __shared__ T name[]` declarations inside
// kernels of the enclosing namespace refer to. Use at namespace scope, in the namespace of those
// kernels, in the translation unit that includes them (an unnamed namespace works too).
#define DMM_EMU_DYNAMIC_SHARED(name)                                                              \
  alignas(128) thread_local unsigned char name[::dmm::emu::kMaxDynamicSmem +                      \
                                               ::dmm::emu::kSmemGuard];                           \
  [[maybe_unused]] static const bool dmm_emu_registered_##name =                                  \
      ::dmm::emu::detail::register_dynamic_smem([]() -> unsigned char* { return name; }, #name,   \
                                                __FILE__, __LINE__)

// ---- built-in variables ----------------------------------------------------------------------------
#define threadIdx (::dmm::emu::detail::thread_idx())
#define blockIdx (::dmm::emu::detail::block_idx())
#define blockDim (::dmm::emu::detail::block_dim())
#define gridDim (::dmm::emu::detail::grid_dim())
#define warpSize 32

// ---- synchronisation -------------------------------------------------------------------------------
inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::dmm::emu::detail::barrier(0, file, line);
}
inline int __syncthreads_count(int pred, const char* file = __builtin_FILE(),
                               int line = __builtin_LINE()) {
  return ::dmm::emu::detail::barrier(pred != 0, file, line);
}
inline int __syncthreads_and(int pred, const char* file = __builtin_FILE(),
                             int line = __builtin_LINE()) {
  return ::dmm::emu::detail::barrier(pred != 0, file, line) ==
         int(blockDim.x * blockDim.y * blockDim.z);
}
inline int __syncthreads_or(int pred, const char* file = __builtin_FILE(),
                            int line = __builtin_LINE()) {
  return ::dmm::emu::detail::barrier(pred != 0, file, line) > 0;
}
inline void __syncwarp(unsigned mask = 0xffffffffu, const char* file = __builtin_FILE(),
                       int line = __builtin_LINE()) {
  ::dmm::emu::detail::warp_exchange(::dmm::emu::detail::WarpOp::kSync, mask, 0, 0, 32, file, line);
}
inline void __threadfence() {}
inline void __threadfence_block() {}
inline void __threadfence_system() {}

// ---- warp intrinsics -------------------------------------------------------------------------------
template <typename T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32, const char* file = __builtin_FILE(),
              int line = __builtin_LINE()) {
  using namespace ::dmm::emu::detail;
  return from_bits<T>(warp_exchange(WarpOp::kShflIdx, mask, to_bits(var), src_lane, width, file, line));
}
template <typename T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32,
                 const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  using namespace ::dmm::emu::detail;
  return from_bits<T>(
      warp_exchange(WarpOp::kShflUp, mask, to_bits(var), int(delta), width, file, line));
}
template <typename T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32,
                   const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  using namespace ::dmm::emu::detail;
  return from_bits<T>(
      warp_exchange(WarpOp::kShflDown, mask, to_bits(var), int(delta), width, file, line));
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32,
                  const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  using namespace ::dmm::emu::detail;
  return from_bits<T>(
      warp_exchange(WarpOp::kShflXor, mask, to_bits(var), lane_mask, width, file, line));
}
inline unsigned __ballot_sync(unsigned mask, int pred, const char* file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
  using namespace ::dmm::emu::detail;
  return unsigned(warp_exchange(WarpOp::kBallot, mask, pred != 0, 0, 32, file, line));
}
inline int __any_sync(unsigned mask, int pred, const char* file = __builtin_FILE(),
                      int line = __builtin_LINE()) {
  using namespace ::dmm::emu::detail;
  return int(warp_exchange(WarpOp::kAny, mask, pred != 0, 0, 32, file, line));
}
inline int __all_sync(unsigned mask, int pred, const char* file = __builtin_FILE(),
                      int line = __builtin_LINE()) {
  using namespace ::dmm::emu::detail;
  return int(warp_exchange(WarpOp::kAll, mask, pred != 0, 0, 32, file, line));
}

// ---- atomics (fibers switch only at synchronisation points; the RMWs are also atomic across OS
// threads, for launches that run concurrently on shared data) --------------------------------------
namespace dmm {
namespace emu {
namespace detail {
template <typename T, typename F>
T atomic_rmw(T* addr, F f) {
  T old;
  __atomic_load(addr, &old, __ATOMIC_RELAXED);
  T next;
  do {
    next = f(old);
  } while (!__atomic_compare_exchange(addr, &old, &next, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
  return old;
}
template <typename T>
T atomic_float_add(T* addr, T val) {
  return atomic_rmw(addr, [val](T old) { return T(old + val); });
}
}  // namespace detail
}  // namespace emu
}  // namespace dmm

inline float atomicAdd(float* a, float v) { return ::dmm::emu::detail::atomic_float_add(a, v); }
inline double atomicAdd(double* a, double v) { return ::dmm::emu::detail::atomic_float_add(a, v); }
inline int atomicAdd(int* a, int v) { return __atomic_fetch_add(a, v, __ATOMIC_RELAXED); }
inline unsigned atomicAdd(unsigned* a, unsigned v) { return __atomic_fetch_add(a, v, __ATOMIC_RELAXED); }
inline unsigned long long atomicAdd(unsigned long long* a, unsigned long long v) {
  return __atomic_fetch_add(a, v, __ATOMIC_RELAXED);
}
inline int atomicSub(int* a, int v) { return __atomic_fetch_sub(a, v, __ATOMIC_RELAXED); }
inline unsigned atomicSub(unsigned* a, unsigned v) { return __atomic_fetch_sub(a, v, __ATOMIC_RELAXED); }
inline int atomicExch(int* a, int v) { return __atomic_exchange_n(a, v, __ATOMIC_RELAXED); }
inline unsigned atomicExch(unsigned* a, unsigned v) { return __atomic_exchange_n(a, v, __ATOMIC_RELAXED); }
inline unsigned long long atomicExch(unsigned long long* a, unsigned long long v) {
  return __atomic_exchange_n(a, v, __ATOMIC_RELAXED);
}
inline float atomicExch(float* a, float v) {
  return ::dmm::emu::detail::atomic_rmw(a, [v](float) { return v; });
}
inline int atomicMax(int* a, int v) {
  return ::dmm::emu::detail::atomic_rmw(a, [v](int o) { return o > v ? o : v; });
}
inline unsigned atomicMax(unsigned* a, unsigned v) {
  return ::dmm::emu::detail::atomic_rmw(a, [v](unsigned o) { return o > v ? o : v; });
}
inline int atomicMin(int* a, int v) {
  return ::dmm::emu::detail::atomic_rmw(a, [v](int o) { return o < v ? o : v; });
}
inline unsigned atomicMin(unsigned* a, unsigned v) {
  return ::dmm::emu::detail::atomic_rmw(a, [v](unsigned o) { return o < v ? o : v; });
}
inline int atomicCAS(int* a, int cmp, int v) {
  __atomic_compare_exchange_n(a, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  return cmp;
}
inline unsigned atomicCAS(unsigned* a, unsigned cmp, unsigned v) {
  __atomic_compare_exchange_n(a, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  return cmp;
}
inline unsigned long long atomicCAS(unsigned long long* a, unsigned long long cmp,
                                    unsigned long long v) {
  __atomic_compare_exchange_n(a, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  return cmp;
}

// ---- __half / __nv_bfloat16 (2-byte storage, layout-compatible with at::Half / at::BFloat16) -------
struct __half {
  uint16_t __x;
  __half() = default;
  __half(float f) : __x(::dmm::emu::detail::float_to_half_bits(f)) {}
  __half(double f) : __half(static_cast<float>(f)) {}
  operator float() const { return ::dmm::emu::detail::half_bits_to_float(__x); }
};
struct __nv_bfloat16 {
  uint16_t __x;
  __nv_bfloat16() = default;
  __nv_bfloat16(float f) : __x(::dmm::emu::detail::float_to_bf16_bits(f)) {}
  __nv_bfloat16(double f) : __nv_bfloat16(static_cast<float>(f)) {}
  operator float() const { return ::dmm::emu::detail::bf16_bits_to_float(__x); }
};
static_assert(sizeof(__half) == 2 && sizeof(__nv_bfloat16) == 2, "16-bit float storage");
using half = __half;
using nv_bfloat16 = __nv_bfloat16;

inline float __half2float(__half h) { return ::dmm::emu::detail::half_bits_to_float(h.__x); }
inline __half __float2half(float f) {
  __half h;
  h.__x = ::dmm::emu::detail::float_to_half_bits(f);
  return h;
}
inline __half __float2half_rn(float f) { return __float2half(f); }
inline __half __double2half(double d) { return __float2half(static_cast<float>(d)); }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline __half __ushort_as_half(unsigned short u) {
  __half h;
  h.__x = u;
  return h;
}
inline float __bfloat162float(__nv_bfloat16 b) { return ::dmm::emu::detail::bf16_bits_to_float(b.__x); }
inline __nv_bfloat16 __float2bfloat16(float f) {
  __nv_bfloat16 b;
  b.__x = ::dmm::emu::detail::float_to_bf16_bits(f);
  return b;
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __float2bfloat16(f); }
inline __nv_bfloat16 __double2bfloat16(double d) { return __float2bfloat16(static_cast<float>(d)); }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.__x; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) {
  __nv_bfloat16 b;
  b.__x = u;
  return b;
}

// ---- math: device overloads that host C++ lacks, and the fast intrinsics (exact here) ---------------
inline int min(int a, int b) { return a < b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline unsigned long min(unsigned long a, unsigned long b) { return a < b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline unsigned long max(unsigned long a, unsigned long b) { return a > b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double max(double a, double b) { return fmax(a, b); }

inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __powf(float a, float b) { return powf(a, b); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanf(float x) { return tanf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : (x == x ? x : 0.0f)); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline int __float_as_int(float f) { return int(::dmm::emu::detail::f32_bits(f)); }
inline unsigned __float_as_uint(float f) { return ::dmm::emu::detail::f32_bits(f); }
inline float __int_as_float(int i) { return ::dmm::emu::detail::f32_from(uint32_t(i)); }
inline float __uint_as_float(unsigned u) { return ::dmm::emu::detail::f32_from(u); }
inline long long __double_as_longlong(double d) {
  long long l;
  std::memcpy(&l, &d, 8);
  return l;
}
inline double __longlong_as_double(long long l) {
  double d;
  std::memcpy(&d, &l, 8);
  return d;
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(unsigned(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline unsigned __brev(unsigned x) {
  x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
  x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
  x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
  x = ((x >> 8) & 0x00ff00ffu) | ((x & 0x00ff00ffu) << 8);
  return (x >> 16) | (x << 16);
}
