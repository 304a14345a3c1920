// metamamba_step's kernels: one token through the block as a few stages, each spreading the rows of
// its weight matrix over CTAs (grid (ceil(rows / rows per CTA), B)), so that batch 1 keeps many SMs
// busy; the stages are kernel launches in a row, and the kernel boundary is the only barrier
// between CTAs. Launched by csrc/cuda/block.cu (launch_step):
//   step_mix1_kernel   (line mixers) LN_1 + mixer_1 rows + residual        -> ws.u, ws.h1
//   step_in_proj_kernel [conv mixers: LN_1 + mixer_1 + residual] + LN_2 + in_proj rows -> ws.xz
//   step_mix2_kernel   (double mixers) mixer_2 rows + SiLU                 -> ws.xs
//   step_x_proj_kernel x_proj rows; CTA 0 of each row shifts the caches    -> ws.xd
//   step_scan_kernel   dt_proj + softplus + one scan step + D skip + SiLU(z) gate, per channel
//                                                                          -> ws.ys, ssm_state
//   step_out_kernel    out_proj rows (+ h1)                                -> out
// Each stage recomputes what it needs of a row cheaply (LayerNorms, SiLU) instead of adding a stage.
// The caches are shifted only after every stage that reads them has finished (x_proj stage), so no
// CTA reads a cache row another CTA has overwritten. The workspace `ws` (B, StepWs::row) holds the
// intermediates in the activation dtype: every one is rounded to it, as the composite stores it.
#pragma once

#include "cuda/block_device.cuh"

namespace dmm {
namespace cuda {
namespace block {

constexpr int kStepThreads = 256;            // 8 warps
constexpr int kStepRows = 2 * (kStepThreads / 32);  // weight rows per CTA: two per warp

// Offsets of one batch row's workspace, in elements of the activation dtype.
struct StepWs {
  int64_t u = 0, h1 = 0, xz = 0, xs = 0, xd = 0, ys = 0, row = 0;
  StepWs() = default;
  __host__ __device__ StepWs(int D, int E, int P) {
    u = 0;                     // (D) LN_1(h_t)
    h1 = u + D;                // (D)
    xz = h1 + D;               // (2E) in_proj output
    xs = xz + 2 * int64_t(E);  // (E) SiLU(mixer_2(x)) (double mixers)
    xd = xs + E;               // (P) x_proj output [dt_low | B | C]
    ys = xd + P;               // (E) gated scan output
    row = ys + E;
  }
};

struct StepArgs {
  InPtr h;                          // (B, D)
  OutPtr out;                       // (B, D)
  OutPtr ws;                        // (B, StepWs::row) in the activation dtype out.dt
  OutPtr cache1;                    // (B, W1-1, D), updated in place
  OutPtr cache2;                    // (B, W2-1, E) or absent
  OutPtr state;                     // (B, E, N) float32 (float64 for float64 h)
  InPtr n1w, n1b, m1w, m1b, n2w, n2b, w_in, m2w, m2b, w_x, w_dt, dt_bias, A, Dskip, w_out;
  int D, E, N, R, W1, W2, m;        // m: modality of this token
  bool line;                        // mixer kind "line" (else "conv")
  bool is_double;                   // mixer_2 over the x half
  bool residual;                    // add h1 to the output
  double eps;
  StepWs lay;                       // the workspace row's layout

  // Element i of the workspace vector at offset `off` (a StepWs field) of batch row b.
  template <typename acc_t>
  __device__ acc_t ws_load(int64_t b, int64_t off, int64_t i) const {
    return load<acc_t>(in_view(ws), b * lay.row + off + i);
  }
  template <typename acc_t>
  __device__ void ws_store(int64_t b, int64_t off, int64_t i, acc_t v) const {
    store(ws, b * lay.row + off + i, v);
  }
};

// Shared memory of each stage, in acc_t elements (the host sizes its launches with these).
struct StepSmem {
  static int64_t mix1(int D, int W1) { return int64_t(W1 + 1) * D + 32; }       // h, window, red
  static int64_t in_proj(int D, int W1, bool line) {                           // h, window, h1, v
    return (line ? 0 : int64_t(W1 + 1) * D) + 2 * int64_t(D) + 32;
  }
  static int64_t mix2(int E, int W2, bool line) { return line ? int64_t(W2) * E : 0; }
  static int64_t x_proj(int E) { return E; }
  static int64_t scan(int P) { return P; }
  static int64_t out(int E) { return E; }
};

// LN_1(h_t) as the last row of the window win (W1, D), the cached rows before it: hrow (D) and win
// in shared memory. Ends with a barrier.
template <typename acc_t>
__device__ __forceinline__ void step_window1(const StepArgs& a, int64_t b, sptr<acc_t> hrow,
                                             sptr<acc_t> win, sptr<acc_t> red) {
  const DType act = a.out.dt;
  const int D = a.D, W1 = a.W1;
  const InPtr cache1 = in_view(a.cache1);
  for (int d = threadIdx.x; d < D; d += blockDim.x) hrow[d] = load<acc_t>(a.h, b * D + d);
  for (int i = threadIdx.x; i < (W1 - 1) * D; i += blockDim.x)
    win[i] = load<acc_t>(cache1, b * (W1 - 1) * D + i);
  __syncthreads();
  block_layernorm(hrow, win + int64_t(W1 - 1) * D, D, a.n1w, a.n1b, static_cast<acc_t>(a.eps), act,
                  red);
  __syncthreads();
}

// The window mixer (modality m, width C) over win (W, C) for output channel c: conv w_m (W, C)
// depthwise, or line row c of M_m (C, W*C) (one warp: call from every lane, valid on all lanes).
template <typename acc_t>
__device__ __forceinline__ acc_t conv_window(const InPtr& w, const InPtr& bias, int m, int W, int C,
                                             int c, std::type_identity_t<sptr<const acc_t>> win,
                                             DType act) {
  acc_t s = bias.p != nullptr ? load_w<acc_t>(bias, int64_t(m) * C + c, act) : acc_t(0);
  for (int k = 0; k < W; ++k) s += load_w<acc_t>(w, (int64_t(m) * W + k) * C + c, act) * win[k * C + c];
  return round_as(act, s);
}

// ---- stage 1 (line mixers): h1 = h + round(M_m @ window) for this CTA's rows -------------------
template <typename acc_t>
__global__ void step_mix1_kernel(StepArgs a) {
  const sptr<acc_t> hrow = dynamic_smem<acc_t>();     // (D)
  const sptr<acc_t> win = hrow + a.D;                 // (W1, D)
  const sptr<acc_t> red = win + int64_t(a.W1) * a.D;  // (32)
  const DType act = a.out.dt;
  const int D = a.D, W1 = a.W1;
  const int64_t b = blockIdx.y;
  step_window1(a, b, hrow, win, red);
  if (blockIdx.x == 0)
    for (int d = threadIdx.x; d < D; d += blockDim.x)
      a.ws_store(b, a.lay.u, d, acc_t(win[int64_t(W1 - 1) * D + d]));
  const int r0 = blockIdx.x * kStepRows;
  warp_matvec<acc_t>(a.m1w, int64_t(a.m) * D * W1 * D, r0, min(r0 + kStepRows, D), W1 * D, win,
                     act, [&](int r, acc_t s) {
                       if (a.m1b.p != nullptr) s += load_w<acc_t>(a.m1b, int64_t(a.m) * D + r, act);
                       a.ws_store(b, a.lay.h1, r,
                             round_as(act, hrow[r] + round_as(act, s)));
                     });
}

// ---- stage 2: [conv: h1 = h + conv_mixer(window)], v = LN_2(h1), xz = round(W_in v) rows -------
template <typename acc_t>
__global__ void step_in_proj_kernel(StepArgs a) {
  const DType act = a.out.dt;
  const int D = a.D, E = a.E, W1 = a.W1;
  const StepWs& ws = a.lay;
  const int64_t b = blockIdx.y;
  const sptr<acc_t> sm = dynamic_smem<acc_t>();
  const sptr<acc_t> h1 = sm, v = sm + D, red = sm + 2 * D;  // (D), (D), (32)
  if (!a.line) {  // recompute LN_1 and the conv mixer of this row: a few D-vectors
    const sptr<acc_t> hrow = red + 32;  // (D)
    const sptr<acc_t> win = hrow + D;   // (W1, D)
    step_window1(a, b, hrow, win, red);
    for (int d = threadIdx.x; d < D; d += blockDim.x)
      h1[d] = round_as(act, hrow[d] + conv_window<acc_t>(a.m1w, a.m1b, a.m, W1, D, d, win, act));
    if (blockIdx.x == 0)
      for (int d = threadIdx.x; d < D; d += blockDim.x) {
        a.ws_store(b, ws.u, d, acc_t(win[int64_t(W1 - 1) * D + d]));
        a.ws_store(b, ws.h1, d, acc_t(h1[d]));
      }
  } else {
    for (int d = threadIdx.x; d < D; d += blockDim.x) h1[d] = a.template ws_load<acc_t>(b, ws.h1, d);
  }
  __syncthreads();
  block_layernorm(h1, v, D, a.n2w, a.n2b, static_cast<acc_t>(a.eps), act, red);
  __syncthreads();
  const int r0 = blockIdx.x * kStepRows;
  warp_matvec<acc_t>(a.w_in, 0, r0, min(r0 + kStepRows, 2 * E), D, v, act, [&](int r, acc_t s) {
    a.ws_store(b, ws.xz, r, round_as(act, s));
  });
}

// ---- stage 3 (double mixers): xs = round(SiLU(mixer_2(window))), window = [cache2 | x] ---------
template <typename acc_t>
__global__ void step_mix2_kernel(StepArgs a) {
  const sptr<acc_t> win = dynamic_smem<acc_t>();  // (W2, E), line mixers only
  const DType act = a.out.dt;
  const int E = a.E, W2 = a.W2;
  const StepWs& ws = a.lay;
  const int64_t b = blockIdx.y;
  const InPtr cache2 = in_view(a.cache2);
  const int r0 = blockIdx.x * kStepRows, r1 = min(r0 + kStepRows, E);
  auto emit = [&](int e, acc_t mixed) {
    a.ws_store(b, ws.xs, e, round_as(act, silu_(round_as(act, mixed))));
  };
  if (a.line) {
    for (int i = threadIdx.x; i < W2 * E; i += blockDim.x)
      win[i] = i < (W2 - 1) * E ? load<acc_t>(cache2, b * (W2 - 1) * E + i)
                                : a.template ws_load<acc_t>(b, ws.xz, i - (W2 - 1) * E);
    __syncthreads();
    warp_matvec<acc_t>(a.m2w, int64_t(a.m) * E * W2 * E, r0, r1, W2 * E, win, act,
                       [&](int e, acc_t s) {
                         if (a.m2b.p != nullptr) s += load_w<acc_t>(a.m2b, int64_t(a.m) * E + e, act);
                         emit(e, s);
                       });
  } else {  // depthwise: each channel reads its own W2 inputs
    for (int e = r0 + threadIdx.x; e < r1; e += blockDim.x) {
      acc_t s = a.m2b.p != nullptr ? load_w<acc_t>(a.m2b, int64_t(a.m) * E + e, act) : acc_t(0);
      for (int k = 0; k < W2; ++k) {
        const acc_t xk = k < W2 - 1 ? load<acc_t>(cache2, (b * (W2 - 1) + k) * E + e)
                                    : a.template ws_load<acc_t>(b, ws.xz, e);
        s += load_w<acc_t>(a.m2w, (int64_t(a.m) * W2 + k) * E + e, act) * xk;
      }
      emit(e, s);
    }
  }
}

// xs[e] as the scan reads it: the mixer_2 stage's output, or round(SiLU(x)) of in_proj's x half.
template <typename acc_t>
__device__ __forceinline__ acc_t step_xs(const StepArgs& a, const StepWs& ws, int64_t b, int e) {
  if (a.is_double) return a.template ws_load<acc_t>(b, ws.xs, e);
  return round_as(a.out.dt, silu_(a.template ws_load<acc_t>(b, ws.xz, e)));
}

// A cache of `rows` rows of width C (oldest first, from element `base`) moves up by one row and
// takes workspace vector `newest` of batch row b as its last row. Row by row with a barrier
// between rows, so no thread overwrites a row another thread has yet to read.
template <typename acc_t>
__device__ __forceinline__ void shift_cache(const InPtr& in, const OutPtr& out, int64_t base,
                                            int rows, int C, const StepArgs& a, int64_t b,
                                            int64_t newest) {
  for (int k = 0; k < rows; ++k) {
    for (int c = threadIdx.x; c < C; c += blockDim.x)
      store(out, base + int64_t(k) * C + c,
            k + 1 < rows ? load<acc_t>(in, base + int64_t(k + 1) * C + c)
                         : a.template ws_load<acc_t>(b, newest, c));
    __syncthreads();
  }
}

// ---- stage 4: xd = round(W_x xs) rows; CTA 0 of the row shifts the caches ----------------------
template <typename acc_t>
__global__ void step_x_proj_kernel(StepArgs a) {
  const sptr<acc_t> xs = dynamic_smem<acc_t>();  // (E)
  const DType act = a.out.dt;
  const int D = a.D, E = a.E, P = a.R + 2 * a.N;
  const StepWs& ws = a.lay;
  const int64_t b = blockIdx.y;
  for (int e = threadIdx.x; e < E; e += blockDim.x) xs[e] = step_xs<acc_t>(a, ws, b, e);
  if (blockIdx.x == 0) {  // every reader of the caches (the stages before) has finished
    shift_cache<acc_t>(in_view(a.cache1), a.cache1,
                       b * (a.W1 - 1) * D, a.W1 - 1, D, a, b, ws.u);
    if (a.is_double)
      shift_cache<acc_t>(in_view(a.cache2), a.cache2,
                         b * (a.W2 - 1) * E, a.W2 - 1, E, a, b, ws.xz);
  }
  __syncthreads();
  const int r0 = blockIdx.x * kStepRows;
  warp_matvec<acc_t>(a.w_x, 0, r0, min(r0 + kStepRows, P), E, xs, act, [&](int r, acc_t s) {
    a.ws_store(b, ws.xd, r, round_as(act, s));
  });
}

// ---- stage 5: per channel e, kGroup lanes share its N states (n = g + kGroup j) ------------------
//   delta = softplus(round(W_dt[e] . dt_low) + dt_bias[e]);  s = exp(delta A) s + delta B x
//   ys = round((<s, C> + D x) SiLU(z))
template <typename acc_t, int kGroup>
__global__ void step_scan_kernel(StepArgs a) {
  const sptr<acc_t> xd = dynamic_smem<acc_t>();  // (P) [dt_low | B | C]
  const DType act = a.out.dt;
  const int E = a.E, N = a.N, R = a.R, P = R + 2 * N;
  const StepWs& ws = a.lay;
  const int64_t b = blockIdx.y;
  for (int i = threadIdx.x; i < P; i += blockDim.x) xd[i] = a.template ws_load<acc_t>(b, ws.xd, i);
  __syncthreads();
  const int g = threadIdx.x % kGroup;
  const int e = blockIdx.x * (blockDim.x / kGroup) + threadIdx.x / kGroup;
  const bool valid = e < E;  // invalid lanes still join the group's shuffles
  acc_t dt = 0;
  if (valid)
    for (int r = g; r < R; r += kGroup) dt += load_w<acc_t>(a.w_dt, int64_t(e) * R + r, act) * xd[r];
  dt = round_as(act, group_sum(dt, kGroup));
  const acc_t delta = valid ? softplus_(dt + load<acc_t>(a.dt_bias, e)) : acc_t(0);
  const acc_t x = valid ? step_xs<acc_t>(a, ws, b, e) : acc_t(0);
  const InPtr state_in = in_view(a.state);
  const OutPtr state_out = a.state;
  acc_t part = 0;
  if (valid)
    for (int n = g; n < N; n += kGroup) {
      const int64_t i = (b * E + e) * N + n;
      const acc_t s = exp_(delta * load<acc_t>(a.A, int64_t(e) * N + n)) * load<acc_t>(state_in, i) +
                      delta * xd[R + n] * x;
      store(state_out, i, s);
      part += s * xd[R + N + n];
    }
  const acc_t y = group_sum(part, kGroup);
  if (valid && g == 0) {
    const acc_t z = a.template ws_load<acc_t>(b, ws.xz, E + e);
    a.ws_store(b, ws.ys, e,
          round_as(act, (y + load<acc_t>(a.Dskip, e) * x) * silu_(z)));
  }
}

// ---- stage 6: out = round(W_out ys) rows (+ h1) ------------------------------------------------
template <typename acc_t>
__global__ void step_out_kernel(StepArgs a) {
  const sptr<acc_t> ys = dynamic_smem<acc_t>();  // (E)
  const DType act = a.out.dt;
  const int D = a.D, E = a.E;
  const StepWs& ws = a.lay;
  const int64_t b = blockIdx.y;
  for (int e = threadIdx.x; e < E; e += blockDim.x) ys[e] = a.template ws_load<acc_t>(b, ws.ys, e);
  __syncthreads();
  const int r0 = blockIdx.x * kStepRows;
  warp_matvec<acc_t>(a.w_out, 0, r0, min(r0 + kStepRows, D), E, ys, act, [&](int d, acc_t s) {
    acc_t o = round_as(act, s);
    if (a.residual) o += a.template ws_load<acc_t>(b, ws.h1, d);
    store(a.out, b * D + d, o);
  });
}

}  // namespace block
}  // namespace cuda
}  // namespace dmm
