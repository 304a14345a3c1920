#!/usr/bin/env bash
# The op test suites against the emulated CUDA kernels (libdmm_emulated.so of a CMake build): every
# kernel of csrc/cuda runs in the CPU emulator (csrc/emu) against dmm_kernels.reference, with the
# race check on (DMM_EMU_RACECHECK=1), once in the in-order schedule and once per fuzzed schedule
# (DMM_EMU_SEED: thread order between sync points and block order). Every pass runs even when an
# earlier one failed; the exit status is non-zero when any failed.
#   tools/emulated_tests.sh BUILD_DIR [PYTHON] [--asan] [extra pytest args]
# --asan: BUILD_DIR is a -DDMM_ASAN=ON [-DDMM_UBSAN=ON] build; Python runs with the sanitizer
# runtimes preloaded (leak checking off: the interpreter's own allocations are not ours); the same
# suites run, in order and under one fuzzed schedule.
set -uo pipefail
cd "$(dirname "$0")/.."
build=${1:?usage: tools/emulated_tests.sh BUILD_DIR [PYTHON] [--asan]}
py=${2:-.venv/bin/python}
shift $(( $# >= 2 ? 2 : 1 ))
asan=0
if [ "${1:-}" = "--asan" ]; then asan=1; shift; fi
lib="$PWD/$build/libdmm_emulated.so"
[ -f "$lib" ] || lib="$build/libdmm_emulated.so"
[ -f "$lib" ] || { echo "emulated_tests: no libdmm_emulated.so in $build" >&2; exit 1; }
export DMM_KERNELS_LIBRARY="$lib" OMP_NUM_THREADS=1 DMM_EMU_RACECHECK=1
suites=(tests/test_emulated_kernels.py tests/test_selective_scan.py tests/test_modal_mix.py
        tests/test_ops_registration.py tests/test_block.py tests/test_block_cuda.py tests/test_step.py)
seeds=(0 7 1234)  # 0: in order
if [ "$asan" = 1 ]; then
  preload="$(g++ -print-file-name=libasan.so)"
  if grep -q "DMM_UBSAN:BOOL=ON" "$build/CMakeCache.txt" 2>/dev/null; then
    preload="$preload $(g++ -print-file-name=libubsan.so)"
  fi
  export LD_PRELOAD="$preload"
  export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:detect_stack_use_after_return=0"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
  seeds=(0 7)
fi
start=$(date +%s)
failed=()
for seed in "${seeds[@]}"; do
  t0=$(date +%s)
  if ! DMM_EMU_SEED=$seed "$py" -m pytest -q -p no:cacheprovider "${suites[@]}" "$@"; then
    failed+=("seed $seed")
  fi
  echo "emulated_tests: schedule seed $seed: $(( $(date +%s) - t0 )) s"
done
echo "emulated_tests: total $(( $(date +%s) - start )) s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "emulated_tests: FAILED under: ${failed[*]}" >&2
  exit 1
fi
