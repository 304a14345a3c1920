// Emulation build: <cuda_runtime_api.h> is the CPU emulation of CUDA (csrc/emu/cuda_emu.h). This directory is on
// the include path only when DMM_CUDA_EMULATION is defined.
#pragma once
#include "../cuda_emu.h"
