// Control of the emulator from Python, in the emulated kernels' library only (libdmm_emulated.so):
//   torch.ops.dmm_emu.set_schedule_seed(seed)   thread order between sync points and block order
//                                               (0: in order; DMM_EMU_SEED sets the initial value)
//   torch.ops.dmm_emu.schedule_seed() -> int
//   torch.ops.dmm_emu.set_nan_fill(on)          NaN-fill dynamic shared memory before each block
//   torch.ops.dmm_emu.blocks_run() -> int       blocks emulated so far on this thread
//   torch.ops.dmm_emu.launches_run() -> int     kernel launches so far on this thread
// Settings are per OS thread (CPU autograd runs the backward on the calling thread).
#include <torch/library.h>

#include "emu/cuda_emu.h"

namespace {
void set_schedule_seed(int64_t seed) { dmm::emu::set_schedule_seed(uint64_t(seed)); }
int64_t schedule_seed() { return int64_t(dmm::emu::schedule_seed()); }
void set_nan_fill(bool on) { dmm::emu::set_nan_fill(on); }
int64_t blocks_run() { return int64_t(dmm::emu::blocks_run()); }
int64_t launches_run() { return int64_t(dmm::emu::launches_run()); }
}  // namespace

TORCH_LIBRARY(dmm_emu, m) {
  m.def("set_schedule_seed(int seed) -> ()", &set_schedule_seed);
  m.def("schedule_seed() -> int", &schedule_seed);
  m.def("set_nan_fill(bool on) -> ()", &set_nan_fill);
  m.def("blocks_run() -> int", &blocks_run);
  m.def("launches_run() -> int", &launches_run);
}
