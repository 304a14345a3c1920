// CUDA kernels of dmm::modal_mix_fwd / modal_mix_bwd: the host side; the kernel bodies are in
// modal_mix.cuh.
//
// kind "conv" (depthwise): one thread per output element (b, i, d), consecutive threads over d,
//   so every load and store is coalesced along the channels-last D axis. The weight gradient is
//   a reduction over all tokens of a modality: a 32 x 8 block per (32 channels, modality, split),
//   threads over d x token rows, reduced through shared memory, then atomics into acc_t sums
//   (per-split partials summed in a fixed order under torch.use_deterministic_algorithms(True)).
// kind "line" (dense over the window): im2col gathers cols (batch, L, W*D) with column k*D + d
//   = u[b, i - W + 1 + k, d]; each modality's rows (a strided view i = first, first + M, ...)
//   go through one cuBLAS GEMM with weight[m] (D, W*D); backward: dweight[m] = dy_m^T cols_m,
//   dcols_m = dy_m weight[m], and col2im sums dcols back onto du. GEMMs run in the accumulation
//   dtype (float32, float64 for float64 inputs).
#include <torch/library.h>

#include <climits>

#include "../checks.h"
#include "common.cuh"
#include "modal_mix.cuh"

namespace dmm {
namespace cuda {
namespace {

// ---- host side -----------------------------------------------------------------------------------

struct MixSetup {
  at::Tensor u, weight, bias;  // contiguous; bias undefined when absent
  ModalMixDims d;
  at::ScalarType acc;
  ModalMixParams p;
};

MixSetup mix_setup(const at::Tensor& u, const at::Tensor& weight,
                   const std::optional<at::Tensor>& bias, c10::string_view kind,
                   int64_t n_modalities, int64_t phase) {
  constexpr const char* op = "modal_mix";
  MixSetup s;
  s.d = check_modal_mix(u, weight, bias, kind, n_modalities, phase);
  check_cuda(op, "u", u, u);
  check_cuda(op, "weight", weight, u);
  check_cuda(op, "bias", bias, u);
  TORCH_CHECK(s.d.batch * s.d.len < INT_MAX && s.d.dim < INT_MAX, op,
              ": sizes too large for the CUDA kernel: u ", shape_str(u.sizes()));
  s.u = u.contiguous();
  s.weight = weight.contiguous();
  s.bias = contiguous_or_empty(bias);
  s.acc = acc_type_for({u, weight, bias});
  s.p.u = in_ptr(s.u, "u");
  s.p.weight = in_ptr(s.weight, "weight");
  s.p.bias = in_ptr(s.bias, "bias");
  s.p.batch = int(s.d.batch);
  s.p.len = int(s.d.len);
  s.p.dim = int(s.d.dim);
  s.p.n_modalities = int(s.d.n_modalities);
  s.p.width = int(s.d.width);
  s.p.phase = int(s.d.phase);
  return s;
}

template <typename acc_t>
at::Tensor im2col(const MixSetup& s) {
  at::Tensor cols = empty_output({s.d.batch, s.d.len, s.d.width * s.d.dim},
                                 s.u.options().dtype(s.acc));  // (batch, L, W*D)
  const int64_t n = cols.numel();
  DMM_LAUNCH(elementwise_blocks(n, kMixThreads), kMixThreads, 0, current_stream(),
             im2col_kernel<acc_t>)(s.p, out_gptr<acc_t>(cols, "cols"));
  DMM_KERNEL_LAUNCH_CHECK();
  return cols;
}

// Rows of modality m in a (batch, L, ...) tensor: a strided view (batch, L_m, ...).
at::Tensor modality_rows(const at::Tensor& t, const ModalMixDims& d, int m) {
  const int64_t first = first_token_of(m, int(d.phase), int(d.n_modalities));
  return t.slice(1, first, d.len, d.n_modalities);
}

template <typename acc_t>
at::Tensor line_fwd(const MixSetup& s) {
  const at::Tensor cols = im2col<acc_t>(s);                          // (batch, L, W*D)
  const at::Tensor w = s.weight.to(s.acc);                           // (M, D, W*D)
  const at::Tensor bias = s.bias.defined() ? s.bias.to(s.acc) : at::Tensor();
  at::Tensor y = empty_output({s.d.batch, s.d.len, s.d.dim_out}, cols.options());  // (batch, L, D_out)
  for (int m = 0; m < s.d.n_modalities; ++m) {
    if (first_token_of(m, int(s.d.phase), int(s.d.n_modalities)) >= s.d.len) continue;
    at::Tensor ym = at::matmul(modality_rows(cols, s.d, m), w[m].t());  // (batch, L_m, D_out)
    if (bias.defined()) ym.add_(bias[m]);
    modality_rows(y, s.d, m).copy_(ym);
  }
  return y.to(s.u.scalar_type());
}

template <typename acc_t>
std::tuple<at::Tensor, at::Tensor, at::Tensor> line_bwd(const MixSetup& s, const at::Tensor& dy) {
  const int64_t D_out = s.d.dim_out, WD = s.d.width * s.d.dim;
  const at::Tensor cols = im2col<acc_t>(s);                          // (batch, L, W*D)
  const at::Tensor w = s.weight.to(s.acc);                           // (M, D_out, W*D)
  const at::Tensor dy_acc = dy.to(s.acc);                            // (batch, L, D_out)
  at::Tensor dcols = empty_output_like(cols);                        // (batch, L, W*D)
  at::Tensor dweight = at::zeros_like(w);                            // (M, D_out, W*D)
  at::Tensor dbias = at::zeros({s.d.n_modalities, D_out}, cols.options());  // (M, D_out)
  for (int m = 0; m < s.d.n_modalities; ++m) {
    if (first_token_of(m, int(s.d.phase), int(s.d.n_modalities)) >= s.d.len) continue;
    const at::Tensor dym = modality_rows(dy_acc, s.d, m);            // (batch, L_m, D_out)
    const at::Tensor colm = modality_rows(cols, s.d, m);             // (batch, L_m, W*D)
    dweight[m].copy_(at::mm(dym.reshape({-1, D_out}).t(), colm.reshape({-1, WD})));
    dbias[m].copy_(dym.sum(at::IntArrayRef{0, 1}));
    modality_rows(dcols, s.d, m).copy_(at::matmul(dym, w[m]));       // (batch, L_m, W*D)
  }
  at::Tensor du = empty_output(s.u.sizes(), s.u.options());          // (batch, L, D)
  ModalMixParams p = s.p;
  p.du = out_ptr(du, "du");
  DMM_LAUNCH(elementwise_blocks(du.numel(), kMixThreads), kMixThreads, 0, current_stream(),
             col2im_kernel<acc_t>)(p, in_gptr<acc_t>(dcols, "dcols"));
  DMM_KERNEL_LAUNCH_CHECK();
  return {du, dweight, dbias};
}

template <typename acc_t>
void conv_fwd(const ModalMixParams& p, int64_t n) {
  DMM_LAUNCH(elementwise_blocks(n, kMixThreads), kMixThreads, 0, current_stream(),
             modal_conv_fwd_kernel<acc_t>)(p);
  DMM_KERNEL_LAUNCH_CHECK();
}

// Splits of the token rows over gridDim.z (so that the weight-gradient reduction fills the GPU).
int64_t conv_bwd_splits(const ModalMixParams& p) {
  const int64_t col_blocks = ceil_div(p.dim, kWeightBlockX) * p.n_modalities;
  const int64_t rows = int64_t(p.batch) * ceil_div(p.len, p.n_modalities);
  const int64_t want = 4 * int64_t(device_properties().multiProcessorCount);
  return std::max<int64_t>(
      1, std::min<int64_t>({ceil_div(want, col_blocks), ceil_div(rows, kWeightBlockY), 65535}));
}

// p.dweight_acc / p.dbias_acc: (M, W, D) / (M, D) zeros, or (splits, M, W, D) / (splits, M, D)
// zeros under p.split_partials.
template <typename acc_t>
void conv_bwd(const ModalMixParams& p, int64_t n, int64_t splits) {
  const cudaStream_t stream = current_stream();
  DMM_LAUNCH(elementwise_blocks(n, kMixThreads), kMixThreads, 0, stream,
             modal_conv_bwd_input_kernel<acc_t>)(p);
  DMM_KERNEL_LAUNCH_CHECK();
  TORCH_CHECK(p.n_modalities <= 65535, "modal_mix: n_modalities must be <= 65535 on CUDA");
  const dim3 grid(unsigned(ceil_div(p.dim, kWeightBlockX)), unsigned(p.n_modalities),
                  unsigned(splits));
  ModalMixParams pw = p;  // the weight kernel does not write du
  pw.du = OutPtr{};
  DMM_LAUNCH(grid, dim3(kWeightBlockX, kWeightBlockY), 0, stream,
             modal_conv_bwd_weight_kernel<acc_t>)(pw);
  DMM_KERNEL_LAUNCH_CHECK();
}

at::Tensor modal_mix_fwd_cuda(const at::Tensor& u, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, c10::string_view kind,
                              int64_t n_modalities, int64_t phase) {
  MixSetup s = mix_setup(u, weight, bias, kind, n_modalities, phase);  // validates first
  const DeviceGuard guard(u.device());
  if (s.u.numel() == 0) return at::empty({s.d.batch, s.d.len, s.d.dim_out}, u.options());
  const bool dbl = s.acc == at::kDouble;
  if (s.d.line) return dbl ? line_fwd<double>(s) : line_fwd<float>(s);
  at::Tensor y = empty_output(s.u.sizes(), u.options());  // (batch, L, D)
  s.p.y = out_ptr(y, "y");
  if (dbl) conv_fwd<double>(s.p, y.numel());
  else conv_fwd<float>(s.p, y.numel());
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> modal_mix_bwd_cuda(
    const at::Tensor& dy, const at::Tensor& u, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, c10::string_view kind, int64_t n_modalities,
    int64_t phase) {
  MixSetup s = mix_setup(u, weight, bias, kind, n_modalities, phase);  // validates first
  const DeviceGuard guard(u.device());
  check_arg("modal_mix", "dy", dy, u, {s.d.batch, s.d.len, s.d.dim_out}, "(batch, L, D_out)");
  check_cuda("modal_mix", "dy", dy, u);
  const at::Tensor dy_c = dy.contiguous();
  if (dy_c.scalar_type() == at::kDouble) s.acc = at::kDouble;
  const bool dbl = s.acc == at::kDouble;
  // Gradient of an absent bias: numel-0 float32 on u's device, as on the CPU.
  const at::Tensor none = at::empty({0}, u.options().dtype(at::kFloat));

  at::Tensor du, dweight, dbias;
  if (s.u.numel() == 0) {
    du = at::empty(s.u.sizes(), u.options());
    dweight = at::zeros(s.weight.sizes(), s.weight.options().dtype(s.acc));
    dbias = at::zeros({s.d.n_modalities, s.d.dim_out}, s.weight.options().dtype(s.acc));
  } else if (s.d.line) {
    std::tie(du, dweight, dbias) = dbl ? line_bwd<double>(s, dy_c) : line_bwd<float>(s, dy_c);
  } else {
    du = empty_output(s.u.sizes(), u.options());                                 // (batch, L, D)
    s.p.dy = in_ptr(dy_c, "dy");
    s.p.du = out_ptr(du, "du");
    const int64_t splits = conv_bwd_splits(s.p);
    // Under torch.use_deterministic_algorithms(True) every split writes its own partial sums
    // (splits, M, W, D), summed here in a fixed order: bit-identical from run to run. Otherwise
    // float atomics into one (M, W, D) buffer, whose last bits depend on the order of arrival.
    s.p.split_partials = at::globalContext().deterministicAlgorithms() && splits > 1;
    const int64_t parts = s.p.split_partials ? splits : 1;
    const auto acc_opts = s.weight.options().dtype(s.acc);
    at::Tensor dweight_parts = at::zeros({parts, s.d.n_modalities, s.d.width, s.d.dim}, acc_opts);
    at::Tensor dbias_parts = at::zeros({parts, s.d.n_modalities, s.d.dim}, acc_opts);
    s.p.dweight_acc = rw_gptr<void>(dweight_parts, "dweight");
    s.p.dbias_acc = s.bias.defined() ? rw_gptr<void>(dbias_parts, "dbias") : nullptr;
    if (dbl) conv_bwd<double>(s.p, du.numel(), splits);
    else conv_bwd<float>(s.p, du.numel(), splits);
    dweight = parts > 1 ? dweight_parts.sum(0) : dweight_parts[0];               // (M, W, D)
    dbias = parts > 1 ? dbias_parts.sum(0) : dbias_parts[0];                     // (M, D)
  }
  return {du, dweight.to(weight.scalar_type()),
          s.bias.defined() ? dbias.to(s.bias.scalar_type()) : none};
}

}  // namespace
}  // namespace cuda
}  // namespace dmm

TORCH_LIBRARY_IMPL(dmm, DMM_KERNEL_DISPATCH_KEY, m) {
  m.impl("modal_mix_fwd", &dmm::cuda::modal_mix_fwd_cuda);
  m.impl("modal_mix_bwd", &dmm::cuda::modal_mix_bwd_cuda);
}
