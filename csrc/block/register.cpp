// The whole-block ops for every device without a kernel of its own (CPU; CUDA without the compiled
// CUDA kernels): the device-generic composition in csrc/block/composite.cpp (ATen GEMMs + the
// scan / mixer ops of the tensors' device via the dispatcher).
#include <torch/library.h>

#include "block/composite.h"

TORCH_LIBRARY_IMPL(dmm, CompositeExplicitAutograd, m) {
  m.impl("metamamba_block_fwd", &dmm::fwd_entry<&dmm::composite::block_fwd>);
  m.impl("metamamba_block_bwd", &dmm::bwd_entry<&dmm::composite::block_bwd>);
  m.impl("metamamba_step", &dmm::step_entry<&dmm::composite::step>);
}
