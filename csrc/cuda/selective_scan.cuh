// Selective scan on the GPU: parameters, shared-memory layout and the per-chunk device routines,
// in a header so that a fused block kernel can run the same scan on its own staged chunks.
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

#include "common.cuh"

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
  void* dA_acc = nullptr;           // (E, N)
  void* dB_acc = nullptr;           // (batch, G, N, L)
  void* dC_acc = nullptr;           // (batch, G, N, L)
  void* dD_acc = nullptr;           // (E,)
  void* ddelta_bias_acc = nullptr;  // (E,)
  void* chunk_states = nullptr;     // (batch, E, n_chunks, N): state entering each chunk
  int batch, dim, len, dstate, n_groups, dim_per_group;
  int lanes, chans, chunk, n_chunks, blocks_per_group;
  bool delta_softplus;
};

// Shared-memory layout in units of acc_t; rows of per-time arrays are padded to chunk + 1 so
// that lanes reading different n (or channels) at the same t hit different banks.
struct ScanSmem {
  int row;
  int64_t B, C, dB, dC, u, dt, y, g, ddt, du, dsum, dbsum, states, total;
  __host__ __device__ ScanSmem(int dstate, int chans, int chunk, int npl, bool backward) {
    row = chunk + 1;
    const int64_t nrow = int64_t(dstate) * row, crow = int64_t(chans) * row;
    B = 0;
    C = B + nrow;
    if (!backward) {
      dB = dC = g = ddt = du = dsum = dbsum = states = -1;
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
    total = states + int64_t(npl) * chunk * kScanThreads;
  }
};

// Advance one channel's states through `len` steps of a staged chunk.
//   s, a: this lane's states and A values (n = r + j * width); dt, u: the channel's staged rows;
//   sB, sC: [N][row] staged B/C. kWithY: lane 0 writes y_t to y[t] (needs sC).
//   kSaveStates: every lane writes s_t to states[(j * chunk + t) * kScanThreads + tid].
// Every lane of the warp must call this with the same len (group_sum shuffles the full warp).
template <int NPL, bool kWithY, bool kSaveStates, typename acc_t>
__device__ __forceinline__ void scan_chunk_forward(acc_t (&s)[NPL], const acc_t (&a)[NPL], int r,
                                                   int width, int dstate, const acc_t* sB,
                                                   const acc_t* sC, int row, const acc_t* dt,
                                                   const acc_t* u, acc_t* y, int len,
                                                   acc_t* states, int chunk, int tid) {
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
// Accumulates dA (registers), dB / dC (shared, atomics: the channels of a block share rows) and
// writes the lane-reduced d(delta_t) and the scan part of du_t to ddt[t] / du[t] (lane 0).
// `active` = this group's channel exists (inactive groups still shuffle but add nothing).
template <int NPL, typename acc_t>
__device__ __forceinline__ void scan_chunk_backward(acc_t (&hn)[NPL], acc_t (&dA)[NPL],
                                                    const acc_t (&a)[NPL], const acc_t (&s0)[NPL],
                                                    int r, int width, int dstate, const acc_t* sB,
                                                    const acc_t* sC, acc_t* sdB, acc_t* sdC,
                                                    int row, const acc_t* dt, const acc_t* u,
                                                    const acc_t* g, acc_t* ddt, acc_t* du, int len,
                                                    const acc_t* states, int chunk, int tid,
                                                    bool active) {
  for (int t = len - 1; t >= 0; --t) {
    const acc_t d = dt[t];
    const acc_t uu = u[t];
    const acc_t gg = g[t];
    acc_t ddt_acc = acc_t(0), du_acc = acc_t(0);
#pragma unroll
    for (int j = 0; j < NPL; ++j) {
      const int n = r + j * width;
      if (active && n < dstate) {
        const acc_t Bn = sB[n * row + t];
        const acc_t Cn = sC[n * row + t];
        const acc_t s_t = states[(j * chunk + t) * kScanThreads + tid];
        const acc_t s_prev = t > 0 ? states[(j * chunk + t - 1) * kScanThreads + tid] : s0[j];
        const acc_t decay = exp_(d * a[j]);
        const acc_t h = gg * Cn + hn[j];
        atomicAdd(&sdC[n * row + t], gg * s_t);
        atomicAdd(&sdB[n * row + t], h * d * uu);
        ddt_acc += h * (a[j] * decay * s_prev + Bn * uu);
        du_acc += h * d * Bn;
        dA[j] += h * d * decay * s_prev;
        hn[j] = h * decay;
      }
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

}  // namespace cuda
}  // namespace dmm
