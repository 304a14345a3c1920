// PROBE ONLY (csrc/emu/tests/probe): stands in for the CUDA-only torch header that csrc/cuda/common.cuh
// includes, until common.cuh keeps it behind #ifndef DMM_CUDA_EMULATION. Not part of any build.
#pragma once
namespace at {
namespace cuda {
struct ProbeDeviceProps {
  int multiProcessorCount = 132;
};
inline const ProbeDeviceProps* getCurrentDeviceProperties() {
  static ProbeDeviceProps p;
  return &p;
}
}  // namespace cuda
}  // namespace at
