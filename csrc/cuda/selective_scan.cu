// CUDA kernels of dmm::selective_scan_fwd / selective_scan_bwd (mamba-ssm's selective_scan_fn).
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
//   cast to the parameters' dtypes at the end.
#include <torch/library.h>

#include <climits>

#include "../checks.h"
#include "selective_scan.cuh"

namespace dmm {
namespace cuda {
namespace {

// Where this block's channels live, and the per-chunk staging shared by both kernels.
struct ScanBlock {
  int b, g, c_first, n_chans;  // batch row, group, first channel, channels present (<= chans)
  int64_t bc_base;             // offset of B/C row (b, g, 0, 0)
  int64_t x_base;              // offset of u/delta/z row (b, c_first, 0)

  __device__ ScanBlock(const ScanParams& p) {
    const int cblock = blockIdx.x % p.blocks_per_group;
    g = (blockIdx.x / p.blocks_per_group) % p.n_groups;
    b = blockIdx.x / (p.blocks_per_group * p.n_groups);
    c_first = g * p.dim_per_group + cblock * p.chans;
    n_chans = min(p.chans, p.dim_per_group - cblock * p.chans);
    bc_base = (int64_t(b) * p.n_groups + g) * p.dstate * p.len;
    x_base = (int64_t(b) * p.dim + c_first) * p.len;
  }
};

// Stage the chunk [l0, l0 + len) of B (and C) rows and of the block's u and scan delta.
// Entries past len (and of absent channels) are zero, so tail steps are never read as garbage.
template <bool kWithC, typename acc_t>
__device__ void stage_chunk(const ScanParams& p, const ScanBlock& blk, const ScanSmem& lay,
                            acc_t* smem, int l0, int len) {
  const int T = p.chunk, row = lay.row;
  for (int i = threadIdx.x; i < p.dstate * T; i += kScanThreads) {
    const int n = i / T, t = i - n * T;
    const int64_t idx = blk.bc_base + int64_t(n) * p.len + l0 + t;
    smem[lay.B + n * row + t] = t < len ? load<acc_t>(p.B, idx) : acc_t(0);
    if constexpr (kWithC) smem[lay.C + n * row + t] = t < len ? load<acc_t>(p.C, idx) : acc_t(0);
  }
  for (int i = threadIdx.x; i < p.chans * T; i += kScanThreads) {
    const int c = i / T, t = i - c * T;
    const bool ok = c < blk.n_chans && t < len;
    const int64_t idx = blk.x_base + int64_t(c) * p.len + l0 + t;
    smem[lay.u + c * row + t] = ok ? load<acc_t>(p.u, idx) : acc_t(0);
    smem[lay.dt + c * row + t] = ok ? scan_delta<acc_t>(p, idx, blk.c_first + c) : acc_t(0);
  }
}

template <int NPL, typename acc_t>
__global__ void __launch_bounds__(kScanThreads)
    selective_scan_fwd_kernel(const ScanParams p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* smem = reinterpret_cast<acc_t*>(smem_raw);
  const ScanSmem lay(p.dstate, p.chans, p.chunk, NPL, /*backward=*/false);
  const ScanBlock blk(p);
  const int tid = threadIdx.x, width = p.lanes;
  const int slot = tid / width, r = tid % width;  // channel slot in the block, lane in its group
  const bool active = slot < blk.n_chans;
  const int e = blk.c_first + slot;
  const int N = p.dstate, row = lay.row;

  acc_t s[NPL], a[NPL];
#pragma unroll
  for (int j = 0; j < NPL; ++j) {
    const int n = r + j * width;
    a[j] = active && n < N ? load<acc_t>(p.A, int64_t(e) * N + n) : acc_t(0);
    s[j] = acc_t(0);
  }

  for (int k = 0; k < p.n_chunks; ++k) {
    const int l0 = k * p.chunk, len = min(p.chunk, p.len - l0);
    __syncthreads();  // the previous chunk's staged data is no longer read
    stage_chunk<true>(p, blk, lay, smem, l0, len);
    __syncthreads();
    scan_chunk_forward<NPL, true, false>(s, a, r, width, N, smem + lay.B, smem + lay.C, row,
                                         smem + lay.dt + slot * row, smem + lay.u + slot * row,
                                         smem + lay.y + slot * row, len, (acc_t*)nullptr,
                                         p.chunk, tid);
    __syncthreads();
    for (int i = tid; i < p.chans * p.chunk; i += kScanThreads) {
      const int c = i / p.chunk, t = i - c * p.chunk;
      if (c >= blk.n_chans || t >= len) continue;
      const int64_t idx = blk.x_base + int64_t(c) * p.len + l0 + t;
      acc_t v = smem[lay.y + c * row + t];
      if (p.D.p != nullptr) v += load<acc_t>(p.D, blk.c_first + c) * smem[lay.u + c * row + t];
      if (p.z.p != nullptr) {
        const acc_t zz = load<acc_t>(p.z, idx);
        v *= zz * sigmoid_(zz);
      }
      store(p.out, idx, v);
    }
  }
  if (active) {
#pragma unroll
    for (int j = 0; j < NPL; ++j) {
      const int n = r + j * width;
      if (n < N) store(p.last_state, (int64_t(blk.b) * p.dim + e) * N + n, s[j]);
    }
  }
}

template <int NPL, typename acc_t>
__global__ void __launch_bounds__(kScanThreads)
    selective_scan_bwd_kernel(const ScanParams p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* smem = reinterpret_cast<acc_t*>(smem_raw);
  const ScanSmem lay(p.dstate, p.chans, p.chunk, NPL, /*backward=*/true);
  const ScanBlock blk(p);
  const int tid = threadIdx.x, width = p.lanes;
  const int slot = tid / width, r = tid % width;
  const bool active = slot < blk.n_chans;
  const int e = blk.c_first + slot;
  const int N = p.dstate, T = p.chunk, row = lay.row;
  acc_t* chunk_states = static_cast<acc_t*>(p.chunk_states);
  const int64_t st_base = (int64_t(blk.b) * p.dim + e) * p.n_chunks * N;  // used when active
  acc_t* sdB = smem + lay.dB;
  acc_t* sdC = smem + lay.dC;
  acc_t* sDsum = smem + lay.dsum;    // per channel slot: sum g * u       -> dD
  acc_t* sDbsum = smem + lay.dbsum;  // per channel slot: sum d(delta raw) -> ddelta_bias

  for (int i = tid; i < 2 * p.chans; i += kScanThreads) sDsum[i] = acc_t(0);  // dsum, dbsum

  acc_t s[NPL], a[NPL];
#pragma unroll
  for (int j = 0; j < NPL; ++j) {
    const int n = r + j * width;
    a[j] = active && n < N ? load<acc_t>(p.A, int64_t(e) * N + n) : acc_t(0);
    s[j] = acc_t(0);
  }

  // Phase 1: states entering chunks 1..n_chunks-1 (chunk 0 starts from zero).
  for (int k = 0; k + 1 < p.n_chunks; ++k) {
    const int l0 = k * T, len = min(T, p.len - l0);
    __syncthreads();
    stage_chunk<false>(p, blk, lay, smem, l0, len);
    __syncthreads();
    scan_chunk_forward<NPL, false, false>(s, a, r, width, N, smem + lay.B, (const acc_t*)nullptr,
                                          row, smem + lay.dt + slot * row,
                                          smem + lay.u + slot * row, (acc_t*)nullptr, len,
                                          (acc_t*)nullptr, T, tid);
    if (active) {
#pragma unroll
      for (int j = 0; j < NPL; ++j) {
        const int n = r + j * width;
        if (n < N) chunk_states[st_base + int64_t(k + 1) * N + n] = s[j];
      }
    }
  }

  // Phase 2: chunks in reverse order.
  acc_t hn[NPL], dA[NPL], s0[NPL];
#pragma unroll
  for (int j = 0; j < NPL; ++j) hn[j] = dA[j] = acc_t(0);

  for (int k = p.n_chunks - 1; k >= 0; --k) {
    const int l0 = k * T, len = min(T, p.len - l0);
    __syncthreads();
    stage_chunk<true>(p, blk, lay, smem, l0, len);
    for (int i = tid; i < N * row; i += kScanThreads) sdB[i] = sdC[i] = acc_t(0);
#pragma unroll
    for (int j = 0; j < NPL; ++j) {
      const int n = r + j * width;
      s0[j] = active && n < N && k > 0 ? chunk_states[st_base + int64_t(k) * N + n] : acc_t(0);
      s[j] = s0[j];
    }
    __syncthreads();
    // Recompute the chunk: states into shared memory, y_t into sY.
    scan_chunk_forward<NPL, true, true>(s, a, r, width, N, smem + lay.B, smem + lay.C, row,
                                        smem + lay.dt + slot * row, smem + lay.u + slot * row,
                                        smem + lay.y + slot * row, len, smem + lay.states, T,
                                        tid);
    __syncthreads();
    // g = dL/dy from out = (y + D u) * silu(z); dz; dD partial sums.
    for (int i = tid; i < p.chans * T; i += kScanThreads) {
      const int c = i / T, t = i - c * T;
      acc_t gg = acc_t(0);
      if (c < blk.n_chans && t < len) {
        const int64_t idx = blk.x_base + int64_t(c) * p.len + l0 + t;
        const acc_t dout = load<acc_t>(p.dout, idx);
        const acc_t uu = smem[lay.u + c * row + t];
        gg = dout;
        if (p.z.p != nullptr) {
          acc_t v = smem[lay.y + c * row + t];
          if (p.D.p != nullptr) v += load<acc_t>(p.D, blk.c_first + c) * uu;
          const acc_t zz = load<acc_t>(p.z, idx);
          const acc_t sg = sigmoid_(zz);
          gg = dout * zz * sg;
          store(p.dz, idx, dout * v * sg * (acc_t(1) + zz * (acc_t(1) - sg)));
        }
        if (p.D.p != nullptr) atomicAdd(&sDsum[c], gg * uu);
      }
      smem[lay.g + c * row + t] = gg;
    }
    __syncthreads();
    scan_chunk_backward<NPL>(hn, dA, a, s0, r, width, N, smem + lay.B, smem + lay.C, sdB, sdC,
                             row, smem + lay.dt + slot * row, smem + lay.u + slot * row,
                             smem + lay.g + slot * row, smem + lay.ddt + slot * row,
                             smem + lay.du + slot * row, len, smem + lay.states, T, tid, active);
    __syncthreads();
    // du = scan part + D g;  ddelta through bias + softplus.
    for (int i = tid; i < p.chans * T; i += kScanThreads) {
      const int c = i / T, t = i - c * T;
      if (c >= blk.n_chans || t >= len) continue;
      const int64_t idx = blk.x_base + int64_t(c) * p.len + l0 + t;
      const int ec = blk.c_first + c;
      acc_t du = smem[lay.du + c * row + t];
      if (p.D.p != nullptr) du += load<acc_t>(p.D, ec) * smem[lay.g + c * row + t];
      store(p.du, idx, du);
      acc_t dd = smem[lay.ddt + c * row + t];
      if (p.delta_softplus) {
        acc_t x = load<acc_t>(p.delta, idx);
        if (p.delta_bias.p != nullptr) x += load<acc_t>(p.delta_bias, ec);
        dd *= softplus_grad_(x);
      }
      store(p.ddelta, idx, dd);
      if (p.delta_bias.p != nullptr) atomicAdd(&sDbsum[c], dd);
    }
    // This chunk's dB / dC rows, summed over the block's channels, into the global sums.
    acc_t* dB_acc = static_cast<acc_t*>(p.dB_acc);
    acc_t* dC_acc = static_cast<acc_t*>(p.dC_acc);
    for (int i = tid; i < N * T; i += kScanThreads) {
      const int n = i / T, t = i - n * T;
      if (t >= len) continue;
      const int64_t idx = blk.bc_base + int64_t(n) * p.len + l0 + t;
      atomicAdd(&dB_acc[idx], sdB[n * row + t]);
      atomicAdd(&dC_acc[idx], sdC[n * row + t]);
    }
  }

  if (active) {
    acc_t* dA_acc = static_cast<acc_t*>(p.dA_acc);
#pragma unroll
    for (int j = 0; j < NPL; ++j) {
      const int n = r + j * width;
      if (n < N) atomicAdd(&dA_acc[int64_t(e) * N + n], dA[j]);
    }
  }
  __syncthreads();
  if (tid < blk.n_chans) {
    if (p.D.p != nullptr) atomicAdd(&static_cast<acc_t*>(p.dD_acc)[blk.c_first + tid], sDsum[tid]);
    if (p.delta_bias.p != nullptr)
      atomicAdd(&static_cast<acc_t*>(p.ddelta_bias_acc)[blk.c_first + tid], sDbsum[tid]);
  }
}

// ---- host side -----------------------------------------------------------------------------------

// Lanes per channel, states per lane (a template constant), chunk length and shared memory.
struct ScanConfig {
  int lanes, npl, chans, chunk;
  size_t smem;
};

ScanConfig scan_config(int64_t dstate, size_t elem, bool backward) {
  ScanConfig cfg{};
  cfg.lanes = 8;  // >= 8 keeps chans <= 16 and the per-channel smem rows small
  while (cfg.lanes < dstate && cfg.lanes < 32) cfg.lanes *= 2;
  const int64_t per_lane = ceil_div(dstate, cfg.lanes);
  cfg.npl = 1;
  while (cfg.npl < per_lane) cfg.npl *= 2;  // 1, 2, 4 or 8 (dstate <= 256 checked)
  cfg.chans = kScanThreads / cfg.lanes;
  for (int chunk = 64; chunk >= 1; chunk /= 2) {
    const ScanSmem lay(int(dstate), cfg.chans, chunk, cfg.npl, backward);
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
    case 1: selective_scan_fwd_kernel<1, acc_t><<<grid, kScanThreads, cfg.smem, stream>>>(p); break;
    case 2: selective_scan_fwd_kernel<2, acc_t><<<grid, kScanThreads, cfg.smem, stream>>>(p); break;
    case 4: selective_scan_fwd_kernel<4, acc_t><<<grid, kScanThreads, cfg.smem, stream>>>(p); break;
    default: selective_scan_fwd_kernel<8, acc_t><<<grid, kScanThreads, cfg.smem, stream>>>(p); break;
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename acc_t>
void launch_bwd(const ScanParams& p, const ScanConfig& cfg, cudaStream_t stream) {
  const unsigned int grid = scan_grid(p);
  switch (cfg.npl) {
    case 1: selective_scan_bwd_kernel<1, acc_t><<<grid, kScanThreads, cfg.smem, stream>>>(p); break;
    case 2: selective_scan_bwd_kernel<2, acc_t><<<grid, kScanThreads, cfg.smem, stream>>>(p); break;
    case 4: selective_scan_bwd_kernel<4, acc_t><<<grid, kScanThreads, cfg.smem, stream>>>(p); break;
    default: selective_scan_bwd_kernel<8, acc_t><<<grid, kScanThreads, cfg.smem, stream>>>(p); break;
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> selective_scan_fwd_cuda(
    const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
    const at::Tensor& C, const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
    const std::optional<at::Tensor>& delta_bias, bool delta_softplus) {
  const ScanSetup s = scan_setup(u, delta, A, B, C, D, z, delta_bias);  // validates before touching the device
  const c10::cuda::CUDAGuard guard(u.device());
  at::Tensor out = at::empty({s.d.batch, s.d.dim, s.d.len}, u.options());  // (batch, E, L)
  // The state is in the accumulation dtype (float32, or float64 for float64 inputs), as on CPU.
  at::Tensor last_state =
      at::zeros({s.d.batch, s.d.dim, s.d.dstate}, u.options().dtype(s.acc));  // (batch, E, N)
  if (s.d.batch == 0 || s.d.dim == 0) return {out, last_state};

  const bool dbl = s.acc == at::kDouble;
  const ScanConfig cfg = scan_config(s.d.dstate, dbl ? sizeof(double) : sizeof(float), false);
  ScanParams p = scan_params(s, delta_softplus, cfg);
  p.out = out_ptr(out);
  p.last_state = out_ptr(last_state);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (dbl) launch_fwd<double>(p, cfg, stream);
  else launch_fwd<float>(p, cfg, stream);
  return {out, last_state};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor>
selective_scan_bwd_cuda(const at::Tensor& dout, const at::Tensor& u, const at::Tensor& delta,
                        const at::Tensor& A, const at::Tensor& B, const at::Tensor& C,
                        const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
                        const std::optional<at::Tensor>& delta_bias, bool delta_softplus) {
  const ScanSetup s = scan_setup(u, delta, A, B, C, D, z, delta_bias);  // validates before touching the device
  const c10::cuda::CUDAGuard guard(u.device());
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
    const ScanConfig cfg = scan_config(s.d.dstate, dbl ? sizeof(double) : sizeof(float), true);
    ScanParams p = scan_params(s, delta_softplus, cfg);
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
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    if (dbl) launch_bwd<double>(p, cfg, stream);
    else launch_bwd<float>(p, cfg, stream);
  }

  // Absent optional inputs get numel-0 float32 gradients on u's device, as on the CPU.
  const at::Tensor none = at::empty({0}, u.options().dtype(at::kFloat));
  return {du,
          ddelta,
          dA_acc.to(A.scalar_type()),
          dB_acc.to(B.scalar_type()),
          dC_acc.to(C.scalar_type()),
          s.D.defined() ? dD_acc.to(s.D.scalar_type()) : none,
          dz.defined() ? dz : none,
          s.delta_bias.defined() ? dbias_acc.to(s.delta_bias.scalar_type()) : none};
}

}  // namespace
}  // namespace cuda
}  // namespace dmm

TORCH_LIBRARY_IMPL(dmm, CUDA, m) {
  m.impl("selective_scan_fwd", &dmm::cuda::selective_scan_fwd_cuda);
  m.impl("selective_scan_bwd", &dmm::cuda::selective_scan_bwd_cuda);
}
