// CPU selective scan (mamba-ssm selective_scan_fn semantics), forward and backward.
//
// Per channel (b, e), with dt_t = softplus?(delta_t + delta_bias):
//   s_t = exp(dt_t A) * s_{t-1} + dt_t B_t u_t        (N-vector, s_{-1} = 0)
//   y_t = <s_t, C_t> + D u_t ;  out_t = y_t * silu(z_t)
// Inputs in the accumulation type (float32, or float64 for float64 inputs) are read in place
// through their strides (the block passes (B, C, L) views of its (B, L, C) activations); others
// are converted once. B and C are read time-major, (batch, G, L, N), so the inner loop over N is
// contiguous: in place when N has unit stride, else transposed once. Outputs du, ddelta, dz and
// out have the layout of u, delta, z and u (mamba-ssm's empty_like).
// The backward recomputes each channel's scan into an (L, N) scratch (never (B, E, L, N)),
// then runs the adjoint recurrence backwards in time.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "../checks.h"
#include "vec_math.h"

namespace dmm {
namespace {

// Channels per backward task: dB / dC partials are summed over these inside a task, then over
// tasks in a fixed order, so results do not depend on the thread count.
constexpr int64_t kBwdChannelChunk = 32;

// A tensor in the accumulation type: itself when it already is one (whatever its strides: the
// kernels read through them, so the block's strided (B, L, C) views cost no copy), else a copy.
at::Tensor to_acc(const at::Tensor& t, at::ScalarType acc) {
  return t.scalar_type() == acc ? t : t.to(acc);
}

// A (batch, C, L) tensor read row by row: row (b, c) starts at p + b * sb + c * sc, time stride st.
template <typename acc_t>
struct Rows {
  const acc_t* p;
  int64_t sb, sc, st;
  Rows(const at::Tensor& t) : p(t.const_data_ptr<acc_t>()), sb(t.stride(0)), sc(t.stride(1)),
                              st(t.stride(2)) {}
  // Row (b, c) as a contiguous pointer: the data itself when the time stride is 1, else gathered
  // into `buf` (L).
  const acc_t* row(int64_t b, int64_t c, int64_t L, acc_t* buf) const {
    const acc_t* r = p + b * sb + c * sc;
    if (st == 1) return r;
    for (int64_t t = 0; t < L; ++t) buf[t] = r[t * st];
    return buf;
  }
};

// Writes row (b, c) of a (batch, C, L) output with any strides from a contiguous `src` (L).
template <typename acc_t>
void store_row(const at::Tensor& out, int64_t b, int64_t c, int64_t L, const acc_t* src) {
  acc_t* r = out.mutable_data_ptr<acc_t>() + b * out.stride(0) + c * out.stride(1);
  const int64_t st = out.stride(2);
  for (int64_t t = 0; t < L; ++t) r[t * st] = src[t];
}

// B or C, (batch, N, L) or (batch, G, N, L), as time-major rows: group (b, g)'s B_t is the N
// values at p + (b * G + g) * ... + t * ld. Read in place when N is the unit-stride dimension
// (the block's views of its (B, L, R + 2N) x_dbl), else transposed once to (batch, G, L, N).
template <typename acc_t>
struct TimeMajor {
  at::Tensor hold;
  const acc_t* p;
  int64_t sb, sg, ld;
  TimeMajor(const at::Tensor& t, const ScanDims& d, at::ScalarType acc) {
    at::Tensor x = to_acc(t, acc).reshape({d.batch, d.n_groups, d.dstate, d.len});  // a view
    if (x.stride(2) != 1 && d.dstate > 1) x = x.transpose(2, 3).contiguous().transpose(2, 3);
    hold = x;
    p = x.const_data_ptr<acc_t>();
    sb = x.stride(0);
    sg = x.stride(1);
    ld = x.stride(3);
  }
  const acc_t* group(int64_t b, int64_t g) const { return p + b * sb + g * sg; }
};

// Shared per-channel setup: x (L) receives delta_t + bias, dt (L) the step dt_t = softplus?(x_t).
template <typename acc_t>
inline void channel_dt(const acc_t* delta, acc_t bias, bool use_softplus, int64_t L, acc_t* x,
                       acc_t* dt) {
  for (int64_t t = 0; t < L; ++t) x[t] = delta[t] + bias;
  if (use_softplus)
    softplus(x, L, dt);
  else
    std::copy(x, x + L, dt);
}

// Runs the scan of one channel. B_t / C_t are rows ldb / ldc apart in Bt / Ct (time-major).
// a (L, N) receives exp(dt_t A); states (L, N) receives s_t when non-null; y (L) receives
// <s_t, C_t> + D u_t (before the z gate). s (N) ends as the last state. No pointer aliases
// another.
template <typename acc_t>
DMM_SIMD_CLONES void channel_scan(const acc_t* __restrict__ u, const acc_t* __restrict__ dt,
                                  const acc_t* __restrict__ A, const acc_t* __restrict__ Bt,
                                  int64_t ldb, const acc_t* __restrict__ Ct, int64_t ldc,
                                  acc_t Dskip, int64_t L, int64_t N,
                                  acc_t* __restrict__ a, acc_t* __restrict__ states,
                                  acc_t* __restrict__ y, acc_t* __restrict__ s) {
  for (int64_t t = 0; t < L; ++t)
    for (int64_t n = 0; n < N; ++n) a[t * N + n] = dt[t] * A[n];
  exp_inplace(a, L * N);
  std::fill(s, s + N, acc_t(0));
  for (int64_t t = 0; t < L; ++t) {
    const acc_t* at_ = a + t * N;
    const acc_t* bt = Bt + t * ldb;
    const acc_t* ct = Ct + t * ldc;
    const acc_t dtu = dt[t] * u[t];
    for (int64_t n = 0; n < N; ++n) s[n] = at_[n] * s[n] + dtu * bt[n];
    if (states) std::copy(s, s + N, states + t * N);
    y[t] = dot(s, ct, N) + Dskip * u[t];
  }
}

// Adjoint of one channel's scan, backwards in time. g (N) carries dLoss/ds_t from step t+1
// (already multiplied by a_{t+1}); ga, gs (N) are scratch. states (L + 1, N): row 0 is zero,
// row t + 1 is s_t; sz (L) is sigmoid(z_t); B_t / C_t are rows ldb / ldc apart (time-major).
// Writes du, dz, ddt (= dLoss/d dt_t, before softplus)
// for the channel and accumulates dA_e (N), dB / dC (L, N) of its group and dD. No pointer
// aliases another (__restrict__: the element-wise loop vectorises without overlap checks).
template <typename acc_t>
DMM_SIMD_CLONES void channel_adjoint(
    int64_t L, int64_t N, const acc_t* __restrict__ dout, const acc_t* __restrict__ u,
    const acc_t* __restrict__ dt, const acc_t* __restrict__ z, const acc_t* __restrict__ sz,
    const acc_t* __restrict__ y, const acc_t* __restrict__ a, const acc_t* __restrict__ states,
    const acc_t* __restrict__ A, const acc_t* __restrict__ Bt, int64_t ldb,
    const acc_t* __restrict__ Ct, int64_t ldc, acc_t Dskip, acc_t* __restrict__ g, acc_t* __restrict__ ga, acc_t* __restrict__ gs,
    acc_t* __restrict__ du, acc_t& dD, acc_t* __restrict__ dA, acc_t* __restrict__ dz,
    acc_t* __restrict__ dB, acc_t* __restrict__ dC, acc_t* __restrict__ ddt_out) {
  std::fill(g, g + N, acc_t(0));
  for (int64_t t = L - 1; t >= 0; --t) {
    acc_t dy = dout[t];
    if (z) {
      const acc_t zt = z[t], szt = sz[t];
      dz[t] = dy * y[t] * szt * (acc_t(1) + zt * (acc_t(1) - szt));
      dy *= zt * szt;
    }
    const acc_t ut = u[t], dtt = dt[t], dtu = dtt * ut;
    const acc_t* at_ = a + t * N;
    const acc_t* sp = states + t * N;  // s_{t-1}
    const acc_t* st = sp + N;          // s_t
    const acc_t* bt = Bt + t * ldb;
    const acc_t* ct = Ct + t * ldc;
    acc_t* dbt = dB + t * N;
    acc_t* dct = dC + t * N;
    for (int64_t n = 0; n < N; ++n) {  // element-wise part: vectorises
      const acc_t gn = g[n] + dy * ct[n];
      dct[n] += dy * st[n];
      ga[n] = gn * sp[n] * at_[n];  // dLoss/d(dt_t A_n)
      dA[n] += ga[n] * dtt;
      dbt[n] += gn * dtu;
      gs[n] = gn;
      g[n] = gn * at_[n];
    }
    const acc_t ddt = dot(ga, A, N), gB = dot(gs, bt, N);
    dD += dy * ut;
    du[t] = dy * Dskip + gB * dtt;
    ddt_out[t] = ddt + gB * ut;
  }
}

std::tuple<at::Tensor, at::Tensor> selective_scan_fwd_cpu(
    const at::Tensor& u_in, const at::Tensor& delta_in, const at::Tensor& A_in,
    const at::Tensor& B_in, const at::Tensor& C_in, const c10::optional<at::Tensor>& D_in,
    const c10::optional<at::Tensor>& z_in, const c10::optional<at::Tensor>& bias_in,
    bool delta_softplus) {
  const ScanDims d = check_selective_scan(u_in, delta_in, A_in, B_in, C_in, D_in, z_in, bias_in);
  const auto acc = acc_type_for({u_in, delta_in, A_in, B_in, C_in, D_in, z_in, bias_in});
  // out has u's layout (mamba-ssm's empty_like), so a (B, L, E) view in gives one out.
  at::Tensor out = at::empty_like(u_in, u_in.options().dtype(acc));             // (batch, E, L)
  at::Tensor last_state = at::zeros({d.batch, d.dim, d.dstate}, u_in.options().dtype(acc));
  if (d.batch == 0 || d.dim == 0 || d.len == 0)
    return {out.to(u_in.scalar_type()), last_state};

  const at::Tensor u = to_acc(u_in, acc), delta = to_acc(delta_in, acc);   // (batch, E, L)
  const at::Tensor A = to_acc(A_in, acc).contiguous();                     // (E, N)
  const at::Tensor D = D_in.has_value() ? to_acc(*D_in, acc).contiguous() : at::Tensor();
  const at::Tensor z = z_in.has_value() ? to_acc(*z_in, acc) : at::Tensor();
  const at::Tensor bias = bias_in.has_value() ? to_acc(*bias_in, acc).contiguous() : at::Tensor();

  AT_DISPATCH_FLOATING_TYPES(acc, "selective_scan_fwd_cpu", [&] {
    using acc_t = scalar_t;
    const int64_t E = d.dim, L = d.len, N = d.dstate, G = d.n_groups, per_group = E / G;
    const Rows<acc_t> u_r(u), delta_r(delta);
    const std::optional<Rows<acc_t>> z_r = z.defined() ? std::optional(Rows<acc_t>(z)) : std::nullopt;
    const TimeMajor<acc_t> Bt(B_in, d, acc), Ct(C_in, d, acc);             // (batch, G, L, N)
    const acc_t* A_p = A.const_data_ptr<acc_t>();
    const acc_t* D_p = D.defined() ? D.const_data_ptr<acc_t>() : nullptr;
    const acc_t* bias_p = bias.defined() ? bias.const_data_ptr<acc_t>() : nullptr;
    acc_t* last_p = last_state.mutable_data_ptr<acc_t>();
    const int64_t grain = std::max<int64_t>(1, 4096 / (L * N));
    at::parallel_for(0, d.batch * E, grain, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> x(L), dt(L), sz(L), a(L * N), y(L), u_buf(L), z_buf(L);
      for (int64_t be = begin; be < end; ++be) {
        const int64_t b = be / E, e = be % E, g = e / per_group;
        channel_dt(delta_r.row(b, e, L, x.data()), bias_p ? bias_p[e] : acc_t(0),
                   delta_softplus, L, x.data(), dt.data());
        const acc_t* u_row = u_r.row(b, e, L, u_buf.data());
        channel_scan(u_row, dt.data(), A_p + e * N, Bt.group(b, g), Bt.ld, Ct.group(b, g),
                     Ct.ld, D_p ? D_p[e] : acc_t(0), L, N, a.data(),
                     static_cast<acc_t*>(nullptr), y.data(), last_p + be * N);
        if (z_r) {
          const acc_t* z_row = z_r->row(b, e, L, z_buf.data());
          sigmoid(z_row, L, sz.data());
          for (int64_t t = 0; t < L; ++t) y[t] *= z_row[t] * sz[t];
        }
        store_row(out, b, e, L, y.data());
      }
    });
  });
  return {out.to(u_in.scalar_type()), last_state};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor>
selective_scan_bwd_cpu(const at::Tensor& dout_in, const at::Tensor& u_in,
                       const at::Tensor& delta_in, const at::Tensor& A_in, const at::Tensor& B_in,
                       const at::Tensor& C_in, const c10::optional<at::Tensor>& D_in,
                       const c10::optional<at::Tensor>& z_in,
                       const c10::optional<at::Tensor>& bias_in, bool delta_softplus) {
  const ScanDims d = check_selective_scan(u_in, delta_in, A_in, B_in, C_in, D_in, z_in, bias_in);
  check_arg("selective_scan", "dout", dout_in, u_in, u_in.sizes(), "(batch, E, L)");
  const auto acc = acc_type_for({dout_in, u_in, delta_in, A_in, B_in, C_in, D_in, z_in, bias_in});
  const auto opts = u_in.options().dtype(acc);
  const int64_t E = d.dim, L = d.len, N = d.dstate, G = d.n_groups, per_group = E / G;
  const int64_t n_chunks = (per_group + kBwdChannelChunk - 1) / kBwdChannelChunk;

  // du / ddelta / dz have the layout of u / delta / z (mamba-ssm's empty_like).
  at::Tensor du = at::empty_like(u_in, opts);                              // (batch, E, L)
  at::Tensor ddelta = at::empty_like(delta_in, opts);                      // (batch, E, L)
  at::Tensor dz = z_in.has_value() ? at::empty_like(*z_in, opts) : at::Tensor();
  at::Tensor dA_part = at::zeros({d.batch, E, N}, opts);                   // summed over batch
  at::Tensor dD_part = at::zeros({d.batch, E}, opts);
  at::Tensor dbias_part = at::zeros({d.batch, E}, opts);
  at::Tensor dB_part = at::zeros({d.batch, G, n_chunks, L, N}, opts);      // summed over chunks
  at::Tensor dC_part = at::zeros({d.batch, G, n_chunks, L, N}, opts);

  if (d.batch > 0 && E > 0 && L > 0) {
    const at::Tensor dout = to_acc(dout_in, acc);                          // (batch, E, L)
    const at::Tensor u = to_acc(u_in, acc), delta = to_acc(delta_in, acc);
    const at::Tensor A = to_acc(A_in, acc).contiguous();                   // (E, N)
    const at::Tensor D = D_in.has_value() ? to_acc(*D_in, acc).contiguous() : at::Tensor();
    const at::Tensor z = z_in.has_value() ? to_acc(*z_in, acc) : at::Tensor();
    const at::Tensor bias =
        bias_in.has_value() ? to_acc(*bias_in, acc).contiguous() : at::Tensor();

    AT_DISPATCH_FLOATING_TYPES(acc, "selective_scan_bwd_cpu", [&] {
      using acc_t = scalar_t;
      const Rows<acc_t> dout_r(dout), u_r(u), delta_r(delta);
      const std::optional<Rows<acc_t>> z_r =
          z.defined() ? std::optional(Rows<acc_t>(z)) : std::nullopt;
      const TimeMajor<acc_t> Bt(B_in, d, acc), Ct(C_in, d, acc);           // (batch, G, L, N)
      const acc_t* A_p = A.const_data_ptr<acc_t>();
      const acc_t* D_p = D.defined() ? D.const_data_ptr<acc_t>() : nullptr;
      const acc_t* bias_p = bias.defined() ? bias.const_data_ptr<acc_t>() : nullptr;
      acc_t* dA_p = dA_part.mutable_data_ptr<acc_t>();
      acc_t* dD_p = dD_part.mutable_data_ptr<acc_t>();
      acc_t* dbias_p = dbias_part.mutable_data_ptr<acc_t>();
      acc_t* dB_p = dB_part.mutable_data_ptr<acc_t>();
      acc_t* dC_p = dC_part.mutable_data_ptr<acc_t>();

      // One task = one (batch, group, chunk of channels); it owns its dB / dC partial slice.
      at::parallel_for(0, d.batch * G * n_chunks, 1, [&](int64_t begin, int64_t end) {
        // states row 0 is s_{-1} = 0, row t + 1 is s_t.
        std::vector<acc_t> x(L), dt(L), sig(L), a(L * N), states((L + 1) * N, acc_t(0)), y(L),
            s(N), g(N), ga(N), gs(N), du_row(L), dz_row(L), ddt(L), u_buf(L), z_buf(L),
            dout_buf(L);
        for (int64_t task = begin; task < end; ++task) {
          const int64_t chunk = task % n_chunks, bg = task / n_chunks;
          const int64_t b = bg / G, grp = bg % G;
          const acc_t* Bg = Bt.group(b, grp);
          const acc_t* Cg = Ct.group(b, grp);
          acc_t* dBg = dB_p + task * L * N;
          acc_t* dCg = dC_p + task * L * N;
          const int64_t e_begin = grp * per_group + chunk * kBwdChannelChunk;
          const int64_t e_end = std::min(e_begin + kBwdChannelChunk, (grp + 1) * per_group);
          for (int64_t e = e_begin; e < e_end; ++e) {
            const int64_t be = b * E + e;
            const acc_t* A_e = A_p + e * N;
            const acc_t Dskip = D_p ? D_p[e] : acc_t(0);
            const acc_t* u_row = u_r.row(b, e, L, u_buf.data());
            const acc_t* z_row = z_r ? z_r->row(b, e, L, z_buf.data()) : nullptr;
            channel_dt(delta_r.row(b, e, L, x.data()), bias_p ? bias_p[e] : acc_t(0),
                       delta_softplus, L, x.data(), dt.data());
            channel_scan(u_row, dt.data(), A_e, Bg, Bt.ld, Cg, Ct.ld, Dskip, L, N, a.data(),
                         states.data() + N, y.data(), s.data());

            acc_t dD_acc = 0, dbias_acc = 0;
            if (z_row) sigmoid(z_row, L, sig.data());
            channel_adjoint(L, N, dout_r.row(b, e, L, dout_buf.data()), u_row, dt.data(), z_row,
                            sig.data(), y.data(), a.data(), states.data(), A_e, Bg, Bt.ld, Cg,
                            Ct.ld, Dskip, g.data(), ga.data(), gs.data(), du_row.data(), dD_acc,
                            dA_p + be * N, dz_row.data(), dBg, dCg, ddt.data());
            // ddt holds d/d(dt); chain through softplus(x), x = delta + bias (PyTorch's
            // threshold: the derivative is exactly 1 above 20). sig is free again.
            if (delta_softplus) sigmoid(x.data(), L, sig.data());
            for (int64_t t = 0; t < L; ++t) {
              if (delta_softplus && x[t] <= acc_t(20)) ddt[t] *= sig[t];
              dbias_acc += ddt[t];
            }
            store_row(du, b, e, L, du_row.data());
            store_row(ddelta, b, e, L, ddt.data());
            if (z_row) store_row(dz, b, e, L, dz_row.data());
            dD_p[be] = dD_acc;
            dbias_p[be] = dbias_acc;
          }
        }
      });
    });
  }

  auto like = [](const at::Tensor& g, const at::Tensor& ref) { return g.to(ref.scalar_type()); };
  // (batch, G, chunks, L, N) -> (batch, G, N, L) -> B's own shape.
  auto reduce_bc = [&](const at::Tensor& part, const at::Tensor& ref) {
    return part.sum(2).transpose(2, 3).reshape(ref.sizes()).to(ref.scalar_type()).contiguous();
  };
  // Absent optional input: numel-0 float32 gradient (matches the fake in dmm_kernels/ops.py).
  const at::Tensor empty = at::empty({0}, u_in.options().dtype(at::kFloat));
  return {like(du, u_in),
          like(ddelta, delta_in),
          like(dA_part.sum(0), A_in),
          reduce_bc(dB_part, B_in),
          reduce_bc(dC_part, C_in),
          D_in.has_value() ? like(dD_part.sum(0), *D_in) : empty,
          z_in.has_value() ? like(dz, *z_in) : empty,
          bias_in.has_value() ? like(dbias_part.sum(0), *bias_in) : empty};
}

}  // namespace

TORCH_LIBRARY_IMPL(dmm, CPU, m) {
  m.impl("selective_scan_fwd", &selective_scan_fwd_cpu);
  m.impl("selective_scan_bwd", &selective_scan_bwd_cpu);
}

}  // namespace dmm
