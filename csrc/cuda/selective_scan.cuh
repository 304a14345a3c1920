// Selective scan on the GPU: the kernels of dmm::selective_scan_fwd / selective_scan_bwd and of the
// block's fused scan (launched by selective_scan.cu). Torch-free, so that they compile unchanged as
// host C++ under the emulator (csrc/emu).
//
//   s_t = exp(delta_t A) s_{t-1} + delta_t B_t u_t,   y_t = <s_t, C_t>,
//   out_t = (y_t + D u_t) * SiLU(z_t)                  (per channel e; N states n)
//
// Thread mapping. A CTA of 128 threads owns one batch row b and 32 consecutive channels of one B/C
// group (a single warp and 8 channels where N is large). Each channel is served by kScanLanes = 4
// adjacent lanes of one warp; lane j owns kItems consecutive time steps [j kItems, (j + 1) kItems)
// of a chunk of kChunk = 4 kItems steps (kItems 16, 8 or 4: ScanTraits). Per chunk, the CTA stages in shared memory (coalesced, 16-byte vector loads where aligned):
// B / C rows [N][kChunk] (shared by the 32 channels) and its channels' u / delta / z tiles
// [kChans][kChunk]. Inputs are strided views: the op's (B, E, L) layout (L contiguous) and the block's
// (B, L, E) layout (E contiguous) are both read in place.
//
// The recurrence over a chunk, for each state n (a loop over N; states never leave registers):
//   1. each lane composes its items sequentially into one affine map s -> P s + S
//      (a_i = exp2(delta_i A_n log2 e), b_i = delta_i u_i B_{n,i}; P = exp2(A_n log2 e sum delta_i));
//   2. an inclusive scan of the (P, S) pairs over the channel's 4 lanes (warp shuffles);
//   3. each lane applies its exclusive prefix to the state carried in from the previous chunk and
//      replays its items: s_i = a_i s_{i-1} + b_i, y_i += s_i C_{n,i}; the last lane's total becomes
//      the carry of the next chunk.
// Backward (reverse chunk order): the same forward recurrence inside the chunk (from the state
// entering it: computed by a forward pass over the chunks first, in the same launch, when L spans
// several chunks), then the adjoint h_t = a_{t+1} h_{t+1} + g_t C_t as a reverse scan of the same
// pairs. dB / dC (sums over channels) go through a per-channel shared-memory slot summed in a fixed
// order once per state; dA / dD / ddelta_bias are per-lane partials reduced once per chunk or launch.
// No shared-memory atomics; float atomics only into global sums (per-block partials under
// torch.use_deterministic_algorithms(True)).
#pragma once

#include <type_traits>

#include "device.cuh"

namespace dmm {
namespace cuda {

constexpr int kScanLanes = 4;  // lanes per channel

// ---- strided views ------------------------------------------------------------------------------
// (batch, E, L) tensor: element (b, e, t) at p + b sb + e se + t sl (elements).
struct View3 {
  gptr<const void> p = nullptr;
  int64_t sb = 0, se = 0, sl = 0;
};
struct MutView3 {
  gptr<void> p = nullptr;
  int64_t sb = 0, se = 0, sl = 0;
};
// B / C (batch, G, N, L): element (b, g, n, t) at p + b sb + g sg + n sn + t sl.
struct View4 {
  gptr<const void> p = nullptr;
  int64_t sb = 0, sg = 0, sn = 0, sl = 0;
};
struct MutView4 {
  gptr<void> p = nullptr;
  int64_t sb = 0, sg = 0, sn = 0, sl = 0;
};

struct ScanParams {
  // inputs: u, delta, z, dout in in_t; B, C in bc_t; A (E, N), D, delta_bias (E,) in acc_t
  View3 u, delta, z, dout;
  View4 B, C;
  gptr<const void> A = nullptr;  // A, or A_log (A = -exp(A_log)) when a_is_log
  gptr<const void> D = nullptr;
  gptr<const void> delta_bias = nullptr;
  // block mode (dt_proj folded in): raw delta (b, e, t) = round_in_t(sum_r w_dt[e, r] dt_low(b, r, t))
  View3 dt_low;               // (batch, R, L) view of x_dbl's first R columns
  gptr<const void> w_dt = nullptr;  // (E, R) in_t, contiguous
  int dt_rank = 0;
  bool a_is_log = false;
  // forward outputs
  MutView3 out;                // in_t
  gptr<void> last_state = nullptr;  // (batch, E, N) acc_t, contiguous; nullptr: not written
  // backward outputs: du, ddelta, dz in in_t; the sums in acc_t, zero-initialised
  MutView3 du, ddelta, dz;       // ddelta may be absent (block mode)
  gptr<void> dA = nullptr;           // (E, N)            [deterministic: (batch, E, N)]
  gptr<void> dD = nullptr;           // (E,)              [deterministic: (batch, E)]
  gptr<void> ddelta_bias = nullptr;  // (E,)              [deterministic: (batch, E)]
  MutView4 dB, dC;               // like B / C        [deterministic: + cblock * dBC_part]
  int64_t dBC_part = 0;
  // block mode: the dt_proj gradients, summed in acc_t: d dt_low (b, r, t) over channels (like dB;
  // deterministic: + cblock * dlow_part) and dW_dt (E, R) over batch rows (like dA)
  MutView3 ddt_low;
  int64_t dlow_part = 0;
  gptr<void> dw_dt = nullptr;
  gptr<void> chunk_states = nullptr;  // (batch, E, n_chunks, N) acc_t scratch: state entering each chunk
  int batch = 0, dim = 0, len = 0, dstate = 0, n_groups = 1, dim_per_group = 0;
  int blocks_per_group = 0, n_chunks = 0;
  bool delta_softplus = false, deterministic = false;
};

// Compile-time configuration: storage types, accumulation type, items per lane, channels per CTA
// (32: 128 threads; 8, a single warp, where N is large and 32 channels' states and B / C rows
// would not fit in shared memory).
template <typename in_t_, typename bc_t_, int kItems_, int kChans_>
struct ScanTraits {
  using in_t = in_t_;
  using bc_t = bc_t_;
  using acc_t = std::conditional_t<std::is_same_v<in_t_, double>, double, float>;
  static constexpr int kItems = kItems_;
  static constexpr int kChans = kChans_;
  static constexpr int kThreads = kChans * kScanLanes;
  static constexpr int kChunk = kScanLanes * kItems;
  static constexpr int kRow = kChunk + 4;  // padded smem row (16-byte aligned for float and double)
};

// ---- element conversions and fast math ---------------------------------------------------------
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ double to_float(double x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_acc(float v);
template <>
__device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16(v); }
template <typename T>
__device__ __forceinline__ T from_acc(double v) { return static_cast<T>(v); }

// 2^x: one MUFU.EX2 on the GPU (relative error ~2^-22, flushes results below 2^-126 to zero).
__device__ __forceinline__ float exp2_(float x) {
#ifdef __CUDA_ARCH__
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return exp2f(x);
#endif
}
__device__ __forceinline__ double exp2_(double x) { return exp2(x); }

// K consecutive acc_t from 16-byte aligned shared memory, as 16-byte loads.
template <int K, typename acc_t>
__device__ __forceinline__ void load_items(std::type_identity_t<sptr<const acc_t>> src,
                                           acc_t (&dst)[K]) {
  constexpr int V = 16 / sizeof(acc_t);
  static_assert(K % V == 0, "items per lane must fill 16-byte vectors");
#pragma unroll
  for (int j = 0; j < K / V; ++j) {
    const Vec<acc_t, V> v = load_vec<V>(src, j * V);
#pragma unroll
    for (int q = 0; q < V; ++q) dst[j * V + q] = v.v[q];
  }
}

// ---- staging between global and shared memory ----------------------------------------------------
// dst[o * d_out + i * d_in] = src[o * s_out + i * s_in] for o < n_out, i < n_in (zero where
// o >= v_out or i >= v_in); consecutive threads take consecutive i, 16-byte vectors along i when
// s_in == 1 and src and s_out allow it.
template <typename T, typename acc_t>
__device__ __forceinline__ void stage_in(gptr<const T> src, int64_t s_out, int64_t s_in, int n_out,
                                         int n_in, int v_out, int v_in, sptr<acc_t> dst, int d_out,
                                         int d_in) {
  constexpr int V = 16 / sizeof(T);
  const bool vec = s_in == 1 && n_in % V == 0 && s_out % V == 0 &&
                   address_of(src) % 16 == 0;
  if (vec) {
    const int per_row = n_in / V;
    for (int k = threadIdx.x; k < n_out * per_row; k += blockDim.x) {
      const int o = k / per_row, i0 = (k - o * per_row) * V;
      const sptr<acc_t> d = dst + o * d_out + i0 * d_in;
      if (o < v_out && i0 + V <= v_in) {
        const Vec<T, V> v = load_vec<V>(src + o * s_out, i0);
#pragma unroll
        for (int q = 0; q < V; ++q) d[q * d_in] = to_float(v.v[q]);
      } else {
#pragma unroll
        for (int q = 0; q < V; ++q)
          d[q * d_in] = o < v_out && i0 + q < v_in ? acc_t(to_float(src[o * s_out + i0 + q])) : acc_t(0);
      }
    }
  } else {
    for (int k = threadIdx.x; k < n_out * n_in; k += blockDim.x) {
      const int o = k / n_in, i = k - o * n_in;
      dst[o * d_out + i * d_in] =
          o < v_out && i < v_in ? acc_t(to_float(src[o * s_out + i * s_in])) : acc_t(0);
    }
  }
}

// A [rows][cols] smem tile (row pitch `row`) from a strided global tile (s_r, s_c), reading along
// whichever global dimension is contiguous.
template <typename T, typename acc_t>
__device__ __forceinline__ void stage_tile(gptr<const T> src, int64_t s_r, int64_t s_c, int rows,
                                           int cols, int v_rows, int v_cols, sptr<acc_t> dst, int row) {
  if (s_c == 1 || s_r != 1) stage_in<T, acc_t>(src, s_r, s_c, rows, cols, v_rows, v_cols, dst, row, 1);
  else stage_in<T, acc_t>(src, s_c, s_r, cols, rows, v_cols, v_rows, dst, 1, row);
}

// The reverse: global[r, c] = smem[r][c] for r < v_rows, c < v_cols.
template <typename T, typename acc_t>
__device__ __forceinline__ void store_tile(gptr<T> dst, int64_t s_r, int64_t s_c, int v_rows, int v_cols,
                                           sptr<const acc_t> src, int row) {
  constexpr int V = 16 / sizeof(T);
  const bool col_fast = s_c == 1 || s_r != 1;
  const int64_t s_out = col_fast ? s_r : s_c, s_in = col_fast ? s_c : s_r;
  const int n_out = col_fast ? v_rows : v_cols, n_in = col_fast ? v_cols : v_rows;
  const int d_out = col_fast ? row : 1, d_in = col_fast ? 1 : row;
  const bool vec = s_in == 1 && s_out % V == 0 && address_of(dst) % 16 == 0;
  const int per_row = (n_in + V - 1) / V;
  for (int k = threadIdx.x; k < n_out * per_row; k += blockDim.x) {
    const int o = k / per_row, i0 = (k - o * per_row) * V;
    const sptr<const acc_t> s = src + o * d_out + i0 * d_in;
    if (vec && i0 + V <= n_in) {
      Vec<T, V> v;
#pragma unroll
      for (int q = 0; q < V; ++q) v.v[q] = from_acc<T>(s[q * d_in]);
      store_vec(dst + o * s_out, i0, v);
    } else {
      for (int q = 0; q < V && i0 + q < n_in; ++q)
        dst[o * s_out + (i0 + q) * s_in] = from_acc<T>(s[q * d_in]);
    }
  }
}

// ---- where a CTA works -------------------------------------------------------------------------------
struct ScanTile {
  int b, g, cblock, c_first, n_chans;  // batch row, group, channel block in the group, first channel,
                                       // channels present (<= chans)
  __device__ ScanTile(const ScanParams& p, int chans) {
    cblock = blockIdx.x % p.blocks_per_group;
    g = (blockIdx.x / p.blocks_per_group) % p.n_groups;
    b = blockIdx.x / (p.blocks_per_group * p.n_groups);
    c_first = g * p.dim_per_group + cblock * chans;
    n_chans = min(chans, p.dim_per_group - cblock * chans);
  }
};

// Shared-memory layout (acc_t elements; every region 16-byte aligned).
struct ScanSmem {
  int64_t A2, carry, rcarry, dA, B, C, u, dt, z, dout, red, dtlow, wdt, dwdt, total;
  __host__ __device__ static int64_t up4(int64_t x) { return (x + 3) / 4 * 4; }
  __host__ __device__ ScanSmem(int dstate, int chans, int chunk, int row, bool backward, int dt_rank) {
    const int64_t cn = up4(int64_t(chans) * dstate), tile = int64_t(chans) * row;
    const int64_t bc = up4(int64_t(dstate) * row);
    A2 = 0;
    carry = A2 + cn;
    rcarry = carry + cn;                  // backward: the adjoint entering from the next chunk
    dA = rcarry + (backward ? cn : 0);    // backward: per-channel dA sums
    B = dA + (backward ? cn : 0);
    C = B + bc;
    u = C + bc;
    dt = u + tile;  // raw delta (before bias / softplus)
    z = dt + tile;
    dout = z + tile;
    red = dout + (backward ? tile : 0);   // backward: [dB, dC][chans][chunk]
    dtlow = red + (backward ? 2 * int64_t(chans) * chunk : 0);
    wdt = dtlow + (dt_rank > 0 ? up4(int64_t(chunk) * (dt_rank + 1)) : 0);  // [chunk][R + 1]
    dwdt = wdt + up4(int64_t(chans) * dt_rank);                             // [chans][R]
    total = dwdt + (backward ? up4(int64_t(chans) * dt_rank) : 0);  // backward: dW_dt sums
  }
};

// ---- per-chunk pieces shared by the kernels -----------------------------------------------------------
// Per-channel constants into smem: A log2(e) [chans][N], zero carries.
template <typename acc_t>
__device__ __forceinline__ void stage_constants(const ScanParams& p, const ScanTile& tile,
                                                const ScanSmem& lay, sptr<acc_t> sm, int chans,
                                                bool backward) {
  const int N = p.dstate;
  const gptr<const acc_t> A = ptr_cast<const acc_t>(p.A);
  for (int i = threadIdx.x; i < chans * N; i += blockDim.x) {
    const int c = i / N, n = i - c * N;
    acc_t a = c < tile.n_chans ? A[int64_t(tile.c_first + c) * N + n] : acc_t(0);
    if (p.a_is_log && c < tile.n_chans) a = -exp_(a);
    sm[lay.A2 + i] = a * acc_t(1.4426950408889634);
    sm[lay.carry + i] = acc_t(0);
    if (backward) {
      sm[lay.rcarry + i] = acc_t(0);
      sm[lay.dA + i] = acc_t(0);
    }
  }
  if (backward)
    for (int i = threadIdx.x; i < chans * p.dt_rank; i += blockDim.x) sm[lay.dwdt + i] = acc_t(0);
}

// Stage the chunk [l0, l0 + len): B (and C) rows, and u / raw delta (/ z / dout) tiles.
template <typename KT>
__device__ __forceinline__ void stage_chunk(const ScanParams& p, const ScanTile& tile,
                                            const ScanSmem& lay, sptr<typename KT::acc_t> sm, int l0,
                                            int len, bool with_C, bool with_z, bool with_dout) {
  using acc_t = typename KT::acc_t;
  using in_t = typename KT::in_t;
  using bc_t = typename KT::bc_t;
  constexpr int T = KT::kChunk, row = KT::kRow;
  const int N = p.dstate;
  const int64_t bc_off = int64_t(tile.b) * p.B.sb + int64_t(tile.g) * p.B.sg + int64_t(l0) * p.B.sl;
  stage_tile<bc_t, acc_t>(ptr_cast<const bc_t>(p.B.p) + bc_off, p.B.sn, p.B.sl, N, T, N, len, sm + lay.B, row);
  if (with_C) {
    const int64_t c_off = int64_t(tile.b) * p.C.sb + int64_t(tile.g) * p.C.sg + int64_t(l0) * p.C.sl;
    stage_tile<bc_t, acc_t>(ptr_cast<const bc_t>(p.C.p) + c_off, p.C.sn, p.C.sl, N, T, N, len, sm + lay.C, row);
  }
  auto stage3 = [&](const View3& v, int64_t dst) {
    const int64_t off = int64_t(tile.b) * v.sb + int64_t(tile.c_first) * v.se + int64_t(l0) * v.sl;
    stage_tile<in_t, acc_t>(ptr_cast<const in_t>(v.p) + off, v.se, v.sl, KT::kChans, T, tile.n_chans,
                            len, sm + dst, row);
  };
  stage3(p.u, lay.u);
  if (p.w_dt == nullptr) stage3(p.delta, lay.dt);
  if (with_z) stage3(p.z, lay.z);
  if (with_dout) stage3(p.dout, lay.dout);
  if (p.w_dt != nullptr) {  // dt_low rows [chunk][R] for the dt_proj mat-vec below
    const int R = p.dt_rank;
    const View3& v = p.dt_low;
    const int64_t off = int64_t(tile.b) * v.sb + int64_t(l0) * v.sl;
    stage_tile<in_t, acc_t>(ptr_cast<const in_t>(v.p) + off, v.sl, v.se, T, R, len, R, sm + lay.dtlow,
                            R + 1);
  }
}

// Block mode: raw delta tile = round_in_t(W_dt dt_low) (the composite's dt_proj GEMM output).
// Needs the staged dt_low rows and W_dt (a barrier after stage_chunk).
template <typename KT>
__device__ __forceinline__ void dt_proj_tile(const ScanParams& p, const ScanTile& tile,
                                             const ScanSmem& lay, sptr<typename KT::acc_t> sm, int len) {
  using acc_t = typename KT::acc_t;
  using in_t = typename KT::in_t;
  constexpr int T = KT::kChunk;
  const int R = p.dt_rank;
  for (int i = threadIdx.x; i < KT::kChans * T; i += blockDim.x) {
    const int c = i / T, t = i - c * T;
    acc_t acc = acc_t(0);
    const sptr<const acc_t> w = sm + lay.wdt + c * R;
    const sptr<const acc_t> x = sm + lay.dtlow + t * (R + 1);
    for (int r = 0; r < R; ++r) acc += w[r] * x[r];
    const bool ok = c < tile.n_chans && t < len;
    sm[lay.dt + c * KT::kRow + t] = ok ? acc_t(to_float(from_acc<in_t>(acc))) : acc_t(0);
  }
}

// Block mode, backward: this chunk's dt_proj gradients from the ddelta tile (after a barrier):
// d dt_low (t, r) = sum over the CTA's channels of ddelta (c, t) W_dt (c, r), one float atomic per
// (CTA, t, r); dW_dt (c, r) += sum_t ddelta (c, t) dt_low (t, r), in smem until the end.
template <typename KT>
__device__ __forceinline__ void dt_proj_grads(const ScanParams& p, const ScanTile& tile,
                                              const ScanSmem& lay, sptr<typename KT::acc_t> sm, int l0,
                                              int len) {
  using acc_t = typename KT::acc_t;
  const int R = p.dt_rank;
  const sptr<const acc_t> ddt = sm + lay.dt;
  const gptr<acc_t> dlow = ptr_cast<acc_t>(p.ddt_low.p) + int64_t(tile.b) * p.ddt_low.sb +
                           (p.deterministic ? int64_t(tile.cblock) * p.dlow_part : 0);
  for (int i = threadIdx.x; i < len * R; i += blockDim.x) {
    const int t = i / R, r = i - t * R;
    acc_t sum = acc_t(0);
    for (int c = 0; c < KT::kChans; ++c) sum += ddt[c * KT::kRow + t] * sm[lay.wdt + c * R + r];
    atomicAdd(dlow + int64_t(r) * p.ddt_low.se + int64_t(l0 + t) * p.ddt_low.sl, sum);
  }
  for (int i = threadIdx.x; i < KT::kChans * R; i += blockDim.x) {
    const int c = i / R, r = i - c * R;
    acc_t sum = acc_t(0);
    for (int t = 0; t < len; ++t) sum += ddt[c * KT::kRow + t] * sm[lay.dtlow + t * (R + 1) + r];
    sm[lay.dwdt + i] += sum;
  }
}

// This lane's delta (after bias and softplus; zero past the chunk's end) and delta * u.
template <typename KT>
__device__ __forceinline__ typename KT::acc_t lane_deltas(const ScanParams& p, sptr<const typename KT::acc_t> sm,
                                                          const ScanSmem& lay, int c, int t0, int len,
                                                          typename KT::acc_t bias,
                                                          typename KT::acc_t (&dt)[KT::kItems],
                                                          typename KT::acc_t (&du)[KT::kItems]) {
  using acc_t = typename KT::acc_t;
  constexpr int K = KT::kItems;
  acc_t raw[K], u[K];
  load_items<K>(sm + lay.dt + c * KT::kRow + t0, raw);
  load_items<K>(sm + lay.u + c * KT::kRow + t0, u);
  acc_t sum = acc_t(0);
#pragma unroll
  for (int i = 0; i < K; ++i) {
    acc_t d = raw[i] + bias;
    if (p.delta_softplus) d = softplus_(d);
    dt[i] = t0 + i < len ? d : acc_t(0);
    du[i] = dt[i] * u[i];
    sum += dt[i];
  }
  return sum;
}

// Inclusive scan of affine maps s -> P s + S over the kScanLanes lanes of a channel (lane order =
// time order): afterwards lane j holds the composition of lanes 0..j. Reverse: lanes j..last, where
// lane j's map is applied last.
template <typename acc_t>
__device__ __forceinline__ void lane_scan(acc_t& P, acc_t& S, int lane) {
#pragma unroll
  for (int off = 1; off < kScanLanes; off <<= 1) {
    const acc_t Pp = __shfl_up_sync(0xffffffffu, P, off, kScanLanes);
    const acc_t Sp = __shfl_up_sync(0xffffffffu, S, off, kScanLanes);
    if (lane >= off) {
      S = P * Sp + S;
      P = P * Pp;
    }
  }
}
template <typename acc_t>
__device__ __forceinline__ void lane_scan_reverse(acc_t& P, acc_t& S, int lane) {
#pragma unroll
  for (int off = 1; off < kScanLanes; off <<= 1) {
    const acc_t Pn = __shfl_down_sync(0xffffffffu, P, off, kScanLanes);
    const acc_t Sn = __shfl_down_sync(0xffffffffu, S, off, kScanLanes);
    if (lane + off < kScanLanes) {
      S = P * Sn + S;
      P = P * Pn;
    }
  }
}

template <typename acc_t>
__device__ __forceinline__ acc_t lane_sum(acc_t v) {
#pragma unroll
  for (int off = kScanLanes / 2; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off, kScanLanes);
  return v;
}

// One state's forward composition over this lane's items: a_i, b_i and the lane map (P, S).
template <int K, typename acc_t>
__device__ __forceinline__ void lane_compose(const acc_t (&dt)[K], const acc_t (&du)[K],
                                             const acc_t (&Bv)[K], acc_t a2, acc_t dt_sum,
                                             acc_t (&a)[K], acc_t (&b)[K], acc_t& P, acc_t& S) {
  S = acc_t(0);
#pragma unroll
  for (int i = 0; i < K; ++i) {
    a[i] = exp2_(dt[i] * a2);
    b[i] = Bv[i] * du[i];
    S = a[i] * S + b[i];
  }
  P = exp2_(dt_sum * a2);  // = prod a_i, from the state-independent sum of the lane's deltas
}

// ---- forward --------------------------------------------------------------------------------------
template <typename KT>
__global__ void __launch_bounds__(KT::kThreads, 1) selective_scan_fwd_kernel(const ScanParams p) {
  using acc_t = typename KT::acc_t;
  using in_t = typename KT::in_t;
  constexpr int K = KT::kItems, T = KT::kChunk, row = KT::kRow;
  DMM_DYNAMIC_SMEM(acc_t, sm);
  const ScanSmem lay(p.dstate, KT::kChans, T, row, /*backward=*/false, p.dt_rank);
  const ScanTile tile(p, KT::kChans);
  const int tid = threadIdx.x, c = tid / kScanLanes, lane = tid % kScanLanes, t0 = lane * K;
  const int N = p.dstate;
  const bool active = c < tile.n_chans;
  const int e = tile.c_first + c;
  const bool with_z = p.z.p != nullptr;
  const acc_t Dv = active && p.D != nullptr ? acc_t(ptr_cast<const acc_t>(p.D)[e]) : acc_t(0);
  const acc_t bias =
      active && p.delta_bias != nullptr ? acc_t(ptr_cast<const acc_t>(p.delta_bias)[e]) : acc_t(0);

  stage_constants(p, tile, lay, sm, KT::kChans, false);
  if (p.w_dt != nullptr)
    stage_tile<in_t, acc_t>(ptr_cast<const in_t>(p.w_dt) + int64_t(tile.c_first) * p.dt_rank,
                            p.dt_rank, 1, KT::kChans, p.dt_rank, tile.n_chans, p.dt_rank,
                            sm + lay.wdt, p.dt_rank);

  for (int k = 0; k < p.n_chunks; ++k) {
    const int l0 = k * T, len = min(T, p.len - l0);
    __syncthreads();  // the previous chunk's tiles are consumed
    stage_chunk<KT>(p, tile, lay, sm, l0, len, true, with_z, false);
    __syncthreads();
    if (p.w_dt != nullptr) {
      dt_proj_tile<KT>(p, tile, lay, sm, len);
      __syncthreads();
    }
    acc_t dt[K], du[K], y[K];
    const acc_t dt_sum = lane_deltas<KT>(p, sm, lay, c, t0, len, bias, dt, du);
#pragma unroll
    for (int i = 0; i < K; ++i) y[i] = acc_t(0);

    for (int n = 0; n < N; ++n) {
      const acc_t a2 = sm[lay.A2 + c * N + n];
      const acc_t carry = sm[lay.carry + c * N + n];
      acc_t Bv[K], a[K], b[K], P, S;
      load_items<K>(sm + lay.B + n * row + t0, Bv);
      lane_compose<K>(dt, du, Bv, a2, dt_sum, a, b, P, S);
      lane_scan(P, S, lane);
      const acc_t total = __shfl_sync(0xffffffffu, P * carry + S, kScanLanes - 1, kScanLanes);
      acc_t Pe = __shfl_up_sync(0xffffffffu, P, 1, kScanLanes);
      acc_t Se = __shfl_up_sync(0xffffffffu, S, 1, kScanLanes);
      acc_t s = lane == 0 ? carry : Pe * carry + Se;
      acc_t Cv[K];
      load_items<K>(sm + lay.C + n * row + t0, Cv);
#pragma unroll
      for (int i = 0; i < K; ++i) {
        s = a[i] * s + b[i];
        y[i] += s * Cv[i];
      }
      __syncwarp();  // every lane has read the carry
      if (lane == 0) sm[lay.carry + c * N + n] = total;
    }
    // out = (y + D u) * SiLU(z), written over the u tile, then stored coalesced.
    acc_t u[K], z[K];
    load_items<K>(sm + lay.u + c * row + t0, u);
    if (with_z) load_items<K>(sm + lay.z + c * row + t0, z);
#pragma unroll
    for (int i = 0; i < K; ++i) {
      acc_t v = y[i] + Dv * u[i];
      if (with_z) v *= z[i] * sigmoid_(z[i]);
      sm[lay.u + c * row + t0 + i] = v;
    }
    __syncthreads();
    const int64_t off = int64_t(tile.b) * p.out.sb + int64_t(tile.c_first) * p.out.se + int64_t(l0) * p.out.sl;
    store_tile<in_t, acc_t>(ptr_cast<in_t>(p.out.p) + off, p.out.se, p.out.sl, tile.n_chans, len,
                            sm + lay.u, row);
  }
  if (p.last_state != nullptr) {
    __syncthreads();
    for (int i = tid; i < tile.n_chans * N; i += KT::kThreads) {
      const int cc = i / N, n = i - cc * N;
      ptr_cast<acc_t>(p.last_state)[(int64_t(tile.b) * p.dim + tile.c_first + cc) * N + n] =
          acc_t(sm[lay.carry + i]);
    }
  }
}

// ---- backward -------------------------------------------------------------------------------------
template <typename KT>
__global__ void __launch_bounds__(KT::kThreads, 1) selective_scan_bwd_kernel(const ScanParams p) {
  using acc_t = typename KT::acc_t;
  using in_t = typename KT::in_t;
  constexpr int K = KT::kItems, T = KT::kChunk, row = KT::kRow;
  DMM_DYNAMIC_SMEM(acc_t, sm);
  const ScanSmem lay(p.dstate, KT::kChans, T, row, /*backward=*/true, p.dt_rank);
  const ScanTile tile(p, KT::kChans);
  const int tid = threadIdx.x, c = tid / kScanLanes, lane = tid % kScanLanes, t0 = lane * K;
  const int N = p.dstate;
  const bool active = c < tile.n_chans;
  const int e = tile.c_first + c;
  const bool with_z = p.z.p != nullptr;
  const acc_t Dv = active && p.D != nullptr ? acc_t(ptr_cast<const acc_t>(p.D)[e]) : acc_t(0);
  const acc_t bias =
      active && p.delta_bias != nullptr ? acc_t(ptr_cast<const acc_t>(p.delta_bias)[e]) : acc_t(0);
  const gptr<acc_t> chunk_states = ptr_cast<acc_t>(p.chunk_states);
  const int64_t st_base = (int64_t(tile.b) * p.dim + e) * p.n_chunks * N;  // used when active

  stage_constants(p, tile, lay, sm, KT::kChans, true);
  if (p.w_dt != nullptr)
    stage_tile<in_t, acc_t>(ptr_cast<const in_t>(p.w_dt) + int64_t(tile.c_first) * p.dt_rank,
                            p.dt_rank, 1, KT::kChans, p.dt_rank, tile.n_chans, p.dt_rank,
                            sm + lay.wdt, p.dt_rank);

  // Phase 1: the state entering each chunk 1..n_chunks-1 (a forward pass without y).
  for (int k = 0; k + 1 < p.n_chunks; ++k) {
    const int l0 = k * T, len = min(T, p.len - l0);
    __syncthreads();
    stage_chunk<KT>(p, tile, lay, sm, l0, len, false, false, false);
    __syncthreads();
    if (p.w_dt != nullptr) {
      dt_proj_tile<KT>(p, tile, lay, sm, len);
      __syncthreads();
    }
    acc_t dt[K], du[K];
    const acc_t dt_sum = lane_deltas<KT>(p, sm, lay, c, t0, len, bias, dt, du);
    for (int n = 0; n < N; ++n) {
      const acc_t a2 = sm[lay.A2 + c * N + n];
      const acc_t carry = sm[lay.carry + c * N + n];
      acc_t Bv[K], a[K], b[K], P, S;
      load_items<K>(sm + lay.B + n * row + t0, Bv);
      lane_compose<K>(dt, du, Bv, a2, dt_sum, a, b, P, S);
      lane_scan(P, S, lane);
      const acc_t total = __shfl_sync(0xffffffffu, P * carry + S, kScanLanes - 1, kScanLanes);
      __syncwarp();
      if (lane == 0) {
        sm[lay.carry + c * N + n] = total;
        if (active) chunk_states[st_base + int64_t(k + 1) * N + n] = total;
      }
    }
  }

  // Phase 2: chunks in reverse order.
  acc_t dD_sum = acc_t(0), dbias_sum = acc_t(0);
  const int64_t part = p.deterministic ? int64_t(tile.cblock) * p.dBC_part : 0;
  const gptr<acc_t> dB = ptr_cast<acc_t>(p.dB.p) + part + int64_t(tile.b) * p.dB.sb + int64_t(tile.g) * p.dB.sg;
  const gptr<acc_t> dC = ptr_cast<acc_t>(p.dC.p) + part + int64_t(tile.b) * p.dC.sb + int64_t(tile.g) * p.dC.sg;
  for (int k = p.n_chunks - 1; k >= 0; --k) {
    const int l0 = k * T, len = min(T, p.len - l0);
    __syncthreads();
    stage_chunk<KT>(p, tile, lay, sm, l0, len, true, with_z, true);
    __syncthreads();
    if (p.w_dt != nullptr) {
      dt_proj_tile<KT>(p, tile, lay, sm, len);
      __syncthreads();
    }
    acc_t dt[K], du[K], g[K], q[K], r[K], y[K];
    const acc_t dt_sum = lane_deltas<KT>(p, sm, lay, c, t0, len, bias, dt, du);
    {
      acc_t dout[K], z[K];
      load_items<K>(sm + lay.dout + c * row + t0, dout);
      if (with_z) load_items<K>(sm + lay.z + c * row + t0, z);
#pragma unroll
      for (int i = 0; i < K; ++i) {
        g[i] = with_z ? dout[i] * z[i] * sigmoid_(z[i]) : dout[i];  // dL/dy
        q[i] = r[i] = y[i] = acc_t(0);
      }
    }
    for (int n = 0; n < N; ++n) {
      const acc_t a2 = sm[lay.A2 + c * N + n];
      const acc_t A = a2 * acc_t(0.6931471805599453);
      const acc_t carry = k > 0 && active ? chunk_states[st_base + int64_t(k) * N + n] : acc_t(0);
      const acc_t rcarry = sm[lay.rcarry + c * N + n];
      acc_t Bv[K], Cv[K], a[K], s[K], P, S;
      load_items<K>(sm + lay.B + n * row + t0, Bv);
      load_items<K>(sm + lay.C + n * row + t0, Cv);
      // forward inside the chunk: s_i (over b_i) and y
      lane_compose<K>(dt, du, Bv, a2, dt_sum, a, s, P, S);
      const acc_t P_lane = P;
      lane_scan(P, S, lane);
      const acc_t Pe = __shfl_up_sync(0xffffffffu, P, 1, kScanLanes);
      const acc_t Se = __shfl_up_sync(0xffffffffu, S, 1, kScanLanes);
      const acc_t s0 = lane == 0 ? carry : Pe * carry + Se;  // state before this lane's first item
      const sptr<acc_t> red = sm + lay.red;
      {
        acc_t st = s0;
#pragma unroll
        for (int i = 0; i < K; ++i) {
          st = a[i] * st + s[i];
          s[i] = st;
          y[i] += st * Cv[i];
          red[KT::kChans * T + c * T + t0 + i] = g[i] * st;  // this channel's dC
        }
      }
      // adjoint: h_i = g_i C_i + a_{i+1} h_{i+1}; lane map hhat -> P hhat + H, hhat = a h of the
      // item after the lane's last one
      acc_t H = acc_t(0);
#pragma unroll
      for (int i = K - 1; i >= 0; --i) H = a[i] * (g[i] * Cv[i] + H);
      acc_t Pr = P_lane;
      lane_scan_reverse(Pr, H, lane);
      const acc_t Pn = __shfl_down_sync(0xffffffffu, Pr, 1, kScanLanes);
      const acc_t Hn = __shfl_down_sync(0xffffffffu, H, 1, kScanLanes);
      const acc_t rtotal = __shfl_sync(0xffffffffu, Pr * rcarry + H, 0, kScanLanes);
      acc_t h = lane == kScanLanes - 1 ? rcarry : Pn * rcarry + Hn;
      acc_t dA_lane = acc_t(0);
#pragma unroll
      for (int i = K - 1; i >= 0; --i) {
        h = g[i] * Cv[i] + h;
        red[c * T + t0 + i] = h * du[i];  // this channel's dB
        q[i] += h * Bv[i];
        const acc_t ha = h * a[i];
        const acc_t w = ha * (i > 0 ? s[i - 1] : s0);  // h_i a_i s_{i-1}
        r[i] += A * w;
        dA_lane += dt[i] * w;
        h = ha;
      }
      dA_lane = lane_sum(dA_lane);
      __syncwarp();  // every lane has read rcarry
      if (lane == 0) {
        sm[lay.rcarry + c * N + n] = rtotal;
        sm[lay.dA + c * N + n] += dA_lane;
      }
      __syncthreads();  // the channels' dB / dC slots of state n are written
      // Sum the slots over channels in a fixed order (a thread per (dB|dC, t)), then let the next
      // state overwrite them.
      for (int j = tid; j < 2 * T; j += KT::kThreads) {
        const int which = j / T, t = j - which * T;
        if (t >= len) continue;
        const sptr<const acc_t> slot = red + which * KT::kChans * T + t;
        acc_t sum = acc_t(0);
        for (int cc = 0; cc < KT::kChans; ++cc) sum += slot[cc * T];
        if (which == 0) atomicAdd(dB + int64_t(n) * p.dB.sn + int64_t(l0 + t) * p.dB.sl, sum);
        else atomicAdd(dC + int64_t(n) * p.dC.sn + int64_t(l0 + t) * p.dC.sl, sum);
      }
      __syncthreads();  // the slots are summed
    }
    // du = dt q + D g;  ddelta = (u q + r) softplus'(.);  dz; per-channel dD / ddelta_bias sums.
    {
      acc_t u[K], raw[K], dout[K], z[K];
      load_items<K>(sm + lay.u + c * row + t0, u);
      load_items<K>(sm + lay.dt + c * row + t0, raw);
      load_items<K>(sm + lay.dout + c * row + t0, dout);
      if (with_z) load_items<K>(sm + lay.z + c * row + t0, z);
      acc_t dD_lane = acc_t(0), dbias_lane = acc_t(0);
#pragma unroll
      for (int i = 0; i < K; ++i) {
        const bool in_range = t0 + i < len;
        acc_t dd = u[i] * q[i] + r[i];
        if (p.delta_softplus) dd *= softplus_grad_(raw[i] + bias);
        dd = in_range ? dd : acc_t(0);
        sm[lay.u + c * row + t0 + i] = dt[i] * q[i] + Dv * g[i];
        sm[lay.dt + c * row + t0 + i] = dd;
        if (with_z) {
          const acc_t sg = sigmoid_(z[i]);
          sm[lay.z + c * row + t0 + i] =
              dout[i] * (y[i] + Dv * u[i]) * sg * (acc_t(1) + z[i] * (acc_t(1) - sg));
        }
        dD_lane += g[i] * u[i];
        dbias_lane += dd;
      }
      dD_sum += lane_sum(dD_lane);
      dbias_sum += lane_sum(dbias_lane);
    }
    __syncthreads();
    auto store3 = [&](const MutView3& v, int64_t src) {
      const int64_t off = int64_t(tile.b) * v.sb + int64_t(tile.c_first) * v.se + int64_t(l0) * v.sl;
      store_tile<in_t, acc_t>(ptr_cast<in_t>(v.p) + off, v.se, v.sl, tile.n_chans, len, sm + src, row);
    };
    store3(p.du, lay.u);
    if (p.ddelta.p != nullptr) store3(p.ddelta, lay.dt);
    if (with_z) store3(p.dz, lay.z);
    if (p.w_dt != nullptr) dt_proj_grads<KT>(p, tile, lay, sm, l0, len);
  }

  // Sums over the launch: dA per (e, n), dD / ddelta_bias per e (deterministic: this batch row's
  // own slice, each element written by one CTA).
  __syncthreads();
  const int64_t row_off = p.deterministic ? int64_t(tile.b) * p.dim : 0;
  const gptr<acc_t> dA = ptr_cast<acc_t>(p.dA) + row_off * N;
  for (int i = tid; i < tile.n_chans * N; i += KT::kThreads) {
    acc_t v = sm[lay.dA + i];
    if (p.a_is_log) v *= sm[lay.A2 + i] * acc_t(0.6931471805599453);  // dA_log = dA * A
    atomicAdd(dA + int64_t(tile.c_first) * N + i, v);
  }
  if (p.w_dt != nullptr) {
    const gptr<acc_t> dw = ptr_cast<acc_t>(p.dw_dt) + (row_off + tile.c_first) * p.dt_rank;
    for (int i = tid; i < tile.n_chans * p.dt_rank; i += KT::kThreads) atomicAdd(dw + i, sm[lay.dwdt + i]);
  }
  if (active && lane == 0) {
    if (p.D != nullptr) atomicAdd(ptr_cast<acc_t>(p.dD) + row_off + e, dD_sum);
    if (p.delta_bias != nullptr) atomicAdd(ptr_cast<acc_t>(p.ddelta_bias) + row_off + e, dbias_sum);
  }
}

}  // namespace cuda
}  // namespace dmm
