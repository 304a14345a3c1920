// Input validation shared by the CPU and CUDA kernels (device-agnostic, header-only).
// Every failure is a TORCH_CHECK naming the op, the argument and the expected shape, so a
// user sees e.g. "selective_scan: B must be (batch, N, L) or (batch, G, N, L) = (2, 16, 24);
// got (2, 16, 23)".
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <sstream>
#include <initializer_list>
#include <string>
#include <vector>

#include "dmm_limits.h"

namespace dmm {

inline std::string shape_str(c10::IntArrayRef sizes) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < sizes.size(); ++i) os << (i ? ", " : "") << sizes[i];
  os << ")";
  return os.str();
}

inline void check_float(const char* op, const char* name, const at::Tensor& t) {
  const auto st = t.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kBFloat16 || st == at::kHalf || st == at::kDouble,
              op, ": ", name, " must be float32, bfloat16, float16 or float64; got ", st);
}

inline void check_device(const char* op, const char* name, const at::Tensor& t,
                         const at::Tensor& ref) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(),
              " but u is on ", ref.device(), "; move all inputs to one device");
}

// `layout` names the dimensions, e.g. "(batch, E, L)".
inline void check_shape(const char* op, const char* name, const at::Tensor& t,
                        c10::IntArrayRef expected, const char* layout) {
  TORCH_CHECK(t.sizes() == expected, op, ": ", name, " must be ", layout, " = ",
              shape_str(expected), "; got ", shape_str(t.sizes()));
}

// A present tensor argument: float dtype, on u's device, given shape.
inline void check_arg(const char* op, const char* name, const at::Tensor& t, const at::Tensor& u,
                      c10::IntArrayRef expected, const char* layout) {
  check_device(op, name, t, u);
  check_float(op, name, t);
  check_shape(op, name, t, expected, layout);
}

// ---- selective scan ---------------------------------------------------------------------------
struct ScanDims {
  int64_t batch, dim, len, dstate, n_groups;
  bool grouped;  // B / C given as (batch, G, N, L)
};

inline ScanDims check_selective_scan(const at::Tensor& u, const at::Tensor& delta,
                                     const at::Tensor& A, const at::Tensor& B,
                                     const at::Tensor& C, const c10::optional<at::Tensor>& D,
                                     const c10::optional<at::Tensor>& z,
                                     const c10::optional<at::Tensor>& delta_bias) {
  constexpr const char* op = "selective_scan";
  check_float(op, "u", u);
  TORCH_CHECK(u.dim() == 3, op, ": u must be (batch, E, L); got ", shape_str(u.sizes()));
  TORCH_CHECK(A.dim() == 2 && A.size(0) == u.size(1), op, ": A must be (E, N) with E = ",
              u.size(1), " (u's dim 1); got ", shape_str(A.sizes()));
  TORCH_CHECK(!A.is_complex(), op, ": A must be real (complex A is not supported)");
  ScanDims d{u.size(0), u.size(1), u.size(2), A.size(1), 1, B.dim() == 4};
  check_arg(op, "delta", delta, u, u.sizes(), "(batch, E, L)");
  check_arg(op, "A", A, u, A.sizes(), "(E, N)");
  TORCH_CHECK(B.dim() == 3 || B.dim() == 4, op, ": B must be (batch, N, L) or (batch, G, N, L) = ",
              shape_str({d.batch, d.dstate, d.len}), "; got ", shape_str(B.sizes()));
  if (d.grouped) {
    d.n_groups = B.size(1);
    TORCH_CHECK(d.n_groups >= 1 && d.dim % d.n_groups == 0, op, ": B's group count G = ",
                d.n_groups, " must divide E = ", d.dim);
  }
  const std::vector<int64_t> bc_shape =
      d.grouped ? std::vector<int64_t>{d.batch, d.n_groups, d.dstate, d.len}
                : std::vector<int64_t>{d.batch, d.dstate, d.len};
  const char* bc_layout = d.grouped ? "(batch, G, N, L)" : "(batch, N, L)";
  check_device(op, "B", B, u);
  check_float(op, "B", B);
  TORCH_CHECK(B.sizes() == c10::IntArrayRef(bc_shape), op,
              ": B must be (batch, N, L) or (batch, G, N, L) = ", shape_str(bc_shape), "; got ",
              shape_str(B.sizes()));
  check_arg(op, "C", C, u, bc_shape, bc_layout);
  if (D.has_value()) check_arg(op, "D", *D, u, {d.dim}, "(E,)");
  if (z.has_value()) check_arg(op, "z", *z, u, u.sizes(), "(batch, E, L)");
  if (delta_bias.has_value()) check_arg(op, "delta_bias", *delta_bias, u, {d.dim}, "(E,)");
  return d;
}

// ---- modal mixer ------------------------------------------------------------------------------
struct ModalMixDims {
  int64_t batch, len, dim, n_modalities, width, phase;
  int64_t dim_out;  // output width: D for "conv", weight.size(1) for "line"
  bool line;  // kind "line" (dense over the window) rather than "conv" (depthwise)
};

inline ModalMixDims check_modal_mix(const at::Tensor& u, const at::Tensor& weight,
                                    const c10::optional<at::Tensor>& bias, c10::string_view kind,
                                    int64_t n_modalities, int64_t phase) {
  constexpr const char* op = "modal_mix";
  TORCH_CHECK(kind == "conv" || kind == "line", op, ": kind must be \"conv\" or \"line\"; got \"",
              kind, "\"");
  TORCH_CHECK(n_modalities >= 1, op, ": n_modalities must be >= 1; got ", n_modalities);
  TORCH_CHECK(phase >= 0 && phase < n_modalities, op, ": phase must be in [0, n_modalities) = [0, ",
              n_modalities, "); got ", phase);
  check_float(op, "u", u);
  TORCH_CHECK(u.dim() == 3, op, ": u must be (batch, L, D); got ", shape_str(u.sizes()));
  check_device(op, "weight", weight, u);
  check_float(op, "weight", weight);
  ModalMixDims d{u.size(0), u.size(1), u.size(2), n_modalities, 0, phase, u.size(2),
                 kind == "line"};
  const char* layout = d.line ? "(n_modalities, D_out, W*D)" : "(n_modalities, W, D)";
  TORCH_CHECK(weight.dim() == 3 && weight.size(0) == n_modalities, op, ": weight must be ", layout,
              " with n_modalities = ", n_modalities, " and D = ", d.dim, "; got ",
              shape_str(weight.sizes()));
  if (d.line) {
    TORCH_CHECK(d.dim > 0 && weight.size(2) % d.dim == 0, op,
                ": weight must be (n_modalities, D_out, W*D) with D = ", d.dim, "; got ",
                shape_str(weight.sizes()));
    d.width = weight.size(2) / d.dim;
    d.dim_out = weight.size(1);
  } else {
    TORCH_CHECK(weight.size(2) == d.dim, op, ": weight must be (n_modalities, W, D) with D = ",
                d.dim, "; got ", shape_str(weight.sizes()));
    d.width = weight.size(1);
  }
  TORCH_CHECK(d.width >= 1 && d.width <= kMaxModalMixWindow, op, ": weight's window W = ", d.width,
              " must be in [1, ", kMaxModalMixWindow, "] (kernel limit); weight shape ",
              shape_str(weight.sizes()));
  if (bias.has_value())
    check_arg(op, "bias", *bias, u, {n_modalities, d.dim_out},
              d.line ? "(n_modalities, D_out)" : "(n_modalities, D)");
  return d;
}

// The dtype kernels accumulate in (same rule as dmm_kernels.reference): float64 if any input
// is float64 (for gradcheck), else float32.
inline at::ScalarType acc_type_for(std::initializer_list<c10::optional<at::Tensor>> tensors) {
  for (const auto& t : tensors)
    if (t.has_value() && t->defined() && t->scalar_type() == at::kDouble) return at::kDouble;
  return at::kFloat;
}

}  // namespace dmm
