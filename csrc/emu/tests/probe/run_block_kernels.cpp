// PROBE (not part of the CMake build): the unchanged kernel bodies of csrc/cuda/block_kernels.cuh,
// compiled as host C++ by the emulator and checked against a naive reference (ln_rows_kernel; the
// block's scan is kernel_checks' block_scan). Needs torch's headers (ATen) and the two stubs in stub/ for the CUDA-only
// torch headers that common.cuh includes; no torch library is linked. From the repository root,
// after building build/libdmm_emu.a:
//   T=$(python -c 'import torch, os; print(os.path.dirname(torch.__file__))')/include
//   g++ -std=c++17 -O1 -DDMM_CUDA_EMULATION -fno-extern-tls-init -Wno-unknown-pragmas \
//     -Icsrc/emu/shim -Icsrc/emu/tests/probe/stub -Icsrc -I$T -I$T/torch/csrc/api/include \
//     csrc/emu/tests/probe/run_block_kernels.cpp build/libdmm_emu.a -o /tmp/probe && /tmp/probe [seed]
#include "emu/launch.h"
namespace dmm { namespace cuda { namespace block { DMM_EMU_DYNAMIC_SHARED(smem_raw); } } }
#include "cuda/block_kernels.cuh"
#include <cstdio>
#include <cmath>
#include <vector>
#include <random>
using namespace dmm::cuda;
int main(int argc, char** argv) {
  dmm::emu::set_schedule_seed(argc > 1 ? std::strtoull(argv[1], 0, 0) : 0);
  std::mt19937 g(1); std::normal_distribution<float> nd;
  // ---- ln_rows_kernel: rows x D
  const int rows = 7, D = 96;
  std::vector<float> x(rows * D), w(D), bb(D), y(rows * D);
  for (auto& v : x) v = nd(g); for (auto& v : w) v = nd(g); for (auto& v : bb) v = nd(g);
  DMM_LAUNCH(2, 64, 0, nullptr, block::ln_rows_kernel<float>)(
      InPtr{x.data(), DType::kFloat}, InPtr{}, InPtr{w.data(), DType::kFloat}, InPtr{bb.data(), DType::kFloat},
      OutPtr{}, OutPtr{y.data(), DType::kFloat}, int64_t(rows), D, 1e-5f);
  double err = 0;
  for (int r = 0; r < rows; ++r) {
    double m = 0, q = 0; for (int d = 0; d < D; ++d) m += x[r*D+d]; m /= D;
    for (int d = 0; d < D; ++d) q += (x[r*D+d]-m)*(x[r*D+d]-m); q = 1/std::sqrt(q/D + 1e-5);
    for (int d = 0; d < D; ++d) err = std::max(err, std::fabs((x[r*D+d]-m)*q*w[d]+bb[d] - y[r*D+d]));
  }
  std::printf("ln_rows_kernel max err %.3g\n", err);
  return err < 1e-4 ? 0 : 1;
}
