// Selective scan on the GPU: parameters, shared-memory layout, the per-chunk device routines and
// the kernels of dmm::selective_scan_fwd / selective_scan_bwd (launched by selective_scan.cu). In a
// header so that a fused block kernel can run the same scan on its own staged chunks, and so that
// the kernels compile unchanged as host C++ under the emulator (csrc/emu).
//
// Thread mapping (forward and backward):
//   * A block of kScanThreads threads owns one batch row b and `chans` consecutive channels e of
//     one B/C group g (so all its channels read the same B/C rows).
//   * Each channel is served by an aligned group of `lanes` threads (a power of two, 8..32,
//     lanes * chans = kScanThreads). Lane r of a group holds the states n = r + j * lanes,
//     j < NPL (= ceil(N / lanes), a template constant so the state array stays in registers).
//     N <= 256 = 32 lanes * 8 states.
//   * Time is cut into chunks of `chunk` steps. Per chunk, the block stages B/C rows [N][chunk]
//     and its channels' u / delta (after bias + softplus) [chans][chunk] in shared memory with
//     coalesced loads along L; then every group walks the chunk sequentially, reducing
//     y_t = sum_n s_n C_n over its lanes with xor shuffles.
#pragma once

#include "device.cuh"

namespace dmm {
namespace cuda {

constexpr int kScanThreads = 128;
constexpr int kScanMaxStates = 256;            // 32 lanes x 8 states per lane
constexpr int kScanSmemBytes = 48 * 1024;      // stay under the default dynamic limit

struct ScanParams {
  // inputs (absent optionals have p == nullptr)
  InPtr u, delta, z, A, B, C, D, delta_bias;  // u/delta/z (batch, E, L); B/C (batch, G, N, L)
  InPtr dout;                                  // backward only, (batch, E, L)
  // forward outputs
  OutPtr out;         // (batch, E, L), u's dtype
  OutPtr last_state;  // (batch, E, N)
  // backward outputs written directly
  OutPtr du, ddelta, dz;  // (batch, E, L) in the dtypes of u, delta, z
  // backward accumulators in acc_t, zero-initialised (summed with atomics across blocks)
  gptr<void> dA_acc;           // (E, N)
  gptr<void> dB_acc;           // (batch, G, N, L)
  gptr<void> dC_acc;           // (batch, G, N, L)
  gptr<void> dD_acc;           // (E,)
  gptr<void> ddelta_bias_acc;  // (E,)
  gptr<void> chunk_states;     // (batch, E, n_chunks, N): state entering each chunk
  int batch, dim, len, dstate, n_groups, dim_per_group;
  int lanes, chans, chunk, n_chunks, blocks_per_group;
  bool delta_softplus;
  // Backward: bit-reproducible sums (torch.use_deterministic_algorithms(True)): per-block partial
  // accumulators (dA, dD, ddelta_bias: (batch, ...); dB, dC: (blocks_per_group, ...)) and the
  // channels' dB / dC contributions of a step reduced in slot order instead of shared atomics.
  bool deterministic = false;
};

// Shared-memory layout in units of acc_t; rows of per-time arrays are padded to chunk + 1 so
// that lanes reading different n (or channels) at the same t hit different banks.
struct ScanSmem {
  int row;
  int64_t B, C, dB, dC, u, dt, y, g, ddt, du, dsum, dbsum, states, red, total;
  __host__ __device__ ScanSmem(int dstate, int chans, int chunk, int npl, bool backward,
                               bool deterministic = false) {
    row = chunk + 1;
    const int64_t nrow = int64_t(dstate) * row, crow = int64_t(chans) * row;
    B = 0;
    C = B + nrow;
    if (!backward) {
      dB = dC = g = ddt = du = dsum = dbsum = states = red = -1;
      u = C + nrow;
      dt = u + crow;
      y = dt + crow;
      total = y + crow;
      return;
    }
    dB = C + nrow;
    dC = dB + nrow;
    u = dC + nrow;
    dt = u + crow;
    y = dt + crow;
    g = y + crow;
    ddt = g + crow;
    du = ddt + crow;
    dsum = du + crow;
    dbsum = dsum + chans;
    states = dbsum + chans;  // [npl][chunk][kScanThreads]: every thread keeps its own states
    red = states + int64_t(npl) * chunk * kScanThreads;
    // deterministic: [2][chans][dstate], one step's dB / dC contributions of every channel slot
    total = red + (deterministic ? 2 * int64_t(chans) * dstate : 0);
  }
};

// Advance one channel's states through `len` steps of a staged chunk.
//   s, a: this lane's states and A values (n = r + j * width); dt, u: the channel's staged rows;
//   sB, sC: [N][row] staged B/C. kWithY: lane 0 writes y_t to y[t] (needs sC).
//   kSaveStates: every lane writes s_t to states[(j * chunk + t) * kScanThreads + tid].
// Every lane of the warp must call this with the same len (group_sum shuffles the full warp).
template <int NPL, bool kWithY, bool kSaveStates, typename acc_t>
__device__ __forceinline__ void scan_chunk_forward(acc_t (&s)[NPL], const acc_t (&a)[NPL], int r,
                                                   int width, int dstate, sptr<const acc_t> sB,
                                                   sptr<const acc_t> sC, int row,
                                                   sptr<const acc_t> dt, sptr<const acc_t> u,
                                                   sptr<acc_t> y, int len, sptr<acc_t> states,
                                                   int chunk, int tid) {
  for (int t = 0; t < len; ++t) {
    const acc_t d = dt[t];
    const acc_t du = d * u[t];
    acc_t acc = acc_t(0);
#pragma unroll
    for (int j = 0; j < NPL; ++j) {
      const int n = r + j * width;
      if (n < dstate) {
        s[j] = exp_(d * a[j]) * s[j] + du * sB[n * row + t];
        if constexpr (kWithY) acc += s[j] * sC[n * row + t];
        if constexpr (kSaveStates) states[(j * chunk + t) * kScanThreads + tid] = s[j];
      }
    }
    if constexpr (kWithY) {
      acc = group_sum(acc, width);
      if (r == 0) y[t] = acc;
    }
  }
}

// Walk one chunk backwards through the adjoint recursion
//   h_t = g_t C_t + exp(delta_{t+1} A) h_{t+1},   with s_t = exp(delta_t A) s_{t-1} + delta_t B_t u_t,
// given g_t = dL/dy_t, the chunk's states (saved by scan_chunk_forward) and s0 = the state before
// the chunk. `hn` carries exp(delta_{t+1} A) h_{t+1} across chunks (zero after the last step).
// Accumulates dA (registers), dB / dC (shared, atomics: the channels of a block share rows; with
// `red` ([2][chans][dstate] shared scratch, every thread of the block calling) the channels' values
// are summed in slot order instead, bit-reproducibly) and
// writes the lane-reduced d(delta_t) and the scan part of du_t to ddt[t] / du[t] (lane 0).
// `active` = this group's channel exists (inactive groups still shuffle but add nothing).
template <int NPL, typename acc_t>
__device__ __forceinline__ void scan_chunk_backward(acc_t (&hn)[NPL], acc_t (&dA)[NPL],
                                                    const acc_t (&a)[NPL], const acc_t (&s0)[NPL],
                                                    int r, int width, int dstate,
                                                    sptr<const acc_t> sB, sptr<const acc_t> sC,
                                                    sptr<acc_t> sdB, sptr<acc_t> sdC, int row,
                                                    sptr<const acc_t> dt, sptr<const acc_t> u,
                                                    sptr<const acc_t> g, sptr<acc_t> ddt,
                                                    sptr<acc_t> du, int len,
                                                    sptr<const acc_t> states, int chunk, int tid,
                                                    bool active, sptr<acc_t> red = nullptr) {
  const int slot = tid / width, chans = kScanThreads / width;
  for (int t = len - 1; t >= 0; --t) {
    const acc_t d = dt[t];
    const acc_t uu = u[t];
    const acc_t gg = g[t];
    acc_t ddt_acc = acc_t(0), du_acc = acc_t(0);
#pragma unroll
    for (int j = 0; j < NPL; ++j) {
      const int n = r + j * width;
      acc_t vB = acc_t(0), vC = acc_t(0);  // this channel's dB / dC contributions at (n, t)
      if (active && n < dstate) {
        const acc_t Bn = sB[n * row + t];
        const acc_t Cn = sC[n * row + t];
        const acc_t s_t = states[(j * chunk + t) * kScanThreads + tid];
        const acc_t s_prev = t > 0 ? states[(j * chunk + t - 1) * kScanThreads + tid] : s0[j];
        const acc_t decay = exp_(d * a[j]);
        const acc_t h = gg * Cn + hn[j];
        vC = gg * s_t;
        vB = h * d * uu;
        if (red == nullptr) {
          atomicAdd(sdC + n * row + t, vC);
          atomicAdd(sdB + n * row + t, vB);
        }
        ddt_acc += h * (a[j] * decay * s_prev + Bn * uu);
        du_acc += h * d * Bn;
        dA[j] += h * d * decay * s_prev;
        hn[j] = h * decay;
      }
      if (red != nullptr && n < dstate) {
        red[slot * dstate + n] = vB;
        red[(chans + slot) * dstate + n] = vC;
      }
    }
    if (red != nullptr) {  // deterministic: sum the channel slots in order (block-uniform branch)
      __syncthreads();
      for (int n = tid; n < dstate; n += kScanThreads) {
        acc_t sb = acc_t(0), sc = acc_t(0);
        for (int c = 0; c < chans; ++c) {
          sb += red[c * dstate + n];
          sc += red[(chans + c) * dstate + n];
        }
        sdB[n * row + t] = sb;
        sdC[n * row + t] = sc;
      }
      __syncthreads();
    }
    ddt_acc = group_sum(ddt_acc, width);
    du_acc = group_sum(du_acc, width);
    if (r == 0) {
      ddt[t] = ddt_acc;
      du[t] = du_acc;
    }
  }
}

// delta after bias and (optionally) softplus, as the scan uses it.
template <typename acc_t>
__device__ __forceinline__ acc_t scan_delta(const ScanParams& p, int64_t idx, int e) {
  acc_t x = load<acc_t>(p.delta, idx);
  if (p.delta_bias.p != nullptr) x += load<acc_t>(p.delta_bias, e);
  return p.delta_softplus ? softplus_(x) : x;
}

// ---- kernels (launched by selective_scan.cu) -------------------------------------------------------

// Where this block's channels live, and the per-chunk staging shared by both kernels.
struct ScanBlock {
  int b, g, cblock, c_first, n_chans;  // batch row, group, channel block in the group, first
                                       // channel, channels present (<= chans)
  int64_t bc_base;             // offset of B/C row (b, g, 0, 0)
  int64_t x_base;              // offset of u/delta/z row (b, c_first, 0)

  __device__ ScanBlock(const ScanParams& p) {
    cblock = blockIdx.x % p.blocks_per_group;
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
                            sptr<acc_t> smem, int l0, int len) {
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

// This lane's entries n = r + j * width of A's row e (zero past N or for an idle slot), and a
// zero state: the start of both scans.
template <int NPL, typename acc_t>
__device__ __forceinline__ void load_lane_A(const ScanParams& p, bool active, int e, int r,
                                            int width, acc_t (&a)[NPL], acc_t (&s)[NPL]) {
#pragma unroll
  for (int j = 0; j < NPL; ++j) {
    const int n = r + j * width;
    a[j] = active && n < p.dstate ? load<acc_t>(p.A, int64_t(e) * p.dstate + n) : acc_t(0);
    s[j] = acc_t(0);
  }
}

template <int NPL, typename acc_t>
__global__ void __launch_bounds__(kScanThreads)
    selective_scan_fwd_kernel(const ScanParams p) {
  const sptr<acc_t> smem = dynamic_smem<acc_t>();
  const ScanSmem lay(p.dstate, p.chans, p.chunk, NPL, /*backward=*/false);
  const ScanBlock blk(p);
  const int tid = threadIdx.x, width = p.lanes;
  const int slot = tid / width, r = tid % width;  // channel slot in the block, lane in its group
  const bool active = slot < blk.n_chans;
  const int e = blk.c_first + slot;
  const int N = p.dstate, row = lay.row;

  acc_t s[NPL], a[NPL];
  load_lane_A<NPL>(p, active, e, r, width, a, s);

  for (int k = 0; k < p.n_chunks; ++k) {
    const int l0 = k * p.chunk, len = min(p.chunk, p.len - l0);
    __syncthreads();  // the previous chunk's staged data is no longer read
    stage_chunk<true>(p, blk, lay, smem, l0, len);
    __syncthreads();
    scan_chunk_forward<NPL, true, false, acc_t>(s, a, r, width, N, smem + lay.B, smem + lay.C, row,
                                         smem + lay.dt + slot * row, smem + lay.u + slot * row,
                                         smem + lay.y + slot * row, len, nullptr, p.chunk, tid);
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
  const sptr<acc_t> smem = dynamic_smem<acc_t>();
  const ScanSmem lay(p.dstate, p.chans, p.chunk, NPL, /*backward=*/true, p.deterministic);
  const ScanBlock blk(p);
  const int tid = threadIdx.x, width = p.lanes;
  const int slot = tid / width, r = tid % width;
  const bool active = slot < blk.n_chans;
  const int e = blk.c_first + slot;
  const int N = p.dstate, T = p.chunk, row = lay.row;
  const gptr<acc_t> chunk_states = ptr_cast<acc_t>(p.chunk_states);
  const int64_t st_base = (int64_t(blk.b) * p.dim + e) * p.n_chunks * N;  // used when active
  const sptr<acc_t> sdB = smem + lay.dB;
  const sptr<acc_t> sdC = smem + lay.dC;
  const sptr<acc_t> sDsum = smem + lay.dsum;    // per channel slot: sum g * u       -> dD
  const sptr<acc_t> sDbsum = smem + lay.dbsum;  // per channel slot: sum d(delta raw) -> ddelta_bias
  // Global sums over blocks: float atomics into one buffer, or under p.deterministic each block's
  // own slice of partials (dA, dD, ddelta_bias per batch row; dB, dC per channel block), every
  // element added once onto zero, summed in a fixed order by the host.
  const int64_t bc_size = int64_t(p.batch) * p.n_groups * N * p.len;
  const gptr<acc_t> dA_acc =
      ptr_cast<acc_t>(p.dA_acc) + (p.deterministic ? int64_t(blk.b) * p.dim * N : 0);
  const gptr<acc_t> dD_acc = ptr_cast<acc_t>(p.dD_acc) + (p.deterministic ? int64_t(blk.b) * p.dim : 0);
  const gptr<acc_t> ddelta_bias_acc =
      ptr_cast<acc_t>(p.ddelta_bias_acc) + (p.deterministic ? int64_t(blk.b) * p.dim : 0);
  const gptr<acc_t> dB_acc =
      p.dB_acc == nullptr ? nullptr
                          : ptr_cast<acc_t>(p.dB_acc) + (p.deterministic ? blk.cblock * bc_size : 0);
  const gptr<acc_t> dC_acc =
      p.dC_acc == nullptr ? nullptr
                          : ptr_cast<acc_t>(p.dC_acc) + (p.deterministic ? blk.cblock * bc_size : 0);

  for (int i = tid; i < 2 * p.chans; i += kScanThreads) sDsum[i] = acc_t(0);  // dsum, dbsum

  acc_t s[NPL], a[NPL];
  load_lane_A<NPL>(p, active, e, r, width, a, s);

  // Phase 1: states entering chunks 1..n_chunks-1 (chunk 0 starts from zero).
  for (int k = 0; k + 1 < p.n_chunks; ++k) {
    const int l0 = k * T, len = min(T, p.len - l0);
    __syncthreads();
    stage_chunk<false>(p, blk, lay, smem, l0, len);
    __syncthreads();
    scan_chunk_forward<NPL, false, false, acc_t>(s, a, r, width, N, smem + lay.B, nullptr, row,
                                          smem + lay.dt + slot * row, smem + lay.u + slot * row,
                                          nullptr, len, nullptr, T, tid);
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
    scan_chunk_forward<NPL, true, true, acc_t>(s, a, r, width, N, smem + lay.B, smem + lay.C, row,
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
      }
      smem[lay.g + c * row + t] = gg;
    }
    __syncthreads();
    // dD partial sums: one thread per channel, over t in order (no shared atomics).
    if (p.D.p != nullptr && tid < blk.n_chans) {
      acc_t sum = acc_t(0);
      for (int t = 0; t < len; ++t) sum += smem[lay.g + tid * row + t] * smem[lay.u + tid * row + t];
      sDsum[tid] += sum;
    }
    scan_chunk_backward<NPL, acc_t>(hn, dA, a, s0, r, width, N, smem + lay.B, smem + lay.C, sdB, sdC,
                             row, smem + lay.dt + slot * row, smem + lay.u + slot * row,
                             smem + lay.g + slot * row, smem + lay.ddt + slot * row,
                             smem + lay.du + slot * row, len, smem + lay.states, T, tid, active,
                             p.deterministic ? smem + lay.red : nullptr);
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
      smem[lay.ddt + c * row + t] = dd;  // for the ddelta_bias sum below
    }
    __syncthreads();
    // ddelta_bias partial sums: one thread per channel, over t in order (no shared atomics).
    if (p.delta_bias.p != nullptr && tid < blk.n_chans) {
      acc_t sum = acc_t(0);
      for (int t = 0; t < len; ++t) sum += smem[lay.ddt + tid * row + t];
      sDbsum[tid] += sum;
    }
    // This chunk's dB / dC rows, summed over the block's channels, into the global sums (under
    // p.deterministic: into this channel block's own partial slice, each element written once).
    for (int i = tid; i < N * T; i += kScanThreads) {
      const int n = i / T, t = i - n * T;
      if (t >= len) continue;
      const int64_t idx = blk.bc_base + int64_t(n) * p.len + l0 + t;
      atomicAdd(dB_acc + idx, sdB[n * row + t]);
      atomicAdd(dC_acc + idx, sdC[n * row + t]);
    }
  }

  if (active) {
#pragma unroll
    for (int j = 0; j < NPL; ++j) {
      const int n = r + j * width;
      if (n < N) atomicAdd(dA_acc + int64_t(e) * N + n, dA[j]);
    }
  }
  __syncthreads();
  if (tid < blk.n_chans) {
    if (p.D.p != nullptr) atomicAdd(dD_acc + blk.c_first + tid, sDsum[tid]);
    if (p.delta_bias.p != nullptr) atomicAdd(ddelta_bias_acc + blk.c_first + tid, sDbsum[tid]);
  }
}

}  // namespace cuda
}  // namespace dmm
