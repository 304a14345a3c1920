#!/usr/bin/env bash
# The C++ deployment path, end to end (CI runs it after the CMake build):
#   1. libdmm_ops from the CMake build installed into a prefix, with a SONAME and no Python symbol;
#   2. this example built against libtorch and find_package(dmm_ops);
#   3. a tiny run exported twice (recurrent with the plain torch ops, window with the dmm ops, which
#      only load in C++ through libdmm_ops), and the C++ Policy's actions compared with Python's.
# Usage: bash examples/cpp_policy/check.sh CMAKE_BUILD_DIR PYTHON [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:?usage: check.sh CMAKE_BUILD_DIR PYTHON [WORK_DIR]}
py=${2:?usage: check.sh CMAKE_BUILD_DIR PYTHON [WORK_DIR]}
if [ -n "${3:-}" ]; then mkdir -p "$3"; work=$(cd "$3" && pwd); else work=$(mktemp -d); trap 'rm -rf "$work"' EXIT; fi
jobs=${MAX_JOBS:-$(nproc)}
fail() { echo "cpp_policy check: $*" >&2; exit 1; }

cmake --build "$build" --target dmm_ops -j"$jobs"
cmake --install "$build" --prefix "$work/prefix" >/dev/null
lib=$(readlink -f "$work/prefix/lib/libdmm_ops.so")
readelf -d "$lib" | grep -q "SONAME.*\[libdmm_ops\.so\.0\]" || fail "$lib has no SONAME libdmm_ops.so.0"
if nm -D --undefined-only "$lib" | grep -E " _?Py"; then fail "$lib needs the Python symbols above"; fi
if ldd "$lib" | grep -i libpython; then fail "$lib links libpython"; fi
echo "cpp_policy check: $lib: SONAME libdmm_ops.so.0, no Python symbol"

torch_prefix=$("$py" -c "import torch; print(torch.utils.cmake_prefix_path)")
cuda_args=()
if [ -n "$("$py" -c "import torch; print(torch.version.cuda or '')")" ]; then
  # TorchConfig of a CUDA build of torch insists on a toolkit even for a CPU program.
  cuda_home=${CUDA_HOME:-/usr/local/cuda}
  cuda_args=(-DCUDA_TOOLKIT_ROOT_DIR="$cuda_home" -DCMAKE_CUDA_COMPILER="$cuda_home/bin/nvcc"
             -DTORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0}")
fi
cmake -S examples/cpp_policy -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$torch_prefix;$work/prefix" "${cuda_args[@]}" >/dev/null
cmake --build "$work/build" -j"$jobs"

"$py" examples/cpp_policy/make_fixture.py "$work/fixture"
for name in recurrent-reference window-dmm; do
  # The same compiled code on the same float32 inputs: equal up to rounding in the runner.
  "$work/build/policy_check" replay "$work/fixture/$name.pt2" "$work/fixture/steps.txt" \
    "$work/fixture/$name.expected.txt" 1e-6 || fail "$name: C++ actions differ from Python's"
done
echo "cpp_policy check: passed"
