// CPU modal mixer: causal token mixing with one set of weights per modality.
// Token i of u (batch, L, D) has modality m = (phase + i) % M; tokens before 0 are zero.
//   "conv": y_i = b_m + sum_k w_m[k] * u_{i-W+1+k}         (depthwise; w (M, W, D))
//   "line": y_i = b_m + M_m @ [u_{i-W+1}; ...; u_i]         (dense; M (M, D_out, W*D), col k*D + d)
// "conv" is a direct loop (W*D multiply-adds per token). "line" is GEMM-bound: tokens are
// unfolded into an (L, W*D) window matrix, grouped by modality (modality is periodic in i, so
// padding L to a multiple of M makes each group a strided view) and multiplied with one bmm.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../checks.h"

namespace dmm {
namespace {

// Tokens per conv-backward task; dweight / dbias partials are per task and summed in a fixed
// order afterwards, so results do not depend on the thread count.
constexpr int64_t kConvTokenChunk = 256;

at::Tensor to_acc(const at::Tensor& t, at::ScalarType acc) { return t.to(acc).contiguous(); }

// ---- conv -------------------------------------------------------------------------------------
template <typename acc_t>
void conv_fwd(const acc_t* u, const acc_t* w, const acc_t* bias, acc_t* y, const ModalMixDims& d) {
  const int64_t L = d.len, D = d.dim, W = d.width;
  at::parallel_for(0, d.batch * L, std::max<int64_t>(1, 4096 / (W * D)), [&](int64_t begin,
                                                                             int64_t end) {
    for (int64_t bi = begin; bi < end; ++bi) {
      const int64_t i = bi % L, m = (d.phase + i) % d.n_modalities;
      acc_t* yi = y + bi * D;
      if (bias) std::copy(bias + m * D, bias + (m + 1) * D, yi);
      else std::fill(yi, yi + D, acc_t(0));
      for (int64_t k = std::max<int64_t>(0, W - 1 - i); k < W; ++k) {
        const acc_t* uj = u + (bi - (W - 1) + k) * D;  // token i - W + 1 + k of the same row
        const acc_t* wk = w + (m * W + k) * D;
        for (int64_t c = 0; c < D; ++c) yi[c] += wk[c] * uj[c];
      }
    }
  });
}

// du (batch, L, D); dw_part (tasks, M, W, D); db_part (tasks, M, D) or null.
template <typename acc_t>
void conv_bwd(const acc_t* dy, const acc_t* u, const acc_t* w, acc_t* du, acc_t* dw_part,
              acc_t* db_part, int64_t n_tchunks, const ModalMixDims& d) {
  const int64_t L = d.len, D = d.dim, W = d.width, M = d.n_modalities;
  at::parallel_for(0, d.batch * n_tchunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / n_tchunks, i0 = (task % n_tchunks) * kConvTokenChunk;
      const int64_t i1 = std::min(i0 + kConvTokenChunk, L);
      acc_t* dw = dw_part + task * M * W * D;
      acc_t* db = db_part ? db_part + task * M * D : nullptr;
      for (int64_t i = i0; i < i1; ++i) {
        const acc_t* dyi = dy + (b * L + i) * D;
        const int64_t m = (d.phase + i) % M;
        if (db)
          for (int64_t c = 0; c < D; ++c) db[m * D + c] += dyi[c];
        for (int64_t k = std::max<int64_t>(0, W - 1 - i); k < W; ++k) {
          const acc_t* uj = u + (b * L + i - (W - 1) + k) * D;
          acc_t* dwk = dw + (m * W + k) * D;
          for (int64_t c = 0; c < D; ++c) dwk[c] += dyi[c] * uj[c];
        }
        // du_i gathers from the outputs that read token i: j = i + W - 1 - k, k = 0..W-1.
        acc_t* dui = du + (b * L + i) * D;
        for (int64_t k = 0; k < W; ++k) {
          const int64_t j = i + W - 1 - k;
          if (j >= L) continue;
          const acc_t* dyj = dy + (b * L + j) * D;
          const acc_t* wk = w + (((d.phase + j) % M) * W + k) * D;
          for (int64_t c = 0; c < D; ++c) dui[c] += wk[c] * dyj[c];
        }
      }
    }
  });
}

// ---- line -------------------------------------------------------------------------------------
// Modality of the r-th token of each period of M tokens: perm[r] = (phase + r) % M.
at::Tensor modality_perm(const ModalMixDims& d, const at::Device& device) {
  std::vector<int64_t> perm(d.n_modalities);
  for (int64_t r = 0; r < d.n_modalities; ++r) perm[r] = (d.phase + r) % d.n_modalities;
  return at::tensor(perm, at::TensorOptions().dtype(at::kLong)).to(device);
}

// u (batch, L, D) -> windows grouped by modality slot: (M, batch * Lp / M, W*D), Lp = L rounded
// up to a multiple of M (padded tokens are zero and their outputs are dropped).
at::Tensor line_windows(const at::Tensor& u, const ModalMixDims& d, int64_t Lp) {
  const int64_t W = d.width, D = d.dim, M = d.n_modalities;
  at::Tensor u_pad = at::constant_pad_nd(u, {0, 0, W - 1, Lp - d.len});    // (b, W-1+Lp, D)
  at::Tensor X = u_pad.unfold(1, W, 1).transpose(2, 3);                     // (b, Lp, W, D)
  return X.reshape({d.batch, Lp / M, M, W * D}).permute({2, 0, 1, 3}).reshape({M, -1, W * D});
}

// (batch, L, D) <-> (M, batch * Lp / M, D), grouped by modality slot.
at::Tensor group_tokens(const at::Tensor& y, const ModalMixDims& d, int64_t Lp) {
  const int64_t M = d.n_modalities;
  return at::constant_pad_nd(y, {0, 0, 0, Lp - d.len})
      .reshape({d.batch, Lp / M, M, y.size(2)})
      .permute({2, 0, 1, 3})
      .reshape({M, -1, y.size(2)});
}
at::Tensor ungroup_tokens(const at::Tensor& g, const ModalMixDims& d, int64_t Lp) {
  const int64_t M = d.n_modalities;
  return g.reshape({M, d.batch, Lp / M, g.size(2)})
      .permute({1, 2, 0, 3})
      .reshape({d.batch, Lp, g.size(2)})
      .narrow(1, 0, d.len);
}

int64_t padded_len(const ModalMixDims& d) {
  return (d.len + d.n_modalities - 1) / d.n_modalities * d.n_modalities;
}

// ---- ops --------------------------------------------------------------------------------------
at::Tensor modal_mix_fwd_cpu(const at::Tensor& u_in, const at::Tensor& weight_in,
                             const c10::optional<at::Tensor>& bias_in, c10::string_view kind,
                             int64_t n_modalities, int64_t phase) {
  const ModalMixDims d = check_modal_mix(u_in, weight_in, bias_in, kind, n_modalities, phase);
  const auto acc = acc_type_for({u_in, weight_in, bias_in});
  if (d.batch == 0 || d.len == 0) return at::zeros({d.batch, d.len, d.dim_out}, u_in.options());
  const at::Tensor u = to_acc(u_in, acc), w = to_acc(weight_in, acc);
  const at::Tensor bias = bias_in.has_value() ? to_acc(*bias_in, acc) : at::Tensor();

  if (d.line) {
    const int64_t Lp = padded_len(d);
    const at::Tensor perm = modality_perm(d, u.device());
    const at::Tensor X = line_windows(u, d, Lp);                            // (M, n, W*D)
    const at::Tensor Wt = w.index_select(0, perm).transpose(1, 2);          // (M, W*D, D_out)
    at::Tensor Y = bias.defined()
                       ? at::baddbmm(bias.index_select(0, perm).unsqueeze(1), X, Wt)
                       : at::bmm(X, Wt);                                    // (M, n, D_out)
    return ungroup_tokens(Y, d, Lp).to(u_in.scalar_type()).contiguous();
  }

  at::Tensor y = at::empty({d.batch, d.len, d.dim}, u.options());          // (batch, L, D)
  AT_DISPATCH_FLOATING_TYPES(acc, "modal_mix_fwd_cpu", [&] {
    conv_fwd<scalar_t>(u.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                       bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr,
                       y.mutable_data_ptr<scalar_t>(), d);
  });
  return y.to(u_in.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> modal_mix_bwd_cpu(
    const at::Tensor& dy_in, const at::Tensor& u_in, const at::Tensor& weight_in,
    const c10::optional<at::Tensor>& bias_in, c10::string_view kind, int64_t n_modalities,
    int64_t phase) {
  const ModalMixDims d = check_modal_mix(u_in, weight_in, bias_in, kind, n_modalities, phase);
  check_arg("modal_mix", "dy", dy_in, u_in, {d.batch, d.len, d.dim_out}, "(batch, L, D_out)");
  const auto acc = acc_type_for({dy_in, u_in, weight_in, bias_in});
  // Absent bias: numel-0 float32 gradient (matches the fake in dmm_kernels/ops.py).
  const at::Tensor no_bias = at::empty({0}, u_in.options().dtype(at::kFloat));
  if (d.batch == 0 || d.len == 0)
    return {at::zeros(u_in.sizes(), u_in.options()), at::zeros_like(weight_in),
            bias_in.has_value() ? at::zeros_like(*bias_in) : no_bias};
  const at::Tensor dy = to_acc(dy_in, acc), u = to_acc(u_in, acc), w = to_acc(weight_in, acc);
  at::Tensor du, dw, db;

  if (d.line) {
    const int64_t Lp = padded_len(d), W = d.width, D = d.dim;
    const at::Tensor perm = modality_perm(d, u.device());
    const at::Tensor X = line_windows(u, d, Lp);                            // (M, n, W*D)
    const at::Tensor dY = group_tokens(dy, d, Lp);                          // (M, n, D_out)
    dw = at::zeros_like(w).index_copy_(0, perm, at::bmm(dY.transpose(1, 2), X));  // (M, D_out, W*D)
    if (bias_in.has_value())
      db = at::zeros({d.n_modalities, d.dim_out}, u.options()).index_copy_(0, perm, dY.sum(1));
    const at::Tensor dX = at::bmm(dY, w.index_select(0, perm));             // (M, n, W*D)
    const at::Tensor dXt = ungroup_tokens(dX, d, Lp).reshape({d.batch, d.len, W, D});
    // Window column k of token i is token i - W + 1 + k: scatter back (col2im).
    at::Tensor du_pad = at::zeros({d.batch, d.len + W - 1, D}, u.options());
    for (int64_t k = 0; k < W; ++k) du_pad.narrow(1, k, d.len).add_(dXt.select(2, k));
    du = du_pad.narrow(1, W - 1, d.len);
  } else {
    const int64_t n_tchunks = (d.len + kConvTokenChunk - 1) / kConvTokenChunk;
    const int64_t tasks = d.batch * n_tchunks;
    du = at::zeros({d.batch, d.len, d.dim}, u.options());                   // (batch, L, D)
    at::Tensor dw_part = at::zeros({tasks, d.n_modalities, d.width, d.dim}, u.options());
    at::Tensor db_part = bias_in.has_value() ? at::zeros({tasks, d.n_modalities, d.dim}, u.options())
                                             : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES(acc, "modal_mix_bwd_cpu", [&] {
      conv_bwd<scalar_t>(dy.const_data_ptr<scalar_t>(), u.const_data_ptr<scalar_t>(),
                         w.const_data_ptr<scalar_t>(), du.mutable_data_ptr<scalar_t>(),
                         dw_part.mutable_data_ptr<scalar_t>(),
                         db_part.defined() ? db_part.mutable_data_ptr<scalar_t>() : nullptr,
                         n_tchunks, d);
    });
    dw = dw_part.sum(0);
    if (db_part.defined()) db = db_part.sum(0);
  }
  return {du.to(u_in.scalar_type()).contiguous(), dw.to(weight_in.scalar_type()),
          bias_in.has_value() ? db.to(bias_in->scalar_type()) : no_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(dmm, CPU, m) {
  m.impl("modal_mix_fwd", &modal_mix_fwd_cpu);
  m.impl("modal_mix_bwd", &modal_mix_bwd_cpu);
}

}  // namespace dmm
