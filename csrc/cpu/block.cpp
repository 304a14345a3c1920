// CPU registration of the whole-block ops: the device-generic composition in
// csrc/block/composite.cpp (ATen GEMMs + the CPU scan / mixer kernels via the dispatcher).
#include <torch/library.h>

#include "block/composite.h"

TORCH_LIBRARY_IMPL(dmm, CPU, m) {
  m.impl("metamamba_block_fwd", &dmm::composite::metamamba_block_fwd);
  m.impl("metamamba_block_bwd", &dmm::composite::metamamba_block_bwd);
  m.impl("metamamba_step", &dmm::composite::metamamba_step);
}
