// Tests of the CUDA emulator (csrc/emu): execution model, intrinsics, enforced limits, fault finding.
// Kernels here are written as CUDA kernels are, and launched through DMM_LAUNCH.
//
//   emu_tests            runs every test
//   emu_tests NAME...    runs the named tests (ctest registers one test per name)
//   emu_tests --list     prints the names
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "cuda/device.cuh"
#include "emu/launch.h"

// ---- a minimal test harness ------------------------------------------------------------------------
namespace {
std::map<std::string, std::function<void()>>& registry() {
  static std::map<std::string, std::function<void()>> r;
  return r;
}
struct Register {
  Register(const char* name, std::function<void()> f) { registry()[name] = std::move(f); }
};
struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};
#define TEST(name)                                     \
  void test_##name();                                  \
  const Register register_##name(#name, test_##name); \
  void test_##name()
#define CHECK(cond)                                                                           \
  do {                                                                                        \
    if (!(cond))                                                                              \
      throw Failure(std::string(__FILE__) + ":" + std::to_string(__LINE__) + ": " #cond); \
  } while (0)
#define CHECK_EQ(a, b)                                                                      \
  do {                                                                                      \
    const auto va_ = (a);                                                                   \
    const auto vb_ = (b);                                                                   \
    if (!(va_ == vb_))                                                                      \
      throw Failure(std::string(__FILE__) + ":" + std::to_string(__LINE__) + ": " #a " == " #b \
                    " (" + std::to_string(va_) + " vs " + std::to_string(vb_) + ")");       \
  } while (0)

// Runs f, which must throw dmm::emu::Error whose message contains every one of `parts`.
void expect_error(const std::function<void()>& f, std::initializer_list<const char*> parts) {
  try {
    f();
  } catch (const dmm::emu::Error& e) {
    const std::string msg = e.what();
    for (const char* p : parts)
      if (msg.find(p) == std::string::npos)
        throw Failure("error message lacks '" + std::string(p) + "': " + msg);
    std::printf("    expected error: %s\n", msg.c_str());
    return;
  }
  throw Failure("no dmm::emu::Error thrown");
}

// Seeds of the schedule; restores the previous seed at scope exit.
struct SeedScope {
  uint64_t saved = dmm::emu::schedule_seed();
  explicit SeedScope(uint64_t s) { dmm::emu::set_schedule_seed(s); }
  ~SeedScope() { dmm::emu::set_schedule_seed(saved); }
};
}  // namespace

// ---- kernels ---------------------------------------------------------------------------------------
namespace kern {

DMM_EMU_DYNAMIC_SHARED(dyn_smem);  // what `extern __shared__ ... dyn_smem[]` below refers to

// out[blockIdx.x * n + i] = in[blockIdx.x * n + (n - 1 - i)] through static shared memory.
__global__ void reverse_static(const float* in, float* out) {
  __shared__ float s[256];
  const int n = blockDim.x, i = threadIdx.x;
  s[i] = in[blockIdx.x * n + i];
  __syncthreads();
  out[blockIdx.x * n + i] = s[n - 1 - i];
}

// The same through dynamic shared memory, with an optional missing barrier.
template <bool kBarrier>
__global__ void reverse_dynamic(const float* in, float* out) {
  extern __shared__ __align__(16) unsigned char dyn_smem[];
  float* s = reinterpret_cast<float*>(dyn_smem);
  const int n = blockDim.x, i = threadIdx.x;
  s[i] = in[blockIdx.x * n + i];
  if (kBarrier) __syncthreads();
  out[blockIdx.x * n + i] = s[n - 1 - i];
}

// Block sum in the style of csrc/cuda: xor shuffles in each warp, warp sums through shared memory.
template <typename T>
__device__ __forceinline__ T warp_sum(T v, int width) {
  for (int off = width >> 1; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off, width);
  return v;
}
__global__ void block_sum(const float* in, float* out) {
  __shared__ float red[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float v = warp_sum(in[blockIdx.x * blockDim.x + threadIdx.x], 32);
  if (lane == 0) red[warp] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    float s = 0;
    for (int w = 0; w < int(blockDim.x >> 5); ++w) s += red[w];
    out[blockIdx.x] = s;
  }
}

// Every shuffle flavour; out has 8 ints per thread.
__global__ void shuffles(int* out) {
  const int t = threadIdx.x, lane = t & 31;
  int* o = out + 8 * t;
  o[0] = __shfl_xor_sync(0xffffffffu, t, 1);
  o[1] = __shfl_up_sync(0xffffffffu, t, 3);
  o[2] = __shfl_down_sync(0xffffffffu, t, 5);
  o[3] = __shfl_sync(0xffffffffu, t, 7);
  o[4] = __shfl_xor_sync(0xffffffffu, t, 4, 8);   // segments of 8
  o[5] = __shfl_up_sync(0xffffffffu, t, 2, 8);
  o[6] = __shfl_down_sync(0xffffffffu, t, 2, 8);
  o[7] = int(__ballot_sync(0xffffffffu, lane % 3 == 0));
  __syncwarp();
}

// An inclusive prefix sum over each warp with __shfl_up_sync; doubles through the shuffle.
__global__ void warp_scan(const double* in, double* out) {
  const int lane = threadIdx.x & 31;
  double v = in[threadIdx.x];
  for (int d = 1; d < 32; d <<= 1) {
    const double u = __shfl_up_sync(0xffffffffu, v, d);
    if (lane >= d) v += u;
  }
  out[threadIdx.x] = v;
}

// Shuffles among the lanes of a partial mask (the even lanes).
__global__ void partial_mask(int* out) {
  const int lane = threadIdx.x & 31;
  if (lane % 2 == 0) out[threadIdx.x] = __shfl_xor_sync(0x55555555u, lane, 2);
  else out[threadIdx.x] = -1;
}

__global__ void vote(int* out) {
  const int lane = threadIdx.x & 31;
  out[3 * threadIdx.x + 0] = __any_sync(0xffffffffu, lane == 17);
  out[3 * threadIdx.x + 1] = __all_sync(0xffffffffu, lane < 32);
  out[3 * threadIdx.x + 2] = __all_sync(0xffffffffu, lane < 31);
}

__global__ void atomics(float* gf, double* gd, int* gi, unsigned long long* gu) {
  __shared__ float sf;
  __shared__ double sd;
  if (threadIdx.x == 0) {
    sf = 0;
    sd = 0;
  }
  __syncthreads();
  atomicAdd(&sf, 1.0f);
  atomicAdd(&sd, 0.5);
  atomicAdd(gi, 1);
  atomicAdd(gu, 2ull);
  atomicMax(gi + 1, int(threadIdx.x));
  __syncthreads();
  if (threadIdx.x == 0) {
    atomicAdd(gf, sf);
    atomicAdd(gd, sd);
  }
}

__global__ void count_votes(int* out) {
  out[threadIdx.x] = __syncthreads_count(threadIdx.x % 4 == 0);
  const int all = __syncthreads_and(threadIdx.x < 1000);
  const int any = __syncthreads_or(threadIdx.x == 5);
  if (threadIdx.x == 0) {
    out[blockDim.x] = all;
    out[blockDim.x + 1] = any;
  }
}

// Reads dynamic shared memory that nobody wrote.
__global__ void read_unwritten(float* out, double* outd) {
  extern __shared__ unsigned char dyn_smem[];
  out[threadIdx.x] = reinterpret_cast<float*>(dyn_smem)[threadIdx.x];
  outd[threadIdx.x] = reinterpret_cast<double*>(dyn_smem)[threadIdx.x];
}

// Coordinates of every thread of a 3D grid of 3D blocks.
__global__ void coords(int* out) {
  const int bx = blockDim.x, by = blockDim.y, bz = blockDim.z;
  const int block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const int t = threadIdx.x + bx * (threadIdx.y + by * threadIdx.z);
  out[block * bx * by * bz + t] = block * 10000 + t;
}

__global__ void half_round_trip(const float* in, float* h, float* b) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  h[i] = __half2float(__float2half(in[i]));
  b[i] = __bfloat162float(__float2bfloat16(in[i]));
}

__global__ void math(float* out) {
  const float x = 0.25f * float(threadIdx.x) - 2.0f;
  out[threadIdx.x] = expf(x) + __expf(x) + log1pf(x * x) + sqrt(x * x) + float(min(int(x), 1));
}

// ---- deliberately broken kernels -------------------------------------------------------------------
// Threads past `live` return before the barrier the others wait at.
__global__ void partial_barrier(float* out, int live) {
  if (int(threadIdx.x) >= live) return;
  out[threadIdx.x] = 1.0f;
  __syncthreads();
  out[threadIdx.x] += 1.0f;
}

// A full-mask shuffle that only half of the warp reaches.
__global__ void divergent_shuffle(float* out) {
  float v = float(threadIdx.x);
  if ((threadIdx.x & 31) < 16) v = warp_sum(v, 32);
  out[threadIdx.x] = v;
}

// The two halves of the warp shuffle at different call sites.
__global__ void split_shuffle(float* out) {
  float v = float(threadIdx.x);
  if ((threadIdx.x & 31) < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
  else v = __shfl_xor_sync(0xffffffffu, v, 1);
  out[threadIdx.x] = v;
}

// Two barriers in the branches of a divergent if.
__global__ void divergent_barrier(float* out) {
  if (threadIdx.x < 32) {
    out[threadIdx.x] = 1;
    __syncthreads();
  } else {
    out[threadIdx.x] = 2;
    __syncthreads();
  }
}

// Writes `extra` floats past the dynamic shared memory of n floats it was given.
__global__ void smem_overrun(float* out, int n, int extra) {
  extern __shared__ unsigned char dyn_smem[];
  float* s = reinterpret_cast<float*>(dyn_smem);
  for (int i = threadIdx.x; i < n + extra; i += blockDim.x) s[i] = 1.0f;
  __syncthreads();
  out[threadIdx.x] = s[threadIdx.x];
}

__global__ void lane_outside_mask(int* out) {
  out[threadIdx.x] = __shfl_xor_sync(0x0000ffffu, int(threadIdx.x), 1);
}

__global__ void big_smem(float* out) {
  extern __shared__ unsigned char dyn_smem[];
  float* s = reinterpret_cast<float*>(dyn_smem);
  s[threadIdx.x] = float(threadIdx.x);
  __syncthreads();
  out[threadIdx.x] = s[blockDim.x - 1 - threadIdx.x];
}

__global__ void nothing() {}

}  // namespace kern

// ---- kernels on checked pointers (csrc/cuda/device.cuh), as the kernels of csrc/cuda are written ------
namespace ck {
using namespace dmm::cuda;

// out[i] = 2 in[i] for i < n + extra (extra > 0: past the end).
__global__ void scale(gptr<const float> in, gptr<float> out, int n, int extra) {
  for (int i = threadIdx.x; i < n + extra; i += blockDim.x) out[i] = 2.0f * in[i < n ? i : 0];
}
// Every thread of every block adds 1 to out[0]: atomically or not.
template <bool kAtomic>
__global__ void count_global(gptr<float> out) {
  if (kAtomic) atomicAdd(out, 1.0f);
  else out[0] += 1.0f;
}
// The `lanes` first lanes of warp 0 add 1 to one shared float, atomically or not; with kSyncwarp the
// lanes take turns separated by __syncwarp (ordered: no race).
template <bool kAtomic, bool kSyncwarp>
__global__ void count_shared(gptr<float> out, int lanes) {
  DMM_SHARED_ARRAY(float, acc, 1);
  if (threadIdx.x == 0) acc[0] = 0.0f;
  __syncthreads();
  const int lane = threadIdx.x & 31;
  if (kSyncwarp) {
    for (int turn = 0; turn < lanes; ++turn) {
      if (threadIdx.x < 32 && lane == turn) acc[0] += 1.0f;
      __syncwarp();
    }
  } else if (int(threadIdx.x) < lanes) {
    if (kAtomic) atomicAdd(acc, 1.0f);
    else acc[0] += 1.0f;
  }
  __syncthreads();
  if (threadIdx.x == 0) out[blockIdx.x] = acc[0];
}
// Warp 0 writes a shared buffer, warp 1 reads it: with or without the barrier between them.
template <bool kBarrier>
__global__ void handoff(gptr<float> out) {
  const sptr<float> s = dynamic_smem<float>();
  if (threadIdx.x < 32) s[threadIdx.x] = float(threadIdx.x);
  if (kBarrier) __syncthreads();
  if (threadIdx.x >= 32) out[threadIdx.x - 32] = s[threadIdx.x - 32];
}
// Reuse of a shared buffer: every thread reads another warp's slot, then (with or without a barrier)
// writes its own slot again.
template <bool kBarrier>
__global__ void reuse(gptr<float> out) {
  const sptr<float> s = dynamic_smem<float>();
  const int n = blockDim.x, t = threadIdx.x;
  s[t] = float(t);
  __syncthreads();
  out[t] = s[(t + 32) % n];
  if (kBarrier) __syncthreads();
  s[t] = 0.0f;
}
// Lane 0 publishes a value in shared memory, the other lanes of its warp read it after a shuffle
// (kSync) or with nothing between (a race under independent thread scheduling).
template <bool kSync>
__global__ void publish(gptr<float> out) {
  DMM_SHARED_ARRAY(float, slot, 1);
  if (threadIdx.x == 0) slot[0] = 7.0f;
  int v = int(threadIdx.x);
  if (kSync) v = __shfl_sync(0xffffffffu, v, 0);
  out[threadIdx.x] = slot[0] + float(v) * 0.0f;
}
// Reads a static shared array before writing it (kInit = false) or after.
template <bool kInit>
__global__ void static_read(gptr<float> out) {
  DMM_SHARED_ARRAY(float, s, 64);
  if (kInit) s[threadIdx.x] = 1.0f;
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = s[threadIdx.x];
}
// Writes out[0..n-skip) of an output.
__global__ void partial_output(gptr<float> out, int n, int skip) {
  for (int i = threadIdx.x; i < n - skip; i += blockDim.x) out[i] = 1.0f;
}
// Vector access: out[4i..4i+4) = in[4i..4i+4) + 1, at element offset `shift` (misaligned when not 0).
__global__ void vec4(gptr<const float> in, gptr<float> out, int shift) {
  Vec<float, 4> v = load_vec<4>(in, 4 * threadIdx.x + shift);
  for (float& x : v.v) x += 1.0f;
  store_vec(out, 4 * threadIdx.x, v);
}
// Reads an InPtr (dtype tag) and writes an OutPtr.
__global__ void tagged(InPtr in, OutPtr out, int n) {
  for (int i = threadIdx.x; i < n; i += blockDim.x) store(out, i, load<float>(in, i) * 3.0f);
}
// Reads `in` twice, writes out once: for the byte counters.
__global__ void twice(gptr<const float> in, gptr<float> out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  out[i] = in[i] + in[i];
}
}  // namespace ck

using namespace kern;

// ---- tests -----------------------------------------------------------------------------------------
TEST(barrier_static_shared) {
  const int blocks = 3, n = 256;
  std::vector<float> in(blocks * n), out(blocks * n);
  for (int i = 0; i < blocks * n; ++i) in[i] = float(i);
  for (uint64_t seed : {0, 1, 2, 3}) {
    SeedScope s(seed);
    DMM_LAUNCH(blocks, n, 0, nullptr, reverse_static)(in.data(), out.data());
    for (int b = 0; b < blocks; ++b)
      for (int i = 0; i < n; ++i) CHECK_EQ(out[b * n + i], in[b * n + n - 1 - i]);
  }
}

TEST(barrier_dynamic_shared) {
  const int blocks = 4, n = 128;
  std::vector<float> in(blocks * n), out(blocks * n);
  for (int i = 0; i < blocks * n; ++i) in[i] = float(3 * i + 1);
  for (uint64_t seed : {0, 7, 99}) {
    SeedScope s(seed);
    DMM_LAUNCH(blocks, n, n * sizeof(float), nullptr, reverse_dynamic<true>)(in.data(), out.data());
    for (int b = 0; b < blocks; ++b)
      for (int i = 0; i < n; ++i) CHECK_EQ(out[b * n + i], in[b * n + n - 1 - i]);
  }
}

TEST(block_sum_xor) {
  const int blocks = 2, n = 256;
  std::vector<float> in(blocks * n), out(blocks);
  for (int i = 0; i < blocks * n; ++i) in[i] = float(i % 17);
  DMM_LAUNCH(blocks, n, 0, nullptr, block_sum)(in.data(), out.data());
  for (int b = 0; b < blocks; ++b) {
    float want = 0;
    for (int i = 0; i < n; ++i) want += in[b * n + i];
    CHECK_EQ(out[b], want);
  }
}

TEST(shuffle_variants) {
  const int n = 64;
  std::vector<int> out(8 * n);
  DMM_LAUNCH(1, n, 0, nullptr, shuffles)(out.data());
  for (int t = 0; t < n; ++t) {
    const int lane = t & 31, base = t - lane;
    const int* o = &out[8 * t];
    CHECK_EQ(o[0], base + (lane ^ 1));
    CHECK_EQ(o[1], lane >= 3 ? t - 3 : t);                   // below the warp: own value
    CHECK_EQ(o[2], lane + 5 <= 31 ? t + 5 : t);
    CHECK_EQ(o[3], base + 7);
    CHECK_EQ(o[4], base + (lane ^ 4));                       // stays in the segment of 8
    CHECK_EQ(o[5], (lane & 7) >= 2 ? t - 2 : t);             // segment start clamps
    CHECK_EQ(o[6], (lane & 7) + 2 <= 7 ? t + 2 : t);
    unsigned ballot = 0;
    for (int l = 0; l < 32; l += 3) ballot |= 1u << l;
    CHECK_EQ(unsigned(o[7]), ballot);
  }
}

TEST(shuffle_up_scan_double) {
  const int n = 96;
  std::vector<double> in(n), out(n);
  for (int i = 0; i < n; ++i) in[i] = 0.5 * i + 0.25;
  for (uint64_t seed : {0, 5}) {
    SeedScope s(seed);
    DMM_LAUNCH(1, n, 0, nullptr, warp_scan)(in.data(), out.data());
    for (int w = 0; w < n / 32; ++w) {
      double acc = 0;
      for (int l = 0; l < 32; ++l) {
        acc += in[32 * w + l];
        CHECK_EQ(out[32 * w + l], acc);
      }
    }
  }
}

TEST(shuffle_partial_mask_and_votes) {
  std::vector<int> out(64);
  DMM_LAUNCH(1, 64, 0, nullptr, partial_mask)(out.data());
  for (int t = 0; t < 64; ++t) CHECK_EQ(out[t], t % 2 == 0 ? ((t & 31) ^ 2) : -1);
  std::vector<int> v(3 * 32);
  DMM_LAUNCH(1, 32, 0, nullptr, vote)(v.data());
  for (int t = 0; t < 32; ++t) {
    CHECK_EQ(v[3 * t], 1);
    CHECK_EQ(v[3 * t + 1], 1);
    CHECK_EQ(v[3 * t + 2], 0);
  }
}

TEST(atomics) {
  float gf = 0;
  double gd = 0;
  int gi[2] = {0, -1};
  unsigned long long gu = 0;
  for (uint64_t seed : {0, 3}) {
    SeedScope s(seed);
    gf = 0;
    gd = 0;
    gi[0] = 0;
    gi[1] = -1;
    gu = 0;
    DMM_LAUNCH(5, 200, 0, nullptr, atomics)(&gf, &gd, gi, &gu);
    CHECK_EQ(gf, 1000.0f);
    CHECK_EQ(gd, 500.0);
    CHECK_EQ(gi[0], 1000);
    CHECK_EQ(gi[1], 199);
    CHECK_EQ(gu, 2000ull);
  }
}

TEST(syncthreads_count_and_or) {
  std::vector<int> out(130);
  DMM_LAUNCH(1, 128, 0, nullptr, count_votes)(out.data());
  for (int t = 0; t < 128; ++t) CHECK_EQ(out[t], 32);
  CHECK_EQ(out[128], 1);
  CHECK_EQ(out[129], 1);
}

TEST(nan_fill_dynamic_shared) {
  std::vector<float> f(32, 0.0f);
  std::vector<double> d(32, 0.0);
  DMM_LAUNCH(1, 32, 32 * sizeof(double), nullptr, read_unwritten)(f.data(), d.data());
  for (int i = 0; i < 32; ++i) {
    CHECK(std::isnan(f[i]));
    CHECK(std::isnan(d[i]));
  }
  // NaN again in the next block, after a kernel wrote the same memory.
  std::vector<float> in(64, 1.0f), out(64);
  DMM_LAUNCH(1, 64, 64 * sizeof(float), nullptr, reverse_dynamic<true>)(in.data(), out.data());
  DMM_LAUNCH(1, 32, 32 * sizeof(double), nullptr, read_unwritten)(f.data(), d.data());
  for (int i = 0; i < 32; ++i) CHECK(std::isnan(f[i]));
}

TEST(grid_and_block_3d) {
  const dim3 grid(3, 2, 2), block(4, 3, 2);
  const int per = 24, nb = 12;
  std::vector<int> out(per * nb, -1);
  for (uint64_t seed : {0, 11}) {
    SeedScope s(seed);
    std::fill(out.begin(), out.end(), -1);
    DMM_LAUNCH(grid, block, 0, nullptr, coords)(out.data());
    for (int b = 0; b < nb; ++b)
      for (int t = 0; t < per; ++t) CHECK_EQ(out[b * per + t], b * 10000 + t);
  }
}

TEST(fp16_bf16_conversions) {
  // half: every bit pattern round-trips; float -> half agrees with the compiler's _Float16.
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = __half2float(__ushort_as_half(uint16_t(h)));
    if (std::isnan(f)) continue;
    CHECK_EQ(uint32_t(__half_as_ushort(__float2half(f))), h);
  }
  uint32_t state = 12345;
  for (int i = 0; i < 2000000; ++i) {
    state = state * 1664525u + 1013904223u;
    // Bit patterns of floats in the half range and around it (exponents 100..150).
    const uint32_t bits = (state & 0x807fffffu) | ((100u + (state >> 23) % 51u) << 23);
    float f;
    std::memcpy(&f, &bits, 4);
#if defined(__FLT16_MAX__)
    const _Float16 ref = static_cast<_Float16>(f);
    CHECK_EQ(__half2float(__float2half(f)), static_cast<float>(ref));
#endif
    // bf16: round to nearest even on the upper 16 bits.
    const float b = __bfloat162float(__float2bfloat16(f));
    const double ulp = std::ldexp(1.0, std::ilogb(f) - 7);
    CHECK(std::fabs(double(b) - double(f)) <= 0.5 * ulp);
  }
  CHECK(std::isnan(__half2float(__float2half(NAN))));
  CHECK(std::isnan(__bfloat162float(__float2bfloat16(NAN))));
  CHECK_EQ(__half2float(__float2half(70000.0f)), INFINITY);
  CHECK_EQ(__half2float(__float2half(-1e-9f)), -0.0f);
  CHECK_EQ(__bfloat162float(__float2bfloat16(1.00390625f)), 1.0f);  // tie to even
  CHECK_EQ(__bfloat162float(__float2bfloat16(1.01171875f)), 1.015625f);
  // Through a kernel.
  std::vector<float> in(64), h(64), b(64);
  for (int i = 0; i < 64; ++i) in[i] = 1.0f + float(i) / 4096.0f;
  DMM_LAUNCH(2, 32, 0, nullptr, half_round_trip)(in.data(), h.data(), b.data());
  for (int i = 0; i < 64; ++i) {
    CHECK(std::fabs(h[i] - in[i]) <= 1.0f / 2048);
    CHECK(std::fabs(b[i] - in[i]) <= 1.0f / 256);
  }
}

TEST(math_functions) {
  std::vector<float> out(16);
  DMM_LAUNCH(1, 16, 0, nullptr, math)(out.data());
  for (int t = 0; t < 16; ++t) {
    const float x = 0.25f * float(t) - 2.0f;
    CHECK_EQ(out[t], expf(x) + expf(x) + log1pf(x * x) + std::sqrt(x * x) + float(std::min(int(x), 1)));
  }
}

// A missing __syncthreads shows as results that change with the schedule seed.
TEST(schedule_fuzzing_finds_missing_barrier) {
  const int n = 128;
  std::vector<float> in(n), out(n), want(n);
  for (int i = 0; i < n; ++i) in[i] = float(i);
  for (int i = 0; i < n; ++i) want[i] = in[n - 1 - i];
  // Results compared by bit pattern (NaN, what unwritten shared memory reads as, is unordered).
  auto bits = [](const std::vector<float>& v) {
    std::vector<uint32_t> b(v.size());
    std::memcpy(b.data(), v.data(), v.size() * sizeof(float));
    return b;
  };
  std::set<std::vector<uint32_t>> with, without;
  for (uint64_t seed = 1; seed <= 8; ++seed) {
    SeedScope s(seed);
    DMM_LAUNCH(1, n, n * sizeof(float), nullptr, reverse_dynamic<true>)(in.data(), out.data());
    CHECK(out == want);
    with.insert(bits(out));
    DMM_LAUNCH(1, n, n * sizeof(float), nullptr, reverse_dynamic<false>)(in.data(), out.data());
    without.insert(bits(out));
  }
  CHECK_EQ(with.size(), size_t(1));
  std::printf("    missing barrier: %zu distinct results over 8 seeds\n", without.size());
  CHECK(without.size() > 1);
  // In thread order (seed 0) the broken kernel reads unwritten (NaN) shared memory.
  SeedScope s(0);
  DMM_LAUNCH(1, n, n * sizeof(float), nullptr, reverse_dynamic<false>)(in.data(), out.data());
  CHECK(std::isnan(out[0]));
}

TEST(error_partial_barrier) {
  std::vector<float> out(128);
  expect_error([&] { DMM_LAUNCH(2, 128, 0, nullptr, partial_barrier)(out.data(), 100); },
               {"partial_barrier", "block (0,0,0)", "__syncthreads", "100 of 128", "100-127 exited"});
}

TEST(error_divergent_barrier) {
  std::vector<float> out(64);
  expect_error([&] { DMM_LAUNCH(1, 64, 0, nullptr, divergent_barrier)(out.data()); },
               {"divergent_barrier", "divergent __syncthreads", "threads 0-31", "threads 32-63"});
}

TEST(error_divergent_full_mask_shuffle) {
  std::vector<float> out(64);
  expect_error([&] { DMM_LAUNCH(1, 64, 0, nullptr, divergent_shuffle)(out.data()); },
               {"divergent_shuffle", "__shfl_xor_sync(mask 0xffffffff)", "16-31 exited"});
  expect_error([&] { DMM_LAUNCH(1, 32, 0, nullptr, split_shuffle)(out.data()); },
               {"split_shuffle", "divergent warp intrinsics"});
  std::vector<int> iout(32);
  expect_error([&] { DMM_LAUNCH(1, 32, 0, nullptr, lane_outside_mask)(iout.data()); },
               {"lane_outside_mask", "not in the mask"});
}

TEST(error_launch_limits) {
  expect_error([] { DMM_LAUNCH(1, 1025, 0, nullptr, nothing)(); }, {"nothing", "1025 threads"});
  expect_error([] { DMM_LAUNCH(1, dim3(32, 32, 2), 0, nullptr, nothing)(); }, {"exceed 1024"});
  expect_error([] { DMM_LAUNCH(1, dim3(1, 1, 65), 0, nullptr, nothing)(); }, {"blockDim exceeds"});
  expect_error([] { DMM_LAUNCH(dim3(1, 65536), 32, 0, nullptr, nothing)(); }, {"gridDim exceeds"});
  expect_error([] { DMM_LAUNCH(dim3(1, 1, 65536), 32, 0, nullptr, nothing)(); }, {"gridDim exceeds"});
  expect_error([] { DMM_LAUNCH(0, 32, 0, nullptr, nothing)(); }, {"is 0"});
  DMM_LAUNCH(dim3(1, 65535), 1, 0, nullptr, nothing)();  // the largest legal grid y
}

TEST(error_dynamic_smem_over_limit) {
  std::vector<float> out(256);
  const size_t big = 64 * 1024;
  expect_error([&] { DMM_LAUNCH(1, 256, big, nullptr, big_smem)(out.data()); },
               {"big_smem", "65536 bytes", "cudaFuncSetAttribute"});
  CHECK_EQ(int(cudaFuncSetAttribute(big_smem, cudaFuncAttributeMaxDynamicSharedMemorySize, 300000)),
           int(cudaErrorInvalidValue));
  CHECK_EQ(int(cudaGetLastError()), int(cudaErrorInvalidValue));
  CHECK_EQ(int(cudaFuncSetAttribute(big_smem, cudaFuncAttributeMaxDynamicSharedMemorySize, int(big))),
           int(cudaSuccess));
  DMM_LAUNCH(1, 256, big, nullptr, big_smem)(out.data());
  for (int i = 0; i < 256; ++i) CHECK_EQ(out[i], float(255 - i));
  expect_error([&] { DMM_LAUNCH(1, 256, big + 4, nullptr, big_smem)(out.data()); },
               {"65540 bytes", "65536 bytes allowed"});
}

// Writes past the requested dynamic shared memory: the canary check here; under ASan the poisoned
// guard makes AddressSanitizer abort instead (ctest expects its report: see CMakeLists.txt).
TEST(error_smem_overrun) {
  std::vector<float> out(64);
  DMM_LAUNCH(1, 64, 64 * sizeof(float), nullptr, smem_overrun)(out.data(), 64, 0);  // in bounds
  expect_error([&] { DMM_LAUNCH(1, 64, 64 * sizeof(float), nullptr, smem_overrun)(out.data(), 64, 1); },
               {"smem_overrun", "at byte 256", "past the 256 bytes"});
}

TEST(kernel_names_in_template_launches) {
  std::vector<float> in(32), out(32);
  expect_error([&] { DMM_LAUNCH(1, 2048, 0, nullptr, reverse_dynamic<true>)(in.data(), out.data()); },
               {"reverse_dynamic<true>"});
  auto launch = [&](auto kernel) { DMM_LAUNCH(1, 2048, 0, nullptr, kernel)(in.data(), out.data()); };
  expect_error([&] { launch(reverse_dynamic<false>); }, {"kernel"});
}

TEST(many_blocks_and_threads) {
  // 1024-thread blocks, more than one stack pool fill, and a block count report.
  const int blocks = 6, n = 1024;
  std::vector<float> in(blocks * n), out(blocks);
  for (int i = 0; i < blocks * n; ++i) in[i] = 1.0f;
  const uint64_t before = dmm::emu::blocks_run();
  SeedScope s(42);
  DMM_LAUNCH(blocks, n, 0, nullptr, block_sum)(in.data(), out.data());
  CHECK_EQ(dmm::emu::blocks_run() - before, uint64_t(blocks));
  for (int b = 0; b < blocks; ++b) CHECK_EQ(out[b], float(n));
}


// ---- checked pointers, the race check, output coverage, counters ------------------------------------
namespace {
// The race check on (or off) for a scope.
struct RacecheckScope {
  bool saved = dmm::emu::racecheck();
  explicit RacecheckScope(bool on) { dmm::emu::set_racecheck(on); }
  ~RacecheckScope() { dmm::emu::set_racecheck(saved); }
};
using dmm::cuda::InPtr;
using dmm::cuda::make_gptr;
using dmm::cuda::OutPtr;
using dmm::cuda::Writes;
}  // namespace

TEST(checked_bounds_global) {
  std::vector<float> in(100, 1.0f), out(100);
  const auto gin = make_gptr<const float>(in.data(), 100, "in");
  const auto gout = make_gptr(out.data(), 100, "out");
  DMM_LAUNCH(1, 64, 0, nullptr, ck::scale)(gin, gout, 100, 0);
  CHECK_EQ(out[99], 2.0f);
  expect_error([&] { DMM_LAUNCH(1, 64, 0, nullptr, ck::scale)(gin, gout, 100, 1); },
               {"ck::scale", "block (0,0,0) thread (36,0,0)", "writes 'out' at element 100",
                "outside its 100 elements", "out of bounds"});
}

TEST(checked_bounds_shared) {
  std::vector<float> out(32);
  const auto gout = make_gptr(out.data(), 32, "out");
  // 32 floats of dynamic shared memory for 32 writes: fine; 31: the last write is past the end.
  DMM_LAUNCH(1, 64, 32 * sizeof(float), nullptr, ck::handoff<true>)(gout);
  expect_error([&] { DMM_LAUNCH(1, 64, 31 * sizeof(float), nullptr, ck::handoff<true>)(gout); },
               {"thread (31,0,0)", "writes dynamic shared memory at element 31 (byte 124)", "outside its 124 bytes",
                "past the dynamic shared memory the launch requested"});
}

TEST(checked_vectors_and_alignment) {
  std::vector<float> in(132), out(128);
  for (int i = 0; i < 132; ++i) in[i] = float(i);
  alignas(16) static float ain[132];
  std::copy(in.begin(), in.end(), ain);
  const auto gin = make_gptr<const float>(ain, 132, "in");
  const auto gout = make_gptr(out.data(), 128, "out");
  DMM_LAUNCH(1, 32, 0, nullptr, ck::vec4)(gin, gout, 0);
  for (int i = 0; i < 128; ++i) CHECK_EQ(out[i], float(i) + 1.0f);
  expect_error([&] { DMM_LAUNCH(1, 32, 0, nullptr, ck::vec4)(gin, gout, 1); },
               {"ck::vec4", "reads 'in' at element 1 (byte 4)", "16-byte access that is not 16-byte aligned"});
}

TEST(checked_tagged_pointers) {
  std::vector<double> in(50, 2.0), out(50);
  const InPtr p = dmm::cuda::make_in_ptr(in.data(), dmm::cuda::DType::kDouble, 50, "x");
  const OutPtr o = dmm::cuda::make_out_ptr(out.data(), dmm::cuda::DType::kDouble, 50, "y");
  DMM_LAUNCH(1, 32, 0, nullptr, ck::tagged)(p, o, 50);
  CHECK_EQ(out[49], 6.0);
  expect_error([&] { DMM_LAUNCH(1, 32, 0, nullptr, ck::tagged)(p, o, 51); },
               {"reads 'x' at element 50", "outside its 50 elements"});
  expect_error([&] { DMM_LAUNCH(1, 32, 0, nullptr, ck::tagged)(InPtr{}, o, 50); },
               {"which is absent"});
}

TEST(racecheck_global_rmw) {
  RacecheckScope rc(true);
  for (uint64_t seed : {0, 1, 2}) {
    SeedScope s(seed);
    float sum = 0.0f;
    const auto g = make_gptr(&sum, 1, "sum");
    DMM_LAUNCH(3, 64, 0, nullptr, ck::count_global<true>)(g);
    CHECK_EQ(sum, 192.0f);
    // Threads run one after another between sync points here, so the plain `+=` adds up right;
    // the race check still names it, within a block and across blocks.
    expect_error([&] { DMM_LAUNCH(1, 64, 0, nullptr, ck::count_global<false>)(g); },
                 {"race on global memory 'sum' at element 0", "with nothing ordering the two"});
    expect_error([&] { DMM_LAUNCH(3, 1, 0, nullptr, ck::count_global<false>)(g); },
                 {"race on global memory 'sum'", "of block (", "blocks of one launch run in no fixed order"});
  }
}

TEST(racecheck_shared_rmw_in_a_warp) {
  RacecheckScope rc(true);
  std::vector<float> out(2);
  const auto g = make_gptr(out.data(), 2, "out");
  for (uint64_t seed : {0, 1, 2}) {
    SeedScope s(seed);
    DMM_LAUNCH(2, 64, 0, nullptr, (ck::count_shared<true, false>))(g, 2);
    CHECK_EQ(out[1], 2.0f);
    DMM_LAUNCH(2, 64, 0, nullptr, (ck::count_shared<false, true>))(g, 32);  // turns, __syncwarp
    CHECK_EQ(out[1], 32.0f);
    expect_error([&] { DMM_LAUNCH(2, 64, 0, nullptr, (ck::count_shared<false, false>))(g, 2); },
                 {"race on shared memory shared array 'acc' at element 0", "the same warp",
                  "do not run in lockstep"});
    expect_error([&] { DMM_LAUNCH(2, 64, 0, nullptr, (ck::count_shared<false, false>))(g, 64); },
                 {"race on shared memory shared array 'acc'"});
  }
  RacecheckScope off(false);  // without the race check the lost update goes unseen here
  DMM_LAUNCH(2, 64, 0, nullptr, (ck::count_shared<false, false>))(g, 2);
  CHECK_EQ(out[1], 2.0f);
}

TEST(racecheck_missing_barrier) {
  RacecheckScope rc(true);
  std::vector<float> out(64);
  const auto g = make_gptr(out.data(), 64, "out", Writes::kSome);
  for (uint64_t seed : {0, 3}) {
    SeedScope s(seed);
    DMM_LAUNCH(1, 64, 32 * sizeof(float), nullptr, ck::handoff<true>)(g);
    CHECK_EQ(out[31], 31.0f);
    DMM_LAUNCH(1, 64, 64 * sizeof(float), nullptr, ck::reuse<true>)(g);
    CHECK_EQ(out[0], 32.0f);
    // a read before the write (never written) or after it (a race), depending on the order
    expect_error([&] { DMM_LAUNCH(1, 64, 32 * sizeof(float), nullptr, ck::handoff<false>)(g); },
                 {"ck::handoff<false>", "dynamic shared memory at element"});
    expect_error([&] { DMM_LAUNCH(1, 64, 64 * sizeof(float), nullptr, ck::reuse<false>)(g); },
                 {"race on shared memory dynamic shared memory", "another warp, no __syncthreads"});
  }
}

TEST(racecheck_shuffle_orders_lanes) {
  RacecheckScope rc(true);
  std::vector<float> out(32);
  const auto g = make_gptr(out.data(), 32, "out");
  for (uint64_t seed : {0, 5}) {
    SeedScope s(seed);
    DMM_LAUNCH(1, 32, 0, nullptr, ck::publish<true>)(g);
    CHECK_EQ(out[31], 7.0f);
  }
  SeedScope s(0);  // in order lane 0 writes first, then lane 1 reads with nothing between
  expect_error([&] { DMM_LAUNCH(1, 32, 0, nullptr, ck::publish<false>)(g); },
               {"race on shared memory shared array 'slot'", "thread (1,0,0)", "the same warp"});
}

TEST(static_shared_nan_fill_and_initcheck) {
  std::vector<float> out(128);
  const auto g = make_gptr(out.data(), 128, "out");
  {
    RacecheckScope rc(false);  // NaN in every block, after a kernel wrote the same array
    DMM_LAUNCH(2, 64, 0, nullptr, ck::static_read<true>)(g);
    CHECK_EQ(out[127], 1.0f);
    DMM_LAUNCH(2, 64, 0, nullptr, ck::static_read<false>)(g);
    for (float v : out) CHECK(std::isnan(v));
  }
  RacecheckScope rc(true);
  expect_error([&] { DMM_LAUNCH(2, 64, 0, nullptr, ck::static_read<false>)(g); },
               {"reads shared array 's' at element 0", "no thread of the block has written"});
}

TEST(output_written_in_full) {
  std::vector<float> out(100);
  DMM_LAUNCH(1, 32, 0, nullptr, ck::partial_output)(make_gptr(out.data(), 100, "out", Writes::kAll), 100, 0);
  DMM_LAUNCH(1, 32, 0, nullptr, ck::partial_output)(make_gptr(out.data(), 100, "acc", Writes::kSome), 100, 3);
  expect_error(
      [&] { DMM_LAUNCH(1, 32, 0, nullptr, ck::partial_output)(make_gptr(out.data(), 100, "out", Writes::kAll), 100, 3); },
      {"kernel 'ck::partial_output' left 3 of 100 elements of its output 'out' unwritten",
       "the first: element 97"});
}

TEST(byte_counters) {
  dmm::emu::reset_kernel_counters();
  std::vector<float> in(256, 1.0f), out(256);
  DMM_LAUNCH(4, 64, 0, nullptr, ck::twice)(make_gptr<const float>(in.data(), 256, "in"),
                                           make_gptr(out.data(), 256, "out"));
  DMM_LAUNCH(4, 64, 0, nullptr, ck::twice)(make_gptr<const float>(in.data(), 256, "in"),
                                           make_gptr(out.data(), 256, "out"));
  const auto all = dmm::emu::kernel_counters();
  CHECK_EQ(all.size(), size_t(1));
  CHECK(all[0].first == "ck::twice");
  const dmm::emu::KernelCounters& k = all[0].second;
  CHECK_EQ(k.launches, uint64_t(2));
  CHECK_EQ(k.blocks, uint64_t(8));
  CHECK_EQ(k.bytes_read, uint64_t(2 * 2 * 256 * 4));     // every read, twice per element
  CHECK_EQ(k.unique_bytes_read, uint64_t(2 * 256 * 4));  // each byte once per launch
  CHECK_EQ(k.bytes_written, uint64_t(2 * 256 * 4));
  CHECK_EQ(k.unique_bytes_written, uint64_t(2 * 256 * 4));
  dmm::emu::reset_kernel_counters();
  CHECK(dmm::emu::kernel_counters().empty());
}

int main(int argc, char** argv) {
  std::vector<std::string> names;
  for (int i = 1; i < argc; ++i) names.push_back(argv[i]);
  if (names.size() == 1 && names[0] == "--list") {
    for (auto& [name, f] : registry()) std::printf("%s\n", name.c_str());
    return 0;
  }
  if (names.empty())
    for (auto& [name, f] : registry()) names.push_back(name);
  int failed = 0;
  for (const std::string& name : names) {
    auto it = registry().find(name);
    if (it == registry().end()) {
      std::printf("unknown test %s\n", name.c_str());
      ++failed;
      continue;
    }
    std::printf("[ RUN  ] %s\n", name.c_str());
    try {
      it->second();
      std::printf("[  OK  ] %s\n", name.c_str());
    } catch (const std::exception& e) {
      std::printf("[ FAIL ] %s: %s\n", name.c_str(), e.what());
      ++failed;
    }
  }
  std::printf("%d of %zu tests failed\n", failed, names.size());
  return failed == 0 ? 0 : 1;
}
