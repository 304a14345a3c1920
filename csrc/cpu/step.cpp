// Fused CPU kernels of metamamba_step (one block) and metamamba_steps (a stack of blocks): the
// whole recurrent step of a token in one pass over each row, with no ATen call in between.
//
// Per batch row and layer (docs/ARCHITECTURE.md, "The MetaMamba block"), m = position % M:
//   u = LN_1(h); h1 = h + mixer_1,m([cache_1; u]); v = LN_2(h1); [x | z] = W_in v
//   xm = mixer_2,m([cache_2; x]) (double mixers) else x; xs = SiLU(xm)
//   [dt_low | B | C] = W_x xs; delta = softplus(W_dt dt_low + dt_bias)
//   s = exp(delta A) * s + delta xs B;  y = (<s, C> + D xs) * SiLU(z);  out = W_out y (+ h1)
// The caches shift in place. Float32 and float64 (activations, caches and state all of one
// dtype) run here; other dtypes, a state dtype other than h_t's, or non-contiguous caches go to
// the composite (csrc/block/composite.cpp), which handles them. The only allocation is the
// output (scratch is thread-local and reused; parameters in another dtype or non-contiguous are
// converted once per call). Rows are independent: a large batch splits over threads, batch 1
// stays on the calling thread.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/SmallVector.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "block/composite.h"
#include "block/steps.h"
#include "vec_math.h"

// The vector helpers below are always inlined: no vector argument crosses a call boundary, so the
// ABI note GCC gives for them in the baseline clone does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace dmm {
namespace {

// ---- row kernels (inlined into the clones of layer_row) ---------------------------------------
// 32-byte vectors of T (GCC / Clang vector extensions): one AVX register in the x86-64-v3 clone,
// two SSE registers in the baseline one. Written out because GCC's auto-vectoriser turned the
// four-row matrix-vector loop into shuffles and stack spills.
template <typename T>
struct Simd {
  static constexpr int lanes = 32 / sizeof(T);
  typedef T v __attribute__((vector_size(32)));
};
template <typename T>
DMM_ALWAYS_INLINE typename Simd<T>::v vload(const T* p) {
  typename Simd<T>::v v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <typename T>
DMM_ALWAYS_INLINE void vstore(T* p, typename Simd<T>::v v) {
  std::memcpy(p, &v, sizeof v);
}
// The lanes' sum in a fixed order (deterministic).
template <typename T>
DMM_ALWAYS_INLINE T vsum(typename Simd<T>::v v) {
  T s = v[0];
  for (int k = 1; k < Simd<T>::lanes; ++k) s += v[k];
  return s;
}
// <a, b> over n.
template <typename T>
DMM_ALWAYS_INLINE T vdot(const T* __restrict__ a, const T* __restrict__ b, int64_t n) {
  using V = typename Simd<T>::v;
  constexpr int K = Simd<T>::lanes;
  V acc = {};
  int64_t i = 0;
  for (; i + K <= n; i += K) acc += vload(a + i) * vload(b + i);
  T s = vsum<T>(acc);
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// y (rows) = W (rows, cols) x (cols), W row-major: four rows at a time share each load of x.
template <typename T>
DMM_ALWAYS_INLINE void matvec(const T* __restrict__ W, int64_t rows, int64_t cols,
                              const T* __restrict__ x, T* __restrict__ y) {
  using V = typename Simd<T>::v;
  constexpr int K = Simd<T>::lanes;
  const int64_t cv = cols - cols % K;
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) {
    const T* w0 = W + r * cols;
    const T* w1 = w0 + cols;
    const T* w2 = w1 + cols;
    const T* w3 = w2 + cols;
    V a0 = {}, a1 = {}, a2 = {}, a3 = {};
    for (int64_t i = 0; i < cv; i += K) {
      const V xv = vload(x + i);
      a0 += vload(w0 + i) * xv;
      a1 += vload(w1 + i) * xv;
      a2 += vload(w2 + i) * xv;
      a3 += vload(w3 + i) * xv;
    }
    T t0 = vsum<T>(a0), t1 = vsum<T>(a1), t2 = vsum<T>(a2), t3 = vsum<T>(a3);
    for (int64_t i = cv; i < cols; ++i) {
      t0 += w0[i] * x[i];
      t1 += w1[i] * x[i];
      t2 += w2[i] * x[i];
      t3 += w3[i] * x[i];
    }
    y[r] = t0;
    y[r + 1] = t1;
    y[r + 2] = t2;
    y[r + 3] = t3;
  }
  for (; r < rows; ++r) y[r] = vdot(W + r * cols, x, cols);
}

// y = LayerNorm(x) over n (biased variance, as torch.nn.functional.layer_norm).
template <typename T>
DMM_ALWAYS_INLINE void layer_norm(const T* __restrict__ x, int64_t n, const T* __restrict__ w,
                                  const T* __restrict__ b, T eps, T* __restrict__ y) {
  using V = typename Simd<T>::v;
  constexpr int K = Simd<T>::lanes;
  V part = {};
  int64_t i = 0;
  for (; i + K <= n; i += K) part += vload(x + i);
  T sum = vsum<T>(part);
  for (; i < n; ++i) sum += x[i];
  const T mean = sum / T(n);
  for (i = 0; i < n; ++i) y[i] = x[i] - mean;
  const T rstd = T(1) / std::sqrt(vdot(y, y, n) / T(n) + eps);
  for (i = 0; i < n; ++i) y[i] = y[i] * rstd * w[i] + b[i];
}

// One token through a window mixer of width C: win (W*C scratch) = [cache (W-1, C); cur], y (C) =
// conv: sum_k w[k] * win[k] (w (W, C)); line: w (C, W*C) @ win; + bias; the cache shifts by one.
template <typename T>
DMM_ALWAYS_INLINE void mix(T* __restrict__ cache, const T* __restrict__ cur,
                           const T* __restrict__ w, const T* __restrict__ bias, bool conv,
                           int64_t W, int64_t C, T* __restrict__ win, T* __restrict__ y) {
  std::copy(cache, cache + (W - 1) * C, win);
  std::copy(cur, cur + C, win + (W - 1) * C);
  if (conv) {
    std::fill(y, y + C, T(0));
    for (int64_t k = 0; k < W; ++k) {
      const T* wk = w + k * C;
      const T* xk = win + k * C;
      for (int64_t c = 0; c < C; ++c) y[c] += wk[c] * xk[c];
    }
  } else {
    matvec(w, C, W * C, win, y);
  }
  if (bias)
    for (int64_t c = 0; c < C; ++c) y[c] += bias[c];
  std::copy(win + C, win + W * C, cache);
}

// One layer as the row kernel reads it: contiguous data of the compute type T, mixer weights and
// biases already at modality m; caches and state at row 0 (row b is b * their row size further).
template <typename T>
struct Layer {
  const T *norm1_w, *norm1_b, *mix1_w, *mix1_b, *norm2_w, *norm2_b, *in_w, *mix2_w, *mix2_b,
      *x_w, *dt_w, *dt_b, *A, *Dskip, *out_w;
  T *cache1, *cache2, *state;
  int64_t D, E, N, R, W1, W2;  // W2 = 0 for single mixers
  bool conv, residual;
  T eps;
};

// Scratch (elements of T) layer_row needs for one row.
template <typename T>
int64_t scratch_size(const Layer<T>& L) {
  const int64_t D = L.D, E = L.E, P = L.R + 2 * L.N;
  return 4 * D + L.W1 * D + 2 * E + L.W2 * E + 7 * E + P + E * L.N;
}

// Row b of one layer: h (D) -> out (D). `s` is scratch of scratch_size(L) elements.
template <typename T>
DMM_SIMD_CLONES void layer_row(const Layer<T>& L, int64_t b, const T* __restrict__ h,
                               T* __restrict__ out, T* __restrict__ s) {
  const int64_t D = L.D, E = L.E, N = L.N, R = L.R, P = R + 2 * N;
  T* u = s;               // (D) LN_1(h)
  T* mixed = u + D;       // (D) mixer_1's output
  T* h1 = mixed + D;      // (D)
  T* v = h1 + D;          // (D)
  T* win = v + D;         // (max(W1 * D, W2 * E))
  T* xz = win + std::max(L.W1 * D, L.W2 * E);  // (2E)
  T* xm = xz + 2 * E;     // (E) mixer_2's output
  T* xs = xm + E;         // (E)
  T* sig = xs + E;        // (E) sigmoid scratch
  T* x_dbl = sig + E;     // (P) [dt_low | B | C]
  T* pre = x_dbl + P;     // (E) delta before softplus
  T* delta = pre + E;     // (E)
  T* y = delta + E;       // (E)
  T* dA = y + E;          // (E * N)

  layer_norm(h, D, L.norm1_w, L.norm1_b, L.eps, u);
  mix(L.cache1 + b * (L.W1 - 1) * D, u, L.mix1_w, L.mix1_b, L.conv, L.W1, D, win, mixed);
  for (int64_t d = 0; d < D; ++d) h1[d] = h[d] + mixed[d];
  layer_norm(h1, D, L.norm2_w, L.norm2_b, L.eps, v);
  matvec(L.in_w, 2 * E, D, v, xz);
  const T* x = xz;
  const T* z = xz + E;
  if (L.W2 > 0) {
    mix(L.cache2 + b * (L.W2 - 1) * E, x, L.mix2_w, L.mix2_b, L.conv, L.W2, E, win, xm);
    x = xm;
  }
  sigmoid(x, E, sig);
  for (int64_t e = 0; e < E; ++e) xs[e] = x[e] * sig[e];
  matvec(L.x_w, P, E, xs, x_dbl);
  matvec(L.dt_w, E, R, x_dbl, pre);
  for (int64_t e = 0; e < E; ++e) pre[e] += L.dt_b[e];
  softplus(pre, E, delta);

  // s = exp(delta A) * s + delta xs B ; y = <s, C> + D xs
  const T* Bc = x_dbl + R;
  const T* Cc = Bc + N;
  T* state = L.state + b * E * N;
  for (int64_t e = 0; e < E; ++e)
    for (int64_t n = 0; n < N; ++n) dA[e * N + n] = delta[e] * L.A[e * N + n];
  exp_inplace(dA, E * N);
  using V = typename Simd<T>::v;
  constexpr int K = Simd<T>::lanes;
  for (int64_t e = 0; e < E; ++e) {
    T* se = state + e * N;
    const T* ae = dA + e * N;
    const T dx = delta[e] * xs[e];
    V acc = {};
    int64_t n = 0;
    for (; n + K <= N; n += K) {
      const V sn = vload(ae + n) * vload(se + n) + dx * vload(Bc + n);
      vstore(se + n, sn);
      acc += sn * vload(Cc + n);
    }
    T yv = vsum<T>(acc);
    for (; n < N; ++n) {
      se[n] = ae[n] * se[n] + dx * Bc[n];
      yv += se[n] * Cc[n];
    }
    y[e] = yv + L.Dskip[e] * xs[e];
  }
  sigmoid(z, E, sig);
  for (int64_t e = 0; e < E; ++e) y[e] *= z[e] * sig[e];
  matvec(L.out_w, D, E, y, out);
  if (L.residual)
    for (int64_t d = 0; d < D; ++d) out[d] += h1[d];
}

// ---- preparation ------------------------------------------------------------------------------
// Whether the fused kernel takes this layer (else the composite does).
bool fusable(const at::Tensor& h_t, const StepCache& c) {
  const auto cdt = h_t.scalar_type();
  return (cdt == at::kFloat || cdt == at::kDouble) && c.ssm_state.scalar_type() == cdt &&
         c.ssm_state.is_contiguous() && c.mixer1.is_contiguous() &&
         (!present(c.mixer2) || c.mixer2->is_contiguous());
}

// `t`'s data as contiguous T: in place when it already is, else a converted copy kept in `hold`.
template <typename T>
const T* ready(const at::Tensor& t, c10::SmallVectorImpl<at::Tensor>& hold) {
  const auto dt = c10::CppTypeToScalarType<T>::value;
  if (t.scalar_type() == dt && t.is_contiguous()) return t.const_data_ptr<T>();
  hold.push_back(t.to(dt).contiguous());
  return hold.back().const_data_ptr<T>();
}

template <typename T>
Layer<T> prepare(const BlockParams& p, const StepCache& c, const at::Tensor& A,
                 const composite::BlockDims& d, const BlockConfig& cfg, int64_t position,
                 c10::SmallVectorImpl<at::Tensor>& hold) {
  const bool conv = cfg.mixer.kind == "conv";
  const int64_t m = position % cfg.n_modalities;
  // Modality m's filter: conv (W, C), line (C, W*C); its bias (C).
  auto weight = [&](const at::Tensor& w, int64_t W, int64_t C) {
    return ready<T>(w, hold) + m * W * C * (conv ? 1 : C);
  };
  auto bias = [&](const OptTensor& b, int64_t C) {
    return present(b) ? ready<T>(*b, hold) + m * C : nullptr;
  };
  Layer<T> L;
  L.D = d.D, L.E = d.E, L.N = d.N, L.R = d.R, L.W1 = d.W1, L.W2 = cfg.mixer.is_double ? d.W2 : 0;
  L.conv = conv;
  L.residual = cfg.residual();
  L.eps = static_cast<T>(cfg.eps);
  L.norm1_w = ready<T>(p.norm1_weight, hold);
  L.norm1_b = ready<T>(p.norm1_bias, hold);
  L.mix1_w = weight(p.mixer1_weight, d.W1, d.D);
  L.mix1_b = bias(p.mixer1_bias, d.D);
  L.norm2_w = ready<T>(p.norm2_weight, hold);
  L.norm2_b = ready<T>(p.norm2_bias, hold);
  L.in_w = ready<T>(p.in_proj_weight, hold);
  L.mix2_w = L.W2 > 0 ? weight(*p.mixer2_weight, d.W2, d.E) : nullptr;
  L.mix2_b = L.W2 > 0 ? bias(p.mixer2_bias, d.E) : nullptr;
  L.x_w = ready<T>(p.x_proj_weight, hold);
  L.dt_w = ready<T>(p.dt_proj_weight, hold);
  L.dt_b = ready<T>(p.dt_proj_bias, hold);
  L.A = ready<T>(A, hold);
  L.Dskip = ready<T>(p.D, hold);
  L.out_w = ready<T>(p.out_proj_weight, hold);
  L.cache1 = c.mixer1.mutable_data_ptr<T>();
  L.cache2 = L.W2 > 0 ? c.mixer2->mutable_data_ptr<T>() : nullptr;
  L.state = c.ssm_state.mutable_data_ptr<T>();
  return L;
}

// h_t (B, D) through the layers in order, row by row. Returns (B, D).
template <typename T>
at::Tensor run_layers(const at::Tensor& h_t, c10::ArrayRef<Layer<T>> layers) {
  const int64_t B = h_t.size(0), D = h_t.size(1);
  at::Tensor out = at::empty({B, D}, h_t.options());
  if (B == 0) return out;
  const at::Tensor h = h_t.stride(1) == 1 ? h_t : h_t.contiguous();
  const T* hp = h.const_data_ptr<T>();
  const int64_t ld = h.stride(0);
  T* op = out.mutable_data_ptr<T>();
  int64_t need = 2 * D, flops = 0;  // two ping-pong rows between layers, then each layer's scratch
  for (const auto& L : layers) {
    need = std::max(need, 2 * D + scratch_size(L));
    flops += 2 * L.E * L.D * 2 + (L.R + 2 * L.N) * L.E + L.E * L.R + 6 * L.E * L.N;
  }
  // Rows per task: enough work (~0.2 ms) that splitting a batch over threads pays.
  const int64_t grain = std::max<int64_t>(1, 400000 / std::max<int64_t>(flops, 1));
  at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
    static thread_local std::vector<T> scratch;
    if (static_cast<int64_t>(scratch.size()) < need) scratch.resize(need);
    T* ping = scratch.data();
    T* pong = ping + D;
    T* work = pong + D;
    const size_t n_layers = layers.size();
    for (int64_t b = begin; b < end; ++b) {
      const T* in = hp + b * ld;
      for (size_t l = 0; l < n_layers; ++l) {
        T* dst = l + 1 == n_layers ? op + b * D : (l % 2 ? pong : ping);
        layer_row(layers[l], b, in, dst, work);
        in = dst;
      }
    }
  });
  return out;
}

// ---- the ops' CPU kernels ---------------------------------------------------------------------
template <typename T>
at::Tensor step_typed(const at::Tensor& h_t, const StepCache& cache, const BlockParams& p,
                      const at::Tensor& A, const composite::BlockDims& d, const BlockConfig& cfg,
                      int64_t position) {
  c10::SmallVector<at::Tensor, 4> hold;
  const Layer<T> L = prepare<T>(p, cache, A, d, cfg, position, hold);
  return run_layers<T>(h_t, {L});
}

at::Tensor step_cpu(const at::Tensor& h_t, const StepCache& cache, const BlockParams& p,
                    const at::Tensor& A, const BlockConfig& cfg, int64_t position) {
  const auto d =
      composite::check_step(h_t, cache, p, A, cfg.mixer, cfg.n_modalities, position);
  if (!fusable(h_t, cache)) return composite::step(h_t, cache, p, A, cfg, position);
  return h_t.scalar_type() == at::kFloat ? step_typed<float>(h_t, cache, p, A, d, cfg, position)
                                         : step_typed<double>(h_t, cache, p, A, d, cfg, position);
}

template <typename T>
at::Tensor steps_typed(const at::Tensor& h_t, const StepCacheLists& caches,
                       const BlockParamLists& params, at::TensorList A, const BlockConfig& cfg,
                       int64_t position, c10::ArrayRef<composite::BlockDims> dims) {
  c10::SmallVector<Layer<T>, 8> layers;
  c10::SmallVector<at::Tensor, 4> hold;
  for (size_t l = 0; l < dims.size(); ++l)
    layers.push_back(
        prepare<T>(params.layer(l), caches.layer(l), A[l], dims[l], cfg, position, hold));
  return run_layers<T>(h_t, layers);
}

at::Tensor steps_cpu(const at::Tensor& h_t, const StepCacheLists& caches,
                     const BlockParamLists& params, at::TensorList A, const BlockConfig& cfg,
                     int64_t position) {
  c10::SmallVector<composite::BlockDims, 8> dims;
  const size_t layers = composite::check_steps(h_t, caches, params, A, cfg, position, &dims);
  for (size_t l = 0; l < layers; ++l)
    if (!fusable(h_t, caches.layer(l)))
      return composite::steps(h_t, caches, params, A, cfg, position);
  return h_t.scalar_type() == at::kFloat
             ? steps_typed<float>(h_t, caches, params, A, cfg, position, dims)
             : steps_typed<double>(h_t, caches, params, A, cfg, position, dims);
}

}  // namespace
}  // namespace dmm

TORCH_LIBRARY_IMPL(dmm, CPU, m) {
  m.impl("metamamba_step", &dmm::step_entry<&dmm::step_cpu>);
  m.impl("metamamba_steps", &dmm::steps_entry<&dmm::steps_cpu>);
}
