// The one way to launch a kernel: `<<<...>>>` under nvcc, the CPU emulator under
// DMM_CUDA_EMULATION.
//
//   DMM_LAUNCH(grid, block, smem_bytes, stream, kernel)(args...);
//   DMM_LAUNCH(grid, kThreads, 0, stream, my_kernel<acc_t, 4>)(params);
//
// The kernel comes last so that a template-id with commas (`k<1, acc_t>`) needs no parentheses; a
// grid or block expression with a top-level comma must be parenthesised (`(dim3(x, y))`). The
// emulator names the kernel in its errors by the text of that last argument.
//
// Dynamic shared memory above 48 KB needs the same opt-in as on the GPU:
//   cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
// which the emulator records per kernel and checks at launch.
#pragma once

#if defined(DMM_CUDA_EMULATION)
#include "emu/cuda_emu.h"
#define DMM_LAUNCH(grid, block, smem, stream, ...) \
  ::dmm::emu::detail::make_launcher(__VA_ARGS__, #__VA_ARGS__, grid, block, smem, stream)
#else
#define DMM_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#endif
