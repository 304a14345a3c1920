// metamamba_steps (csrc/ops.cpp): one token through a stack of blocks in one call. The checks
// shared by every backend of it, and its device-generic composite (each layer through
// metamamba_step via the dispatcher, so it lands on the step kernel of the tensors' device).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/SmallVector.h>

#include "block/composite.h"
#include "block/params.h"

namespace dmm::composite {

// Checks every list (one entry per layer; mixer2_cache empty for single mixers) and every layer
// (metamamba_step's checks, the message naming the layer), before any cache is touched.
// Returns the number of layers; `dims`, when given, receives each layer's dimensions.
size_t check_steps(const at::Tensor& h_t, const StepCacheLists& caches,
                   const BlockParamLists& params, at::TensorList A, const BlockConfig& cfg,
                   int64_t position, c10::SmallVectorImpl<BlockDims>* dims = nullptr);

// h_t (B, D) through layer 0, 1, ...; every layer's caches updated in place. Returns (B, D).
at::Tensor steps(const at::Tensor& h_t, const StepCacheLists& caches,
                 const BlockParamLists& params, at::TensorList A, const BlockConfig& cfg,
                 int64_t position);

}  // namespace dmm::composite
