// Vectorised element-wise math and dot products for the CPU kernels (csrc/cpu/*.cpp): written so
// GCC / Clang vectorise them at -O3, with an AVX2+FMA clone picked at load time. Internal linkage:
// each kernel file gets its own copy (the clones are resolved per shared object).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

// Hot loops get an AVX2+FMA clone next to the baseline one, picked at load time (GCC function
// multiversioning), so the wheel stays portable; other compilers build the baseline only.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define DMM_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
// Lets GCC if-convert the float compares in exp_inplace (default -ftrapping-math blocks it).
#define DMM_NO_TRAPPING_MATH __attribute__((optimize("no-trapping-math")))
#else
#define DMM_SIMD_CLONES
#define DMM_NO_TRAPPING_MATH
#endif
#if defined(__GNUC__)
#define DMM_ALWAYS_INLINE inline __attribute__((always_inline))  // GCC judged dot() "cold"
#else
#define DMM_ALWAYS_INLINE inline
#endif

namespace dmm {
namespace {

// exp over a contiguous array, written so GCC/Clang vectorise it at -O3 (libm's expf is a
// scalar call and dominated the scan). Cephes polynomial, ~1 ulp on the clamped range.
DMM_SIMD_CLONES DMM_NO_TRAPPING_MATH void exp_inplace(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    float c = v < -87.0f ? -87.0f : v;  // clamp to the normal range; NaN passes through
    c = c > 88.0f ? 88.0f : c;
    const float k = (c * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round(c / ln 2)
    const float r = c - k * 0.693359375f + k * 2.12194440e-4f;               // c - k ln 2
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;  // 2^k
    float scale;
    std::memcpy(&scale, &bits, sizeof(float));
    float e = p * scale;
    e = v < -87.0f ? 0.0f : e;  // underflow (true value < 1.7e-38)
    e = v > 88.0f ? INFINITY : e;
    x[i] = e;
  }
}
inline void exp_inplace(double* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = std::exp(x[i]);
}

// Dot product over 8 independent partial sums. Without -ffast-math the compiler keeps a single
// float accumulator in source order: a serial chain of N dependent adds per time step. The
// fixed summation order keeps results deterministic.
template <typename acc_t>
DMM_ALWAYS_INLINE acc_t dot(const acc_t* x, const acc_t* y, int64_t n) {
  acc_t part[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) part[k] += x[i + k] * y[i + k];
  acc_t tail = 0;
  for (; i < n; ++i) tail += x[i] * y[i];
  return ((part[0] + part[4]) + (part[1] + part[5])) + ((part[2] + part[6]) + (part[3] + part[7])) +
         tail;
}

// out = softplus(x) (PyTorch's, beta 1) = max(x, 0) + log1p(exp(-|x|)), vectorised: scalar libm
// calls here cost more than the scan itself. log1p(v), v in (0, 1]: w = 1 + v is split as
// 2^e (1 + m), m in [-0.29, 0.42], for Cephes' logf polynomial; v / (w - 1) corrects the
// rounding of 1 + v (Goldberg's trick). ~2 ulp. (All inline: GCC does not inline across the
// no-trapping-math attribute.)
DMM_SIMD_CLONES DMM_NO_TRAPPING_MATH void softplus(const float* x, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] > 0.0f ? -x[i] : x[i];  // -|x|
  exp_inplace(out, n);
  for (int64_t i = 0; i < n; ++i) {
    const float v = out[i], w = 1.0f + v;
    const bool big = w > 1.41421356f;
    const float m = big ? 0.5f * w - 1.0f : w - 1.0f, m2 = m * m;
    float p = 7.0376836292e-2f;
    p = p * m - 1.1514610310e-1f;
    p = p * m + 1.1676998740e-1f;
    p = p * m - 1.2420140846e-1f;
    p = p * m + 1.4249322787e-1f;
    p = p * m - 1.6668057665e-1f;
    p = p * m + 2.0000714765e-1f;
    p = p * m - 2.4999993993e-1f;
    p = p * m + 3.3333331174e-1f;
    const float log_w = m + (p * m * m2 - 0.5f * m2) + (big ? 0.693359375f - 2.12194440e-4f : 0.0f);
    const float w_minus_1 = w - 1.0f;
    const float log1p_v = w_minus_1 == 0.0f ? v : log_w * (v / w_minus_1);
    out[i] = (x[i] > 0.0f ? x[i] : 0.0f) + log1p_v;
  }
}
inline void softplus(const double* x, int64_t n, double* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] > 20.0 ? x[i] : std::log1p(std::exp(x[i]));
}

// out = sigmoid(x) = 1 / (1 + exp(-x)) (exp(-x) = inf gives 0, as it should).
DMM_SIMD_CLONES void sigmoid(const float* x, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = -x[i];
  exp_inplace(out, n);
  for (int64_t i = 0; i < n; ++i) out[i] = 1.0f / (1.0f + out[i]);
}
inline void sigmoid(const double* x, int64_t n, double* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = 1.0 / (1.0 + std::exp(-x[i]));
}

}  // namespace
}  // namespace dmm
