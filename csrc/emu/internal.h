// Internals of the emulator shared by the scheduler (runtime.cpp) and the memory checker
// (memcheck.cpp): a block's threads as fibers, its warps, and the hooks between the two.
#pragma once

#include <ucontext.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "emu/cuda_emu.h"

namespace dmm {
namespace emu {
namespace detail {

struct Stack;

// A suspended execution context. x86-64: the stack pointer of a context whose callee-saved
// registers are pushed on its own stack (runtime.cpp's switch: no signal-mask system call, unlike
// swapcontext); elsewhere a ucontext.
struct Context {
#if defined(__x86_64__)
  void* sp = nullptr;
#else
  ucontext_t uc;
#endif
};

// One thread of a block.
struct Fiber {
  enum State : int { kRunnable, kBarrier, kWarp, kDone, kFailed };
  Context ctx;
  const Stack* stack = nullptr;
  uint3 tid{0, 0, 0};
  int linear = 0;
  State state = kRunnable;
  const char* file = nullptr;  // where it waits
  int line = 0;
  WarpOp op = WarpOp::kSync;
  int pred = 0, count = 0;
  uint64_t bits = 0, result = 0;
  int arg = 0;
  void* fake_stack = nullptr;  // ASan
  // Race check: for each lane of this thread's warp, the generation of the latest warp
  // synchronisation of that lane that happens before this thread's present (a vector clock in
  // units of the warp's synchronisation count; reset at every __syncthreads).
  uint32_t known[32] = {};
};

struct WarpState {
  bool active = false;
  WarpOp op = WarpOp::kSync;
  unsigned mask = 0, arrived = 0;
  int width = 32;
  const char* file = nullptr;
  int line = 0;
};

struct Block {
  const char* name = "";
  dim3 grid, block;
  uint3 idx{0, 0, 0};
  uint64_t linear = 0;  // block index in the grid
  size_t smem = 0;
  const std::function<void()>* body = nullptr;
  std::vector<Fiber> fibers;
  std::vector<WarpState> warps;
  std::vector<uint32_t> warp_gen;  // warp synchronisations since the last __syncthreads
  std::vector<int> next;           // fibers runnable in the next round
  Context sched;
  const void* sched_stack_bottom = nullptr;  // ASan bookkeeping of the scheduler's stack
  size_t sched_stack_size = 0;
  void* sched_fake_stack = nullptr;
  std::string error;
  // Epochs (memcheck.cpp): a number per barrier interval, increasing over blocks and launches.
  uint64_t serial = 0;       // this block run (static shared arrays are filled once per run)
  uint64_t start_epoch = 0;  // epoch of the block's first barrier interval
  uint64_t epoch = 0;        // the present barrier interval

  int n() const { return int(fibers.size()); }
  std::string where() const;
  std::string where(const Fiber& f) const;
  std::string thread_name(int linear_tid) const;  // "(x,y,z)"
  std::string block_name(uint64_t linear_block) const;
};

// The running fiber and its block on this OS thread (null outside kernels).
extern thread_local Fiber* tls_fiber;
extern thread_local Block* tls_block;

// ---- the memory checker's hooks (memcheck.cpp) --------------------------------------------------------
// A launch: takes the buffers its arguments captured; launch_end checks the outputs and adds the
// launch to the per-kernel counters (ok = false: the launch failed, only clean up).
void mem_launch_begin(const char* kernel, size_t smem);
void mem_launch_end(bool ok);
void mem_block_begin(Block& b);
void mem_barrier(Block& b);
void mem_warp_sync(Block& b, int warp, unsigned mask);
bool racecheck_on();

}  // namespace detail
}  // namespace emu
}  // namespace dmm
