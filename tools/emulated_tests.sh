#!/usr/bin/env bash
# The op test suites against the emulated CUDA kernels (libdmm_emulated.so of a CMake build): every
# kernel of csrc/cuda runs in the CPU emulator (csrc/emu) against dmm_kernels.reference, first in the
# in-order schedule, then a part of it again under a fuzzed schedule (DMM_EMU_SEED).
#   tools/emulated_tests.sh BUILD_DIR [PYTHON] [--asan] [extra pytest args]
# --asan: BUILD_DIR is a -DDMM_ASAN=ON [-DDMM_UBSAN=ON] build; Python runs with the sanitizer
# runtimes preloaded (leak checking off: the interpreter's own allocations are not ours), and only the
# selective-scan / modal-mix / emulator suites run (the block suites' kernels are checked unsanitized).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:?usage: tools/emulated_tests.sh BUILD_DIR [PYTHON] [--asan]}
py=${2:-.venv/bin/python}
shift $(( $# >= 2 ? 2 : 1 ))
asan=0
if [ "${1:-}" = "--asan" ]; then asan=1; shift; fi
lib="$PWD/$build/libdmm_emulated.so"
[ -f "$lib" ] || lib="$build/libdmm_emulated.so"
[ -f "$lib" ] || { echo "emulated_tests: no libdmm_emulated.so in $build" >&2; exit 1; }
export DMM_KERNELS_LIBRARY="$lib" OMP_NUM_THREADS=1
suites=(tests/test_emulated_kernels.py tests/test_selective_scan.py tests/test_modal_mix.py
        tests/test_ops_registration.py tests/test_block.py tests/test_block_cuda.py tests/test_step.py)
if [ "$asan" = 1 ]; then
  preload="$(g++ -print-file-name=libasan.so)"
  if grep -q "DMM_UBSAN:BOOL=ON" "$build/CMakeCache.txt" 2>/dev/null; then
    preload="$preload $(g++ -print-file-name=libubsan.so)"
  fi
  export LD_PRELOAD="$preload"
  export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:detect_stack_use_after_return=0"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
  suites=(tests/test_emulated_kernels.py tests/test_selective_scan.py tests/test_modal_mix.py)
fi
start=$(date +%s)
"$py" -m pytest -q -p no:cacheprovider "${suites[@]}" "$@"
echo "emulated_tests: in-order schedule: $(( $(date +%s) - start )) s"
# Fuzzed schedules: thread order between sync points and block order drawn from the seed.
for seed in 7 1234; do
  DMM_EMU_SEED=$seed "$py" -m pytest -q -p no:cacheprovider tests/test_selective_scan.py \
    tests/test_block_cuda.py -k "gradients_match or many_states or float64 or step_sequence" "$@"
done
echo "emulated_tests: total $(( $(date +%s) - start )) s"
