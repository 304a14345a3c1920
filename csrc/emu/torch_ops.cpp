// Control of the emulator from Python, in the emulated kernels' library only (libdmm_emulated.so):
//   torch.ops.dmm_emu.set_schedule_seed(seed)   thread order between sync points and block order
//                                               (0: in order; DMM_EMU_SEED sets the initial value)
//   torch.ops.dmm_emu.schedule_seed() -> int
//   torch.ops.dmm_emu.set_nan_fill(on)          NaN-fill shared memory before each block
//   torch.ops.dmm_emu.set_racecheck(on)         the race check (DMM_EMU_RACECHECK=1 sets it at load)
//   torch.ops.dmm_emu.racecheck() -> bool
//   torch.ops.dmm_emu.blocks_run() -> int       blocks emulated so far on this thread
//   torch.ops.dmm_emu.launches_run() -> int     kernel launches so far on this thread
//   torch.ops.dmm_emu.counters() -> (str[], Tensor)
//       per kernel (its text in DMM_LAUNCH, e.g. "selective_scan_fwd_kernel<1, acc_t>"), an int64 row
//       [launches, blocks, bytes_read, bytes_written, unique_bytes_read, unique_bytes_written] of
//       global-memory traffic through checked pointers since the last reset (unique: distinct bytes
//       per launch, summed over launches)
//   torch.ops.dmm_emu.reset_counters()
// Seed, NaN fill, blocks_run and launches_run are per OS thread (CPU autograd runs the backward on
// the calling thread); the race check and the counters are process-wide.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>
#include <tuple>
#include <vector>

#include "emu/cuda_emu.h"

namespace {
void set_schedule_seed(int64_t seed) { dmm::emu::set_schedule_seed(uint64_t(seed)); }
int64_t schedule_seed() { return int64_t(dmm::emu::schedule_seed()); }
void set_nan_fill(bool on) { dmm::emu::set_nan_fill(on); }
void set_racecheck(bool on) { dmm::emu::set_racecheck(on); }
bool racecheck() { return dmm::emu::racecheck(); }
int64_t blocks_run() { return int64_t(dmm::emu::blocks_run()); }
int64_t launches_run() { return int64_t(dmm::emu::launches_run()); }

std::tuple<std::vector<std::string>, at::Tensor> counters() {
  const auto all = dmm::emu::kernel_counters();
  std::vector<std::string> names;
  at::Tensor rows = at::zeros({int64_t(all.size()), 6}, at::kLong);  // (kernels, 6)
  auto r = rows.accessor<int64_t, 2>();
  for (size_t i = 0; i < all.size(); ++i) {
    const auto& [name, k] = all[i];
    names.push_back(name);
    const uint64_t v[6] = {k.launches, k.blocks, k.bytes_read, k.bytes_written, k.unique_bytes_read,
                           k.unique_bytes_written};
    for (int j = 0; j < 6; ++j) r[int64_t(i)][j] = int64_t(v[j]);
  }
  return {names, rows};
}
void reset_counters() { dmm::emu::reset_kernel_counters(); }
}  // namespace

TORCH_LIBRARY(dmm_emu, m) {
  m.def("set_schedule_seed(int seed) -> ()", &set_schedule_seed);
  m.def("schedule_seed() -> int", &schedule_seed);
  m.def("set_nan_fill(bool on) -> ()", &set_nan_fill);
  m.def("set_racecheck(bool on) -> ()", &set_racecheck);
  m.def("racecheck() -> bool", &racecheck);
  m.def("blocks_run() -> int", &blocks_run);
  m.def("launches_run() -> int", &launches_run);
  m.def("counters() -> (str[], Tensor)", &counters);
  m.def("reset_counters() -> ()", &reset_counters);
}
