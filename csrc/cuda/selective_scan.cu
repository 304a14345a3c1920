// CUDA kernels of dmm::selective_scan_fwd / selective_scan_bwd (mamba-ssm's selective_scan_fn):
// the host side; the kernel bodies are in selective_scan.cuh.
//
// Thread mapping: see selective_scan.cuh (block = one batch row x `chans` channels of one B/C
// group; a group of `lanes` threads per channel holds that channel's N states in registers; time
// in chunks staged through shared memory). No (batch, E, L, N) tensor is ever stored.
//
// Forward, per chunk: stage B/C/u/delta -> every channel group walks the chunk -> the block writes
// out = (y + D u) * silu(z) coalesced along L. The final registers are last_state.
//
// Backward (recompute, two phases per block):
//   1. forward over chunks 0..n_chunks-2, saving the state entering each later chunk into a
//      global scratch (batch, E, n_chunks, N) — n_chunks = ceil(L / chunk), a few MiB at most;
//   2. chunks in reverse: restage, recompute the chunk's states into shared memory (each thread
//      keeps its own), form g = dL/dy (and dz, dD), walk the adjoint recursion backwards
//      (scan_chunk_backward), then write du / ddelta and flush the chunk's dB / dC rows.
//   dA, dD, ddelta_bias, dB and dC are sums over blocks: atomics into zeroed acc_t buffers,
//   cast to the parameters' dtypes at the end; under torch.use_deterministic_algorithms(True)
//   per-block partials summed in a fixed order instead (bit-identical from run to run).
#include <torch/library.h>

#include <climits>
#include <vector>

#include "../checks.h"
#include "common.cuh"
#ifdef DMM_CUDA_EMULATION
namespace dmm { namespace cuda { DMM_EMU_DYNAMIC_SHARED(smem_raw); } }  // the kernels' extern smem
#endif
#include "selective_scan.cuh"

namespace dmm {
namespace cuda {
namespace {

// ---- host side -----------------------------------------------------------------------------------

// Lanes per channel, states per lane (a template constant), chunk length and shared memory.
struct ScanConfig {
  int lanes, npl, chans, chunk;
  size_t smem;
};

ScanConfig scan_config(int64_t dstate, size_t elem, bool backward, bool deterministic = false) {
  ScanConfig cfg{};
  cfg.lanes = 8;  // >= 8 keeps chans <= 16 and the per-channel smem rows small
  while (cfg.lanes < dstate && cfg.lanes < 32) cfg.lanes *= 2;
  const int64_t per_lane = ceil_div(dstate, cfg.lanes);
  cfg.npl = 1;
  while (cfg.npl < per_lane) cfg.npl *= 2;  // 1, 2, 4 or 8 (dstate <= 256 checked)
  cfg.chans = kScanThreads / cfg.lanes;
  for (int chunk = 64; chunk >= 1; chunk /= 2) {
    const ScanSmem lay(int(dstate), cfg.chans, chunk, cfg.npl, backward, deterministic);
    cfg.chunk = chunk;
    cfg.smem = size_t(lay.total) * elem;
    if (cfg.smem <= size_t(kScanSmemBytes)) return cfg;
  }
  TORCH_CHECK(false, "selective_scan: no chunk length fits shared memory for N = ", dstate);
  return cfg;
}

// Validated, contiguous inputs and the launch parameters they imply.
struct ScanSetup {
  at::Tensor u, delta, A, B, C, D, z, delta_bias;  // contiguous; D / z / delta_bias may be undefined
  ScanDims d;
  at::ScalarType acc;
};

ScanSetup scan_setup(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                     const at::Tensor& B, const at::Tensor& C, const std::optional<at::Tensor>& D,
                     const std::optional<at::Tensor>& z,
                     const std::optional<at::Tensor>& delta_bias) {
  constexpr const char* op = "selective_scan";
  ScanSetup s;
  s.d = check_selective_scan(u, delta, A, B, C, D, z, delta_bias);
  check_cuda(op, "u", u, u);
  check_cuda(op, "delta", delta, u);
  check_cuda(op, "A", A, u);
  check_cuda(op, "B", B, u);
  check_cuda(op, "C", C, u);
  check_cuda(op, "D", D, u);
  check_cuda(op, "z", z, u);
  check_cuda(op, "delta_bias", delta_bias, u);
  TORCH_CHECK(s.d.dstate <= kScanMaxStates, op, ": the CUDA kernel supports N <= ", kScanMaxStates,
              " states per channel; A has N = ", s.d.dstate);
  // Kernel indices of time and channels are 32-bit; offsets are 64-bit.
  TORCH_CHECK(s.d.len < INT_MAX / 2 && s.d.dim < INT_MAX / 2 && s.d.batch < INT_MAX / 2, op,
              ": sizes too large for the CUDA kernel: ", shape_str(u.sizes()));
  s.u = u.contiguous();
  s.delta = delta.contiguous();
  s.A = A.contiguous();
  s.B = B.contiguous();
  s.C = C.contiguous();
  s.D = contiguous_or_empty(D);
  s.z = contiguous_or_empty(z);
  s.delta_bias = contiguous_or_empty(delta_bias);
  s.acc = acc_type_for({u, delta, A, B, C, D, z, delta_bias});  // float64 if any is float64
  return s;
}

ScanParams scan_params(const ScanSetup& s, bool delta_softplus, const ScanConfig& cfg) {
  ScanParams p;
  p.u = in_ptr(s.u);
  p.delta = in_ptr(s.delta);
  p.A = in_ptr(s.A);
  p.B = in_ptr(s.B);
  p.C = in_ptr(s.C);
  p.D = in_ptr(s.D);
  p.z = in_ptr(s.z);
  p.delta_bias = in_ptr(s.delta_bias);
  p.batch = int(s.d.batch);
  p.dim = int(s.d.dim);
  p.len = int(s.d.len);
  p.dstate = int(s.d.dstate);
  p.n_groups = int(s.d.n_groups);
  p.dim_per_group = int(s.d.dim / s.d.n_groups);
  p.lanes = cfg.lanes;
  p.chans = cfg.chans;
  p.chunk = cfg.chunk;
  p.n_chunks = int(ceil_div(s.d.len, cfg.chunk));
  p.blocks_per_group = int(ceil_div(p.dim_per_group, cfg.chans));
  p.delta_softplus = delta_softplus;
  return p;
}

unsigned int scan_grid(const ScanParams& p) {
  const int64_t blocks = int64_t(p.batch) * p.n_groups * p.blocks_per_group;
  TORCH_CHECK(blocks <= INT_MAX, "selective_scan: batch * E too large for one launch");
  return static_cast<unsigned int>(blocks);
}

template <typename acc_t>
void launch_fwd(const ScanParams& p, const ScanConfig& cfg, cudaStream_t stream) {
  const unsigned int grid = scan_grid(p);
  switch (cfg.npl) {
    case 1:
      DMM_LAUNCH(grid, kScanThreads, cfg.smem, stream, selective_scan_fwd_kernel<1, acc_t>)(p);
      break;
    case 2:
      DMM_LAUNCH(grid, kScanThreads, cfg.smem, stream, selective_scan_fwd_kernel<2, acc_t>)(p);
      break;
    case 4:
      DMM_LAUNCH(grid, kScanThreads, cfg.smem, stream, selective_scan_fwd_kernel<4, acc_t>)(p);
      break;
    default:
      DMM_LAUNCH(grid, kScanThreads, cfg.smem, stream, selective_scan_fwd_kernel<8, acc_t>)(p);
      break;
  }
  DMM_KERNEL_LAUNCH_CHECK();
}

template <typename acc_t>
void launch_bwd(const ScanParams& p, const ScanConfig& cfg, cudaStream_t stream) {
  const unsigned int grid = scan_grid(p);
  switch (cfg.npl) {
    case 1:
      DMM_LAUNCH(grid, kScanThreads, cfg.smem, stream, selective_scan_bwd_kernel<1, acc_t>)(p);
      break;
    case 2:
      DMM_LAUNCH(grid, kScanThreads, cfg.smem, stream, selective_scan_bwd_kernel<2, acc_t>)(p);
      break;
    case 4:
      DMM_LAUNCH(grid, kScanThreads, cfg.smem, stream, selective_scan_bwd_kernel<4, acc_t>)(p);
      break;
    default:
      DMM_LAUNCH(grid, kScanThreads, cfg.smem, stream, selective_scan_bwd_kernel<8, acc_t>)(p);
      break;
  }
  DMM_KERNEL_LAUNCH_CHECK();
}

// `result` (contiguous) in the layout of `like`, as the CPU kernels and the fakes give it (mamba-ssm's
// empty_like): a copy only when `like` is a strided view (the block's (B, L, C) activations).
at::Tensor in_layout_of(const at::Tensor& result, const at::Tensor& like) {
  at::Tensor out = at::empty_like(like, result.options());
  if (out.strides() == result.strides()) return result;
  return out.copy_(result);
}

std::tuple<at::Tensor, at::Tensor> selective_scan_fwd_cuda(
    const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
    const at::Tensor& C, const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
    const std::optional<at::Tensor>& delta_bias, bool delta_softplus) {
  const ScanSetup s = scan_setup(u, delta, A, B, C, D, z, delta_bias);  // validates before touching the device
  const DeviceGuard guard(u.device());
  at::Tensor out = at::empty({s.d.batch, s.d.dim, s.d.len}, u.options());  // (batch, E, L)
  // The state is in the accumulation dtype (float32, or float64 for float64 inputs), as on CPU.
  at::Tensor last_state =
      at::zeros({s.d.batch, s.d.dim, s.d.dstate}, u.options().dtype(s.acc));  // (batch, E, N)
  if (s.d.batch == 0 || s.d.dim == 0) return {in_layout_of(out, u), last_state};

  const bool dbl = s.acc == at::kDouble;
  const ScanConfig cfg = scan_config(s.d.dstate, dbl ? sizeof(double) : sizeof(float), false);
  ScanParams p = scan_params(s, delta_softplus, cfg);
  p.out = out_ptr(out);
  p.last_state = out_ptr(last_state);
  const cudaStream_t stream = current_stream();
  if (dbl) launch_fwd<double>(p, cfg, stream);
  else launch_fwd<float>(p, cfg, stream);
  return {in_layout_of(out, u), last_state};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor>
selective_scan_bwd_cuda(const at::Tensor& dout, const at::Tensor& u, const at::Tensor& delta,
                        const at::Tensor& A, const at::Tensor& B, const at::Tensor& C,
                        const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
                        const std::optional<at::Tensor>& delta_bias, bool delta_softplus) {
  const ScanSetup s = scan_setup(u, delta, A, B, C, D, z, delta_bias);  // validates before touching the device
  const DeviceGuard guard(u.device());
  check_arg("selective_scan", "dout", dout, u, u.sizes(), "(batch, E, L)");
  const at::Tensor dout_c = dout.contiguous();
  const at::ScalarType acc = acc_type_for({dout, u, delta, A, B, C, D, z, delta_bias});
  const auto acc_opts = u.options().dtype(acc);

  at::Tensor du = at::empty(s.u.sizes(), s.u.options());                    // (batch, E, L)
  at::Tensor ddelta = at::empty(s.delta.sizes(), s.delta.options());        // (batch, E, L)
  at::Tensor dz = s.z.defined() ? at::empty(s.z.sizes(), s.z.options()) : at::Tensor();
  at::Tensor dA_acc = at::zeros(s.A.sizes(), acc_opts);                     // (E, N)
  at::Tensor dB_acc = at::zeros(s.B.sizes(), acc_opts);                     // like B
  at::Tensor dC_acc = at::zeros(s.C.sizes(), acc_opts);                     // like C
  at::Tensor dD_acc = at::zeros({s.d.dim}, acc_opts);                       // (E,)
  at::Tensor dbias_acc = at::zeros({s.d.dim}, acc_opts);                    // (E,)

  if (s.d.batch > 0 && s.d.dim > 0) {
    const bool dbl = acc == at::kDouble;
    // torch.use_deterministic_algorithms(True): per-block partial sums added in a fixed order
    // (bit-identical from run to run) instead of float atomics.
    const bool det = at::globalContext().deterministicAlgorithms();
    const ScanConfig cfg =
        scan_config(s.d.dstate, dbl ? sizeof(double) : sizeof(float), true, det);
    ScanParams p = scan_params(s, delta_softplus, cfg);
    p.deterministic = det;
    if (det) {  // partials: dA (batch, E, N), dD / ddelta_bias (batch, E), dB / dC (blocks, ...)
      const int64_t cblocks = p.blocks_per_group;
      dA_acc = at::zeros({s.d.batch, s.d.dim, s.d.dstate}, acc_opts);
      dD_acc = at::zeros({s.d.batch, s.d.dim}, acc_opts);
      dbias_acc = at::zeros({s.d.batch, s.d.dim}, acc_opts);
      std::vector<int64_t> bc_parts{cblocks};
      for (const int64_t n : s.B.sizes()) bc_parts.push_back(n);
      dB_acc = at::zeros(bc_parts, acc_opts);
      dC_acc = at::zeros(bc_parts, acc_opts);
    }
    // State entering each chunk (slot 0 unused: chunk 0 starts from zero).
    at::Tensor chunk_states =
        at::empty({s.d.batch, s.d.dim, int64_t(p.n_chunks), s.d.dstate}, acc_opts);
    p.dout = in_ptr(dout_c);
    p.du = out_ptr(du);
    p.ddelta = out_ptr(ddelta);
    if (dz.defined()) p.dz = out_ptr(dz);
    p.dA_acc = dA_acc.data_ptr();
    p.dB_acc = dB_acc.numel() > 0 ? dB_acc.data_ptr() : nullptr;
    p.dC_acc = dC_acc.numel() > 0 ? dC_acc.data_ptr() : nullptr;
    p.dD_acc = dD_acc.data_ptr();
    p.ddelta_bias_acc = dbias_acc.data_ptr();
    p.chunk_states = chunk_states.numel() > 0 ? chunk_states.data_ptr() : nullptr;
    const cudaStream_t stream = current_stream();
    if (dbl) launch_bwd<double>(p, cfg, stream);
    else launch_bwd<float>(p, cfg, stream);
    if (det) {  // fixed-order sums over the partials' leading dimension
      dA_acc = dA_acc.sum(0).view(s.A.sizes());
      dD_acc = dD_acc.sum(0);
      dbias_acc = dbias_acc.sum(0);
      dB_acc = dB_acc.sum(0);
      dC_acc = dC_acc.sum(0);
    }
  }

  // Absent optional inputs get numel-0 float32 gradients on u's device, as on the CPU.
  const at::Tensor none = at::empty({0}, u.options().dtype(at::kFloat));
  return {in_layout_of(du, u),
          in_layout_of(ddelta, delta),
          dA_acc.to(A.scalar_type()),
          dB_acc.to(B.scalar_type()),
          dC_acc.to(C.scalar_type()),
          s.D.defined() ? dD_acc.to(s.D.scalar_type()) : none,
          dz.defined() ? in_layout_of(dz, *z) : none,
          s.delta_bias.defined() ? dbias_acc.to(s.delta_bias.scalar_type()) : none};
}

}  // namespace
}  // namespace cuda
}  // namespace dmm

TORCH_LIBRARY_IMPL(dmm, DMM_KERNEL_DISPATCH_KEY, m) {
  m.impl("selective_scan_fwd", &dmm::cuda::selective_scan_fwd_cuda);
  m.impl("selective_scan_bwd", &dmm::cuda::selective_scan_bwd_cuda);
}
