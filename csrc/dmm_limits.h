// dmm_limits.h: limits shared by every backend (no dependencies: included by checks.h and by the kernel headers).
#pragma once

#include <cstdint>

namespace dmm {

// Largest causal window of the modal mixer; the CUDA kernels keep a window of W tokens in
// registers, so every backend enforces the same limit.
constexpr int64_t kMaxModalMixWindow = 16;

}  // namespace dmm
