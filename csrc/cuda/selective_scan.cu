// CUDA kernels of dmm::selective_scan_fwd / selective_scan_bwd (mamba-ssm's selective_scan_fn) and
// the block's fused scan (scan_launch.h): the host side; the kernels are in selective_scan.cuh.
//
// One launch each way. Inputs are read in place when their E or L stride is 1 (the op's (B, E, L)
// layout, the block's (B, L, E) layout, B / C expanded with stride 0); anything else is copied
// contiguous first. Storage dtypes are template parameters: u / delta / z / dout share one dtype
// (u's: others are cast to it), B / C either that dtype or float32; any float64 input makes the
// whole scan float64 (gradcheck). A, D, delta_bias are read in the accumulation dtype.
// dA, dB, dC, dD, ddelta_bias are float atomics into zeroed sums, cast at the end; under
// torch.use_deterministic_algorithms(True) each CTA writes its own slice of partial sums instead
// (every element written once), summed in a fixed order here: bit-identical from run to run.
#include <torch/library.h>

#include <climits>
#include <limits>
#include <type_traits>
#include <vector>

#include "../checks.h"
#include "common.cuh"
#include "scan_launch.h"
#include "selective_scan.cuh"

namespace dmm {
namespace cuda {
namespace {

using OptTensor = std::optional<at::Tensor>;

// ---- views -----------------------------------------------------------------------------------------
// `t` as read by the kernels: itself when its E or L stride is 1, else a contiguous copy.
at::Tensor readable(const at::Tensor& t) {
  if (!t.defined()) return t;
  const int64_t d = t.dim();
  return t.stride(d - 1) == 1 || t.stride(d - 2) == 1 || t.stride(d - 1) == 0 ? t : t.contiguous();
}
at::Tensor as_dtype(const at::Tensor& t, at::ScalarType dt) {
  return !t.defined() || t.scalar_type() == dt ? t : t.to(dt);
}
// The checked pointer of a strided view (V = const void: read-only; void: written or accumulated
// into): its first element, inside the whole storage it views (what the emulator checks bounds
// against, so that the deterministic mode's per-block slices past a view stay inside). `name`: a
// string literal. Never a full-write output: a view may skip elements of its storage.
template <typename V>
gptr<V> view_ptr(const at::Tensor& t, const char* name) {
  using C = std::conditional_t<std::is_const_v<V>, const char, char>;
  if (!t.defined() || t.numel() == 0) return nullptr;
  char* base = static_cast<char*>(t.storage().mutable_data());
  const gptr<C> b = make_gptr<C>(base, int64_t(t.storage().nbytes()), name);
  return ptr_cast<V>(b + (static_cast<char*>(t.data_ptr()) - base));
}
View3 view3(const at::Tensor& t, const char* name) {  // (batch, E, L)
  if (!t.defined()) return {};
  return {view_ptr<const void>(t, name), t.stride(0), t.stride(1), t.stride(2)};
}
MutView3 mut3(const at::Tensor& t, const char* name) {
  if (!t.defined()) return {};
  return {view_ptr<void>(t, name), t.stride(0), t.stride(1), t.stride(2)};
}
View4 view4(const at::Tensor& t, const char* name) {  // (batch, N, L) or (batch, G, N, L)
  const bool g = t.dim() == 4;
  return {view_ptr<const void>(t, name), t.stride(0), g ? t.stride(1) : 0, t.stride(g ? 2 : 1),
          t.stride(g ? 3 : 2)};
}
MutView4 mut4(const at::Tensor& t, const char* name) {
  const bool g = t.dim() == 4;
  return {view_ptr<void>(t, name), t.stride(0), g ? t.stride(1) : 0, t.stride(g ? 2 : 1),
          t.stride(g ? 3 : 2)};
}
// An output in `like`'s layout for the kernels to write: NaN-filled in emulated builds (as
// empty_output), so that an element no kernel writes shows in the results.
at::Tensor empty_output_as(const at::Tensor& like, const at::TensorOptions& options) {
  at::Tensor t = at::empty_like(like, options);
#ifdef DMM_CUDA_EMULATION
  t.fill_(std::numeric_limits<double>::quiet_NaN());
#endif
  return t;
}

// ---- configuration and launch ------------------------------------------------------------------------
struct Config {
  int items, chans;
  size_t smem;
};

// The first configuration whose shared memory fits the device: 16 items per lane (64-step chunks)
// for long scans, 8 (32-step chunks) for short ones, and a single warp of 8 channels with 4 items
// where N is large. float64 (gradcheck) holds half the items in its registers.
Config scan_config(bool backward, int64_t N, int64_t L, int R, size_t acc_size) {
  std::vector<Config> options;
  if (acc_size == sizeof(double)) {
    options.push_back({backward ? 4 : 8, 32, 0});
  } else {
    if (L > 32) options.push_back({16, 32, 0});
    options.push_back({8, 32, 0});
  }
  options.push_back({4, 8, 0});
  const size_t limit = device_properties().sharedMemPerBlockOptin;
  for (Config c : options) {
    const int chunk = kScanLanes * c.items;
    c.smem = size_t(ScanSmem(int(N), c.chans, chunk, chunk + 4, backward, R).total) * acc_size;
    if (c.smem <= limit) return c;
  }
  TORCH_CHECK(false, "selective_scan: N = ", N, " states do not fit the device's ", limit,
              " bytes of shared memory per block");
  return {};
}

template <typename KT, bool kBackward>
void launch_kernel(const ScanParams& p, size_t smem) {
  const int64_t blocks = int64_t(p.batch) * p.n_groups * p.blocks_per_group;
  TORCH_CHECK(blocks <= INT_MAX, "selective_scan: batch * E too large for one launch");
  const unsigned grid = unsigned(blocks);
  const cudaStream_t stream = current_stream();
  if constexpr (!kBackward) {
    allow_smem(selective_scan_fwd_kernel<KT>, smem);
    DMM_LAUNCH(grid, KT::kThreads, smem, stream, selective_scan_fwd_kernel<KT>)(p);
  } else {
    allow_smem(selective_scan_bwd_kernel<KT>, smem);
    DMM_LAUNCH(grid, KT::kThreads, smem, stream, selective_scan_bwd_kernel<KT>)(p);
  }
  DMM_KERNEL_LAUNCH_CHECK();
}

// The kernels for the configurations scan_config offers (only those are instantiated).
template <bool kBackward, typename in_t, typename bc_t>
void launch_config(const ScanParams& p, const Config& cfg) {
  if (cfg.chans == 8) {
    launch_kernel<ScanTraits<in_t, bc_t, 4, 8>, kBackward>(p, cfg.smem);
  } else if constexpr (std::is_same_v<in_t, double>) {
    launch_kernel<ScanTraits<in_t, bc_t, kBackward ? 4 : 8, 32>, kBackward>(p, cfg.smem);
  } else {
    if (cfg.items == 16) launch_kernel<ScanTraits<in_t, bc_t, 16, 32>, kBackward>(p, cfg.smem);
    else launch_kernel<ScanTraits<in_t, bc_t, 8, 32>, kBackward>(p, cfg.smem);
  }
}

template <typename in_t, typename bc_t>
void launch_config(const ScanParams& p, bool backward, const Config& cfg) {
  if (backward) launch_config<true, in_t, bc_t>(p, cfg);
  else launch_config<false, in_t, bc_t>(p, cfg);
}

// Launch for storage dtypes (in, bc) in {(f32, f32), (f16|bf16, same|f32), (f64, f64)}.
void launch_scan(ScanParams& p, at::ScalarType in, at::ScalarType bc, bool backward) {
  const size_t acc_size = in == at::kDouble ? sizeof(double) : sizeof(float);
  const Config cfg = scan_config(backward, p.dstate, p.len, p.dt_rank, acc_size);
  const int chunk = kScanLanes * cfg.items;
  p.n_chunks = int(ceil_div(p.len, chunk));
  p.blocks_per_group = int(ceil_div(p.dim_per_group, cfg.chans));
  const bool bc_f32 = bc == at::kFloat;
  switch (in) {
    case at::kFloat: launch_config<float, float>(p, backward, cfg); break;
    case at::kDouble: launch_config<double, double>(p, backward, cfg); break;
    case at::kHalf:
      if (bc_f32) launch_config<__half, float>(p, backward, cfg);
      else launch_config<__half, __half>(p, backward, cfg);
      break;
    case at::kBFloat16:
      if (bc_f32) launch_config<__nv_bfloat16, float>(p, backward, cfg);
      else launch_config<__nv_bfloat16, __nv_bfloat16>(p, backward, cfg);
      break;
    default: TORCH_CHECK(false, "selective_scan: unsupported dtype ", in);
  }
}

// Chunks and channel blocks the launch will use (for the backward's scratch and partials).
Config bwd_config(const ScanParams& p, at::ScalarType in) {
  return scan_config(true, p.dstate, p.len, p.dt_rank, in == at::kDouble ? 8 : 4);
}

// Backward sums: zeroed accumulators the kernel adds into, or under the deterministic mode
// per-block partial slices (dA / dD / ddelta_bias per batch row, dB / dC per channel block) summed
// here in a fixed order.
struct BwdSums {
  at::Tensor dA, dB, dC, dD, dbias, chunk_states;
  bool det;
  BwdSums(ScanParams& p, const Config& cfg, at::IntArrayRef bc_shape, const at::TensorOptions& acc,
          bool det_) : det(det_) {
    const int64_t batch = p.batch, E = p.dim, N = p.dstate;
    const int64_t cblocks = ceil_div(p.dim_per_group, cfg.chans);
    const int64_t chunks = ceil_div(p.len, kScanLanes * cfg.items);
    std::vector<int64_t> bc(bc_shape.begin(), bc_shape.end());
    if (det) bc.insert(bc.begin(), cblocks);
    const std::vector<int64_t> a_shape = det ? std::vector<int64_t>{batch, E, N} : std::vector<int64_t>{E, N};
    const std::vector<int64_t> e_shape = det ? std::vector<int64_t>{batch, E} : std::vector<int64_t>{E};
    // Separate buffers: the op's outputs must not alias one another.
    dA = at::zeros(a_shape, acc);
    dD = at::zeros(e_shape, acc);
    dbias = at::zeros(e_shape, acc);
    dB = at::zeros(bc, acc);
    dC = at::zeros(bc, acc);
    chunk_states = chunks > 1 ? empty_output({batch, E, chunks, N}, acc) : at::Tensor();
    const at::Tensor dB0 = det ? dB[0] : dB, dC0 = det ? dC[0] : dC;
    p.dA = rw_gptr<void>(dA, "dA");
    p.dD = rw_gptr<void>(dD, "dD");
    p.ddelta_bias = rw_gptr<void>(dbias, "ddelta_bias");
    p.dB = dB0.numel() > 0 ? mut4(dB0, "dB") : MutView4{};
    p.dC = dC0.numel() > 0 ? mut4(dC0, "dC") : MutView4{};
    p.dBC_part = dB0.numel();
    p.chunk_states = rw_gptr<void>(chunk_states, "chunk_states");
    p.deterministic = det;
  }
  void finish() {  // fixed-order sums over the partials' leading dimension
    if (!det) return;
    dA = dA.sum(0);
    dD = dD.sum(0);
    dbias = dbias.sum(0);
    dB = dB.sum(0);
    dC = dC.sum(0);
  }
};

// ---- the op --------------------------------------------------------------------------------------------
struct ScanSetup {
  at::Tensor u, delta, A, B, C, D, z, delta_bias;  // as the kernels read them
  ScanDims d;
  at::ScalarType in, bc, acc;
};

ScanSetup scan_setup(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                     const at::Tensor& B, const at::Tensor& C, const OptTensor& D,
                     const OptTensor& z, const OptTensor& delta_bias, const OptTensor& dout) {
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
  TORCH_CHECK(s.d.len < INT_MAX / 2 && s.d.dim < INT_MAX / 2 && s.d.batch < INT_MAX / 2, op,
              ": sizes too large for the CUDA kernel: ", shape_str(u.sizes()));
  s.acc = acc_type_for({u, delta, A, B, C, D, z, delta_bias, dout});
  s.in = s.acc == at::kDouble ? at::kDouble : u.scalar_type();
  const bool bc_same = B.scalar_type() == s.in && C.scalar_type() == s.in;
  s.bc = s.in == at::kDouble || bc_same ? s.in : at::kFloat;
  s.u = readable(as_dtype(u, s.in));
  s.delta = readable(as_dtype(delta, s.in));
  s.z = z.has_value() ? readable(as_dtype(*z, s.in)) : at::Tensor();
  s.B = readable(as_dtype(B, s.bc));
  s.C = readable(as_dtype(C, s.bc));
  s.A = as_dtype(A, s.acc).contiguous();
  s.D = D.has_value() ? as_dtype(*D, s.acc).contiguous() : at::Tensor();
  s.delta_bias = delta_bias.has_value() ? as_dtype(*delta_bias, s.acc).contiguous() : at::Tensor();
  return s;
}

ScanParams scan_params(const ScanSetup& s, bool delta_softplus) {
  ScanParams p;
  p.u = view3(s.u, "u");
  p.delta = view3(s.delta, "delta");
  p.z = view3(s.z, "z");
  p.B = view4(s.B, "B");
  p.C = view4(s.C, "C");
  p.A = in_gptr<void>(s.A, "A");
  p.D = in_gptr<void>(s.D, "D");
  p.delta_bias = in_gptr<void>(s.delta_bias, "delta_bias");
  p.batch = int(s.d.batch);
  p.dim = int(s.d.dim);
  p.len = int(s.d.len);
  p.dstate = int(s.d.dstate);
  p.n_groups = int(s.d.n_groups);
  p.dim_per_group = int(s.d.dim / s.d.n_groups);
  p.delta_softplus = delta_softplus;
  return p;
}

std::tuple<at::Tensor, at::Tensor> selective_scan_fwd_cuda(
    const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
    const at::Tensor& C, const OptTensor& D, const OptTensor& z, const OptTensor& delta_bias,
    bool delta_softplus) {
  const ScanSetup s = scan_setup(u, delta, A, B, C, D, z, delta_bias, std::nullopt);
  const DeviceGuard guard(u.device());
  at::Tensor out = empty_output_as(u, u.options().dtype(s.in));  // (batch, E, L), u's layout
  // The state is in the accumulation dtype (float32, or float64 for float64 inputs), as on CPU.
  at::Tensor last_state =
      empty_output({s.d.batch, s.d.dim, s.d.dstate}, u.options().dtype(s.acc));  // (batch, E, N)
  if (s.d.batch > 0 && s.d.dim > 0) {
    ScanParams p = scan_params(s, delta_softplus);
    p.out = mut3(out, "out");
    p.last_state = out_gptr<void>(last_state, "last_state");
    launch_scan(p, s.in, s.bc, false);
  }
  return {as_dtype(out, u.scalar_type()), last_state};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor>
selective_scan_bwd_cuda(const at::Tensor& dout, const at::Tensor& u, const at::Tensor& delta,
                        const at::Tensor& A, const at::Tensor& B, const at::Tensor& C,
                        const OptTensor& D, const OptTensor& z, const OptTensor& delta_bias,
                        bool delta_softplus) {
  const ScanSetup s = scan_setup(u, delta, A, B, C, D, z, delta_bias, dout);
  const DeviceGuard guard(u.device());
  check_arg("selective_scan", "dout", dout, u, u.sizes(), "(batch, E, L)");
  const auto in_opts = u.options().dtype(s.in);
  // (batch, E, L) each, in the layout of its input (the block's transposed views stay (B, L, E))
  at::Tensor du = empty_output_as(u, in_opts);
  at::Tensor ddelta = empty_output_as(delta, in_opts);
  at::Tensor dz = s.z.defined() ? empty_output_as(*z, in_opts) : at::Tensor();
  ScanParams p = scan_params(s, delta_softplus);
  const at::Tensor dout_r = readable(as_dtype(dout, s.in));
  p.dout = view3(dout_r, "dout");
  p.du = mut3(du, "du");
  p.ddelta = mut3(ddelta, "ddelta");
  p.dz = mut3(dz, "dz");
  const bool det = at::globalContext().deterministicAlgorithms();
  BwdSums sums(p, bwd_config(p, s.in), s.B.sizes(), u.options().dtype(s.acc), det);
  if (s.d.batch > 0 && s.d.dim > 0) launch_scan(p, s.in, s.bc, true);
  sums.finish();

  // Absent optional inputs get numel-0 float32 gradients on u's device, as on the CPU.
  const at::Tensor none = at::empty({0}, u.options().dtype(at::kFloat));
  return {as_dtype(du, u.scalar_type()),
          as_dtype(ddelta, delta.scalar_type()),
          sums.dA.to(A.scalar_type()),
          sums.dB.to(B.scalar_type()),
          sums.dC.to(C.scalar_type()),
          s.D.defined() ? sums.dD.to(D->scalar_type()) : none,
          dz.defined() ? as_dtype(dz, z->scalar_type()) : none,
          s.delta_bias.defined() ? sums.dbias.to(delta_bias->scalar_type()) : none};
}

// ---- the block's scan (scan_launch.h) -------------------------------------------------------------
// (B, L, x) -> the kernels' (batch, x, L) view: no copy.
at::Tensor bxl(const at::Tensor& t) { return t.transpose(1, 2); }

struct BlockSetup {
  at::Tensor w_dt, dt_bias, A_log, D, x_dbl;
  at::ScalarType in, acc;
  ScanParams p;
  explicit BlockSetup(const BlockScanFwdArgs& a) {
    in = a.xs.scalar_type();
    acc = in == at::kDouble ? at::kDouble : at::kFloat;
    const int64_t Bn = a.xs.size(0), L = a.xs.size(1), E = a.xs.size(2), N = a.A_log.size(1);
    const int64_t R = a.w_dt.size(1);
    w_dt = as_dtype(a.w_dt, in).contiguous();
    dt_bias = as_dtype(a.dt_bias, acc).contiguous();
    A_log = as_dtype(a.A_log, acc).contiguous();
    D = as_dtype(a.D, acc).contiguous();
    x_dbl = as_dtype(a.x_dbl, in);
    p.u = view3(bxl(a.xs), "xs");
    p.z = view3(bxl(a.z), "z");
    p.dt_low = view3(bxl(x_dbl.narrow(2, 0, R)), "x_dbl");
    p.B = view4(bxl(x_dbl.narrow(2, R, N)), "x_dbl");
    p.C = view4(bxl(x_dbl.narrow(2, R + N, N)), "x_dbl");
    p.w_dt = in_gptr<void>(w_dt, "dt_proj_weight");
    p.dt_rank = int(R);
    p.a_is_log = true;
    p.A = in_gptr<void>(A_log, "A_log");
    p.D = in_gptr<void>(D, "D");
    p.delta_bias = in_gptr<void>(dt_bias, "dt_proj_bias");
    p.delta_softplus = true;
    p.batch = int(Bn);
    p.dim = int(E);
    p.len = int(L);
    p.dstate = int(N);
    p.n_groups = 1;
    p.dim_per_group = int(E);
  }
};

}  // namespace

void block_scan_fwd(const BlockScanFwdArgs& a) {
  BlockSetup s(a);
  TORCH_CHECK(s.p.w_dt != nullptr, "block_scan_fwd: dt_proj has rank 0");
  s.p.out = mut3(bxl(a.y), "y");
  s.p.last_state = a.last_state.defined() ? out_gptr<void>(a.last_state, "last_state") : nullptr;
  if (s.p.batch > 0 && s.p.dim > 0) launch_scan(s.p, s.in, s.in, false);
}

void block_scan_bwd(const BlockScanBwdArgs& a) {
  BlockSetup s(a);
  TORCH_CHECK(s.p.w_dt != nullptr, "block_scan_bwd: dt_proj has rank 0");
  const int64_t Bn = s.p.batch, L = s.p.len, E = s.p.dim, N = s.p.dstate, R = s.p.dt_rank;
  for (const at::Tensor* t : {&a.dw_dt, &a.dA_log, &a.dD, &a.ddt_bias})
    TORCH_CHECK(t->is_contiguous() && t->scalar_type() == s.acc,
                "block_scan_bwd: the parameter sums must be contiguous ", s.acc);
  TORCH_CHECK(a.dx_dbl.scalar_type() == s.acc, "block_scan_bwd: dx_dbl must be ", s.acc);
  const at::Tensor dy = as_dtype(a.dy, s.in);
  s.p.dout = view3(bxl(dy), "dy");
  s.p.du = mut3(bxl(a.dxs), "dxs");
  s.p.ddelta = mut3(a.ddt.defined() ? bxl(a.ddt) : at::Tensor(), "ddt");
  s.p.dz = mut3(bxl(a.dz), "dz");
  const bool det = at::globalContext().deterministicAlgorithms();
  const Config cfg = bwd_config(s.p, s.in);
  const auto acc = a.xs.options().dtype(s.acc);
  // Deterministic: per-block partials (d x_dbl per channel block, parameter sums per batch row),
  // summed here in a fixed order and added to the caller's sums; else the kernel adds into them.
  const int64_t cblocks = ceil_div(E, cfg.chans);
  const at::Tensor dx_dbl = det ? at::zeros({cblocks, Bn, L, R + 2 * N}, acc) : a.dx_dbl;
  const at::Tensor d0 = det ? dx_dbl[0] : dx_dbl;
  const at::Tensor dw = det ? at::zeros({Bn, E, R}, acc) : a.dw_dt;
  const at::Tensor dA = det ? at::zeros({Bn, E, N}, acc) : a.dA_log;
  const at::Tensor dD = det ? at::zeros({Bn, E}, acc) : a.dD;
  const at::Tensor dbias = det ? at::zeros({Bn, E}, acc) : a.ddt_bias;
  s.p.ddt_low = mut3(bxl(d0.narrow(2, 0, R)), "dx_dbl");
  s.p.dB = mut4(bxl(d0.narrow(2, R, N)), "dx_dbl");
  s.p.dC = mut4(bxl(d0.narrow(2, R + N, N)), "dx_dbl");
  s.p.dBC_part = s.p.dlow_part = d0.numel();
  s.p.dw_dt = view_ptr<void>(dw, "ddt_proj_weight");
  s.p.dA = view_ptr<void>(dA, "dA_log");
  s.p.dD = view_ptr<void>(dD, "dD");
  s.p.ddelta_bias = view_ptr<void>(dbias, "ddt_proj_bias");
  s.p.deterministic = det;
  const int64_t chunks = ceil_div(L, kScanLanes * cfg.items);
  const at::Tensor chunk_states = chunks > 1 ? empty_output({Bn, E, chunks, N}, acc) : at::Tensor();
  s.p.chunk_states = rw_gptr<void>(chunk_states, "chunk_states");
  if (Bn > 0 && E > 0) launch_scan(s.p, s.in, s.in, true);
  if (det) {
    a.dx_dbl.add_(dx_dbl.sum(0));
    a.dw_dt.add_(dw.sum(0));
    a.dA_log.add_(dA.sum(0));
    a.dD.add_(dD.sum(0));
    a.ddt_bias.add_(dbias.sum(0));
  }
}

}  // namespace cuda
}  // namespace dmm

TORCH_LIBRARY_IMPL(dmm, DMM_KERNEL_DISPATCH_KEY, m) {
  m.impl("selective_scan_fwd", &dmm::cuda::selective_scan_fwd_cuda);
  m.impl("selective_scan_bwd", &dmm::cuda::selective_scan_bwd_cuda);
}
