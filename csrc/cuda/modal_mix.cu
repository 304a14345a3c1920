// CUDA kernels of dmm::modal_mix_fwd / modal_mix_bwd.
//
// kind "conv" (depthwise): one thread per output element (b, i, d), consecutive threads over d,
//   so every load and store is coalesced along the channels-last D axis. The weight gradient is
//   a reduction over all tokens of a modality: a 32 x 8 block per (32 channels, modality, split),
//   threads over d x token rows, reduced through shared memory, then atomics into acc_t sums.
// kind "line" (dense over the window): im2col gathers cols (batch, L, W*D) with column k*D + d
//   = u[b, i - W + 1 + k, d]; each modality's rows (a strided view i = first, first + M, ...)
//   go through one cuBLAS GEMM with weight[m] (D, W*D); backward: dweight[m] = dy_m^T cols_m,
//   dcols_m = dy_m weight[m], and col2im sums dcols back onto du. GEMMs run in the accumulation
//   dtype (float32, float64 for float64 inputs).
#include <torch/library.h>

#include <climits>

#include "../checks.h"
#include "modal_mix.cuh"

namespace dmm {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWeightBlockX = 32;  // channels per weight-gradient block
constexpr int kWeightBlockY = 8;   // token rows per weight-gradient block

template <typename acc_t>
__global__ void __launch_bounds__(kThreads) modal_conv_fwd_kernel(const ModalMixParams p) {
  const int64_t total = int64_t(p.batch) * p.len * p.dim;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int d = int(idx % p.dim);
    const int64_t bi = idx / p.dim;  // b * L + i
    const int i = int(bi % p.len), b = int(bi / p.len);
    store(p.y, idx, modal_conv_point<acc_t>(p, b, i, d));
  }
}

template <typename acc_t>
__global__ void __launch_bounds__(kThreads) modal_conv_bwd_input_kernel(const ModalMixParams p) {
  const int64_t total = int64_t(p.batch) * p.len * p.dim;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int d = int(idx % p.dim);
    const int64_t bj = idx / p.dim;
    const int j = int(bj % p.len), b = int(bj / p.len);
    store(p.du, idx, modal_conv_grad_input_point<acc_t>(p, b, j, d));
  }
}

// dweight[m, k, d] = sum over tokens i of modality m, all b: dy[b, i, d] * u[b, i - W + 1 + k, d];
// dbias[m, d] = sum of dy[b, i, d]. Grid (ceil(D / 32), M, splits), block (32, 8).
template <typename acc_t>
__global__ void __launch_bounds__(kWeightBlockX* kWeightBlockY)
    modal_conv_bwd_weight_kernel(const ModalMixParams p) {
  __shared__ acc_t red[kWeightBlockY][kWeightBlockX];
  const int d = blockIdx.x * kWeightBlockX + threadIdx.x;
  const int m = blockIdx.y;
  const int M = p.n_modalities, W = p.width, L = p.len;
  const int first = first_token_of(m, p.phase, M);
  const int64_t per_batch = first < L ? (L - 1 - first) / M + 1 : 0;  // tokens of m per row
  const int64_t rows = int64_t(p.batch) * per_batch;

  acc_t w[kMaxModalMixWindow];
#pragma unroll
  for (int k = 0; k < kMaxModalMixWindow; ++k) w[k] = acc_t(0);
  acc_t bsum = acc_t(0);
  if (d < p.dim) {
    for (int64_t rr = int64_t(blockIdx.z) * kWeightBlockY + threadIdx.y; rr < rows;
         rr += int64_t(gridDim.z) * kWeightBlockY) {
      const int64_t b = rr / per_batch;
      const int i = first + M * int(rr % per_batch);
      const acc_t g = load<acc_t>(p.dy, (b * L + i) * p.dim + d);
      bsum += g;
#pragma unroll
      for (int k = 0; k < kMaxModalMixWindow; ++k) {
        const int j = i - W + 1 + k;
        if (k < W && j >= 0) w[k] += g * load<acc_t>(p.u, (b * L + j) * p.dim + d);
      }
    }
  }
  // Reduce over threadIdx.y: slots k < W are the weight taps, slot W the bias.
  acc_t* dweight = static_cast<acc_t*>(p.dweight_acc);
  acc_t* dbias = static_cast<acc_t*>(p.dbias_acc);
#pragma unroll
  for (int k = 0; k <= kMaxModalMixWindow; ++k) {
    if (k > W) break;  // uniform across the block: every thread reaches the same barriers
    // k % kMax keeps the (compile-time) register index in range at k == kMax, where W == kMax.
    const acc_t v = k < W ? w[k % kMaxModalMixWindow] : bsum;
    red[threadIdx.y][threadIdx.x] = v;
    __syncthreads();
    if (threadIdx.y == 0 && d < p.dim) {
      acc_t sum = acc_t(0);
#pragma unroll
      for (int y = 0; y < kWeightBlockY; ++y) sum += red[y][threadIdx.x];
      if (k < W) atomicAdd(&dweight[(int64_t(m) * W + k) * p.dim + d], sum);
      else if (dbias != nullptr) atomicAdd(&dbias[int64_t(m) * p.dim + d], sum);
    }
    __syncthreads();
  }
}

// cols[b, i, k * D + d] = u[b, i - W + 1 + k, d] (zero before token 0). cols: (batch, L, W*D).
template <typename acc_t>
__global__ void __launch_bounds__(kThreads) im2col_kernel(const ModalMixParams p, acc_t* cols) {
  const int W = p.width;
  const int64_t total = int64_t(p.batch) * p.len * W * p.dim;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int d = int(idx % p.dim);
    const int k = int((idx / p.dim) % W);
    const int64_t bi = idx / (int64_t(W) * p.dim);  // b * L + i
    const int i = int(bi % p.len);
    const int shift = W - 1 - k;                     // u row = i - shift
    cols[idx] = i >= shift ? load<acc_t>(p.u, (bi - shift) * p.dim + d) : acc_t(0);
  }
}

// du[b, j, d] = sum_k dcols[b, j + W - 1 - k, k * D + d] over rows inside the sequence.
template <typename acc_t>
__global__ void __launch_bounds__(kThreads) col2im_kernel(const ModalMixParams p,
                                                          const acc_t* dcols) {
  const int W = p.width;
  const int64_t total = int64_t(p.batch) * p.len * p.dim;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int d = int(idx % p.dim);
    const int64_t bj = idx / p.dim;
    const int j = int(bj % p.len);
    acc_t acc = acc_t(0);
    for (int k = 0; k < W; ++k) {
      const int shift = W - 1 - k;  // row i = j + shift
      if (j + shift < p.len) acc += dcols[((bj + shift) * W + k) * p.dim + d];
    }
    store(p.du, idx, acc);
  }
}

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
  s.p.u = in_ptr(s.u);
  s.p.weight = in_ptr(s.weight);
  s.p.bias = in_ptr(s.bias);
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
  at::Tensor cols = at::empty({s.d.batch, s.d.len, s.d.width * s.d.dim},
                              s.u.options().dtype(s.acc));  // (batch, L, W*D)
  const int64_t n = cols.numel();
  im2col_kernel<acc_t><<<elementwise_blocks(n, kThreads), kThreads, 0,
                         at::cuda::getCurrentCUDAStream()>>>(s.p, cols.data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
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
  at::Tensor y = at::empty({s.d.batch, s.d.len, s.d.dim_out}, cols.options());  // (batch, L, D_out)
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
  at::Tensor dcols = at::empty_like(cols);                           // (batch, L, W*D)
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
  at::Tensor du = at::empty(s.u.sizes(), s.u.options());             // (batch, L, D)
  ModalMixParams p = s.p;
  p.du = out_ptr(du);
  col2im_kernel<acc_t><<<elementwise_blocks(du.numel(), kThreads), kThreads, 0,
                         at::cuda::getCurrentCUDAStream()>>>(p, dcols.data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {du, dweight, dbias};
}

template <typename acc_t>
void conv_fwd(const ModalMixParams& p, int64_t n) {
  modal_conv_fwd_kernel<acc_t><<<elementwise_blocks(n, kThreads), kThreads, 0,
                                 at::cuda::getCurrentCUDAStream()>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename acc_t>
void conv_bwd(const ModalMixParams& p, int64_t n) {
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  modal_conv_bwd_input_kernel<acc_t><<<elementwise_blocks(n, kThreads), kThreads, 0, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // Split the token rows over gridDim.z so that the reduction fills the GPU.
  const int64_t col_blocks = ceil_div(p.dim, kWeightBlockX) * p.n_modalities;
  const int64_t rows = int64_t(p.batch) * ceil_div(p.len, p.n_modalities);
  const int64_t want = 4 * int64_t(at::cuda::getCurrentDeviceProperties()->multiProcessorCount);
  const int64_t splits = std::max<int64_t>(
      1, std::min<int64_t>({ceil_div(want, col_blocks), ceil_div(rows, kWeightBlockY), 65535}));
  TORCH_CHECK(p.n_modalities <= 65535, "modal_mix: n_modalities must be <= 65535 on CUDA");
  const dim3 grid(unsigned(ceil_div(p.dim, kWeightBlockX)), unsigned(p.n_modalities),
                  unsigned(splits));
  modal_conv_bwd_weight_kernel<acc_t>
      <<<grid, dim3(kWeightBlockX, kWeightBlockY), 0, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor modal_mix_fwd_cuda(const at::Tensor& u, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, c10::string_view kind,
                              int64_t n_modalities, int64_t phase) {
  MixSetup s = mix_setup(u, weight, bias, kind, n_modalities, phase);  // validates first
  const c10::cuda::CUDAGuard guard(u.device());
  if (s.u.numel() == 0) return at::empty({s.d.batch, s.d.len, s.d.dim_out}, u.options());
  const bool dbl = s.acc == at::kDouble;
  if (s.d.line) return dbl ? line_fwd<double>(s) : line_fwd<float>(s);
  at::Tensor y = at::empty(s.u.sizes(), u.options());  // (batch, L, D)
  s.p.y = out_ptr(y);
  if (dbl) conv_fwd<double>(s.p, y.numel());
  else conv_fwd<float>(s.p, y.numel());
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> modal_mix_bwd_cuda(
    const at::Tensor& dy, const at::Tensor& u, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, c10::string_view kind, int64_t n_modalities,
    int64_t phase) {
  MixSetup s = mix_setup(u, weight, bias, kind, n_modalities, phase);  // validates first
  const c10::cuda::CUDAGuard guard(u.device());
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
    du = at::empty(s.u.sizes(), u.options());                                    // (batch, L, D)
    dweight = at::zeros(s.weight.sizes(), s.weight.options().dtype(s.acc));      // (M, W, D)
    dbias = at::zeros({s.d.n_modalities, s.d.dim}, s.weight.options().dtype(s.acc));  // (M, D)
    s.p.dy = in_ptr(dy_c);
    s.p.du = out_ptr(du);
    s.p.dweight_acc = dweight.data_ptr();
    s.p.dbias_acc = s.bias.defined() ? dbias.data_ptr() : nullptr;
    if (dbl) conv_bwd<double>(s.p, du.numel());
    else conv_bwd<float>(s.p, du.numel());
  }
  return {du, dweight.to(weight.scalar_type()),
          s.bias.defined() ? dbias.to(s.bias.scalar_type()) : none};
}

}  // namespace
}  // namespace cuda
}  // namespace dmm

TORCH_LIBRARY_IMPL(dmm, CUDA, m) {
  m.impl("modal_mix_fwd", &dmm::cuda::modal_mix_fwd_cuda);
  m.impl("modal_mix_bwd", &dmm::cuda::modal_mix_bwd_cuda);
}
