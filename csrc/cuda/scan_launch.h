// The block's fused selective scan (csrc/cuda/selective_scan.cuh in block mode): the launchers
// block.cu calls. Implemented in selective_scan.cu, where the scan kernels are instantiated once.
//
// Block mode reads the block's (B, L, E) activations in place (strided views, no copies) and folds
// dt_proj in: delta = softplus(round(dt_low @ W_dt^T) + dt_bias) with dt_low = x_dbl[..., :R] and
// A = -exp(A_log); out = (scan + D x) * SiLU(z), as the composite computes it.
#pragma once

#include <ATen/ATen.h>

namespace dmm {
namespace cuda {

constexpr int kScanMaxStates = 256;  // states per channel the scan kernels support

struct BlockScanFwdArgs {
  at::Tensor xs;          // (B, L, E)      the scan input u
  at::Tensor x_dbl;       // (B, L, R + 2N) dt_low | B | C (columns read in place)
  at::Tensor z;           // (B, L, E)      the gate, e.g. xz.narrow(-1, E, E)
  at::Tensor w_dt;        // (E, R)         cast to xs' dtype when it differs
  at::Tensor dt_bias;     // (E,)
  at::Tensor A_log;       // (E, N)
  at::Tensor D;           // (E,)
  at::Tensor y;           // out (B, L, E) in xs' dtype, any strides
  at::Tensor last_state;  // optional out (B, E, N), float32 (float64 for float64 xs), contiguous
};
void block_scan_fwd(const BlockScanFwdArgs& a);

struct BlockScanBwdArgs : BlockScanFwdArgs {  // y and last_state unused
  at::Tensor dy;        // (B, L, E)  gradient of y
  // outputs, preallocated by the caller (any strides):
  at::Tensor dxs;       // (B, L, E)  xs' dtype
  at::Tensor dz;        // (B, L, E)  xs' dtype, e.g. dxz.narrow(-1, E, E)
  at::Tensor ddt;       // optional (B, L, E) xs' dtype: gradient of the dt_proj output (after its
                        // rounding, before the bias); undefined: not written
  // sums in float32 (float64 for float64 xs), zero-initialised, e.g. views of one zeroed buffer:
  at::Tensor dx_dbl;    // (B, L, R + 2N) [d dt_low | dB | dC], summed over E
  at::Tensor dw_dt;     // (E, R)
  at::Tensor dA_log;    // (E, N)
  at::Tensor dD;        // (E,)
  at::Tensor ddt_bias;  // (E,)
};
void block_scan_bwd(const BlockScanBwdArgs& a);  // one launch; the sums are added into

}  // namespace cuda
}  // namespace dmm
