// PROBE ONLY (csrc/emu/tests/probe): empty stand-in for a CUDA-only torch header included by
// csrc/cuda/common.cuh. Not part of any build.
#pragma once
