// Timing of dmm::metamamba_steps called from C++ (benchmarks/step_latency.py --cpp builds it with
// torch.utils.cpp_extension.load): what a C++ runner pays per action for the blocks, with no
// Python argument parsing. One action = three tokens, each one boxed dispatcher call with
// prebuilt arguments.
#include <torch/extension.h>

#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <chrono>
#include <optional>
#include <string>
#include <vector>

// params: one list per block parameter (BlockParams order), one entry per layer (None allowed).
double steps_median_us(const at::Tensor& h, std::vector<at::Tensor> mixer1,
                       std::vector<at::Tensor> mixer2, std::vector<at::Tensor> ssm_state,
                       std::vector<std::vector<std::optional<at::Tensor>>> params,
                       std::vector<at::Tensor> A, std::string mixer, int64_t n_modalities,
                       bool residual_ssm, double eps, int64_t actions, int64_t warmup) {
  const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("dmm::metamamba_steps", "");
  const auto& schema_args = op.schema().arguments();
  auto tensor_list = [](const std::vector<at::Tensor>& v) {
    return c10::IValue(c10::List<at::Tensor>(v));
  };
  std::vector<c10::IValue> base{h, tensor_list(mixer1), tensor_list(mixer2), tensor_list(ssm_state)};
  for (size_t i = 0; i < params.size(); ++i) {
    const auto& list_type = schema_args[4 + i].type()->expectRef<c10::ListType>();
    if (list_type.getElementType()->kind() == c10::TypeKind::OptionalType) {
      c10::List<std::optional<at::Tensor>> list;
      for (const auto& t : params[i]) list.push_back(t);
      base.emplace_back(std::move(list));
    } else {
      std::vector<at::Tensor> list;
      for (const auto& t : params[i]) list.push_back(t.value());
      base.push_back(tensor_list(list));
    }
  }
  base.push_back(tensor_list(A));
  base.emplace_back(mixer);
  base.emplace_back(n_modalities);
  base.emplace_back(residual_ssm);
  base.emplace_back(eps);
  base.emplace_back(int64_t(0));  // position

  int64_t position = 0;
  auto action = [&] {
    for (int token = 0; token < 3; ++token) {
      std::vector<c10::IValue> stack(base);
      stack.back() = c10::IValue(position++);
      op.callBoxed(&stack);
    }
  };
  for (int64_t i = 0; i < warmup; ++i) action();
  std::vector<double> us(actions);
  for (int64_t i = 0; i < actions; ++i) {
    const auto start = std::chrono::steady_clock::now();
    action();
    us[i] = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start)
                .count();
  }
  std::nth_element(us.begin(), us.begin() + actions / 2, us.end());
  return us[actions / 2];
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("steps_median_us", &steps_median_us); }
