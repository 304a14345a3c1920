// Helpers of the kernel checks (see main.cpp): inputs, pointers to host vectors, the per-seed runner
// and the comparisons that record a MISMATCH.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "cuda/device.cuh"
#include "emu/launch.h"

namespace kernel_checks {

using namespace dmm::cuda;

inline constexpr uint64_t kSeeds[] = {0, 1, 2, 3};

// Records what went wrong under `seed` (an emulator error or a MISMATCH line).
void failed(uint64_t seed, const std::string& what);

// Runs `body(seed)` under every schedule seed; an emulator error ends that seed's run only.
template <typename Body>
void for_seeds(const std::string& what, Body body) {
  for (uint64_t seed : kSeeds) {
    dmm::emu::set_schedule_seed(seed);
    try {
      body(seed);
    } catch (const dmm::emu::Error& e) {
      std::printf("%s seed %llu: %s\n", what.c_str(), (unsigned long long)seed, e.what());
      failed(seed, e.what());
    }
  }
}

// Prints a result; records a mismatch (err > tol, or NaN).
void report(const std::string& what, uint64_t seed, double err, double tol, const char* measure);
// Compares elementwise (|got - want| / (1 + |want|), NaN-propagating).
void compare(const std::string& what, uint64_t seed, const std::vector<double>& got,
             const std::vector<double>& want, double tol = 1e-9);

inline std::vector<double> randn(size_t n, uint32_t seed, double scale = 1.0, double shift = 0.0) {
  std::mt19937 g(seed);
  std::normal_distribution<double> nd;
  std::vector<double> v(n);
  for (auto& x : v) x = nd(g) * scale + shift;
  return v;
}
inline InPtr in(const std::vector<double>& v, const char* name) {
  return make_in_ptr(v.data(), DType::kDouble, int64_t(v.size()), name);
}
inline OutPtr out(std::vector<double>& v, const char* name) {
  return make_out_ptr(v.data(), DType::kDouble, int64_t(v.size()), name);
}
inline gptr<void> acc(std::vector<double>& v, const char* name) {
  return make_gptr<void>(v.data(), int64_t(v.size() * sizeof(double)), name);
}
inline double softplus(double x) { return x <= 20 ? std::log1p(std::exp(x)) : x; }
inline double sigmoid(double x) { return 1 / (1 + std::exp(-x)); }

// The checks (scan_checks.cpp, mix_checks.cpp, block_checks.cpp, step_checks.cpp).
void scan_fwd();
void scan_bwd();
void scan_half();
void conv_fwd();
void conv_bwd();
void block_ln();
void block_scan();
void step_half();

}  // namespace kernel_checks
