#!/usr/bin/env bash
# The device run of the GPU issue, in one call on a lent GPU (read tools/gpu/README.md):
#   build   dmm_kernels._C for sm_90 (or use the .so carried from the CPU rehearsal when it loads)
#   tests   every test file with CUDA cases, and compute-sanitizer memcheck / racecheck /
#           synccheck / initcheck over tools/gpu/sanitize_driver.py, side by side; the same tests
#           with DMM_KERNELS_BACKEND=triton
#   bench   fused vs unfused block (tools/gpu/bench_block.py), benchmarks/scan_speed.py against
#           mamba-ssm (built for sm_90 from the sdist in .whl/) and torch.compile (CUDA kernels,
#           then the Triton backend), train_speed.py, rollout_speed.py
# Usage: bash tools/gpu_check.sh [--phase all|tests|bench] [--dry-run]
#   --dry-run: the CPU rehearsal: the same steps on CPU tensors with tiny shapes and no sanitizers,
#              so that no device minute goes to a typo (PYTHON=... picks the interpreter).
# Every step has a time limit inside a total budget (GPU_CHECK_BUDGET_S, default 540 s), so the
# call ends by itself and packs its logs: $OUT/summary.txt and $OUT/logs.tar.gz.
set -uo pipefail
cd "$(dirname "$0")/.."
PHASE=all
DRY=0
while [ $# -gt 0 ]; do
  case $1 in
    --phase) PHASE=$2; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-$PWD/gpu_check_out}
LOGS=$OUT/logs
mkdir -p "$LOGS"
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-540}
DEVICE=cuda
[ $DRY = 1 ] && DEVICE=cpu
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} DMM_FORCE_CUDA=1
unset DMM_KERNELS_LIBRARY DMM_KERNELS_BACKEND DMM_CUDA_BLOCK_UNFUSED

SUMMARY=$OUT/summary.txt
: >"$SUMMARY"
left() { echo $((BUDGET - SECONDS)); }
note() { echo "$*" | tee -a "$SUMMARY"; }
# run_step NAME LIMIT CMD...: log to $LOGS/NAME.log; the limit shrinks to what the budget has left.
run_step() {
  local name=$1 limit=$2
  shift 2
  local room=$(( $(left) - 20 ))
  if [ "$room" -lt 15 ]; then note "$(printf '%-24s SKIPPED (budget spent)' "$name")"; return 1; fi
  [ "$limit" -gt "$room" ] && limit=$room
  local t0=$SECONDS
  timeout "$limit" "$@" >"$LOGS/$name.log" 2>&1
  local rc=$?
  if [ $rc -eq 0 ]; then
    note "$(printf '%-24s ok      %4ss' "$name" $((SECONDS - t0)))"
  else
    note "$(printf '%-24s FAILED  %4ss  rc=%s%s' "$name" $((SECONDS - t0)) $rc \
      "$([ $rc = 124 ] && echo ' (time limit)')")"
    tail -n 30 "$LOGS/$name.log"
  fi
  return $rc
}
pack() {
  tar -C "$OUT" -czf "$OUT/logs.tar.gz" logs
  echo "== summary"; cat "$SUMMARY"
}
trap pack EXIT

{ nvidia-smi; nvcc --version; $PY -c "import torch, sys; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  $PY -m pip list 2>/dev/null | grep -iE "^(torch|triton|numpy|einops|pytest|transformers) "; } >"$LOGS/env.txt" 2>&1
head -n 12 "$LOGS/env.txt" | grep -E "NVIDIA|torch" | head -3

# Python packages the machine lacks (gymnasium for rollout_speed) travel as wheels in .whl/.
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >/dev/null 2>&1 \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi

# ---- mamba-ssm baseline: carried prebuilt (.whl/mamba/) or built here in the background ----------
MAMBA_DIR=""
if [ $DRY = 0 ]; then
  if [ -d .whl/mamba ] && PYTHONPATH=$PWD/.whl/mamba $PY -c "import torch, selective_scan_cuda" 2>/dev/null; then
    MAMBA_DIR=$PWD/.whl/mamba
    note "mamba-ssm: carried sm_90 build"
  elif ls .whl/mamba_ssm-*.tar.gz >/dev/null 2>&1; then
    MAMBA_DIR=/tmp/mamba/$(basename .whl/mamba_ssm-*.tar.gz .tar.gz)
    ( MAX_JOBS=12 $PY -m tools.gpu.build_mamba .whl/mamba_ssm-*.tar.gz /tmp/mamba --arch 90 \
        >"$LOGS/mamba_build.log" 2>&1; echo "rc=$?" >>"$LOGS/mamba_build.log" ) &
    MAMBA_PID=$!
    note "mamba-ssm: building for sm_90 in the background"
  fi
fi

# ---- build (or the carried .so) -------------------------------------------------------------------
SMOKE="import torch, dmm_kernels; assert dmm_kernels.HAS_EXTENSION, dmm_kernels.EXTENSION_ERROR
x = torch.randn(1, 2, 3, device='$DEVICE'); w = torch.randn(3, 2, 3, device='$DEVICE')
print('ops ok:', dmm_kernels.modal_mix(x, w).shape)"
if [ $DRY = 0 ] && ! $PY -c "$SMOKE" >"$LOGS/prebuilt_smoke.log" 2>&1; then
  note "carried _C does not load here ($(tail -n 1 "$LOGS/prebuilt_smoke.log")): building"
  rm -f dmm_kernels/_C*.so
  run_step build 300 $PY setup.py build_ext --inplace || exit 1
fi
run_step smoke 60 $PY -c "$SMOKE" || exit 1
SO=$(ls dmm_kernels/_C*.so | head -1)
command -v cuobjdump >/dev/null && cuobjdump --dump-resource-usage "$SO" >"$LOGS/resource_usage.txt" 2>&1

# ---- tests and sanitizers, side by side -------------------------------------------------------------
CUDA_TESTS="tests/test_selective_scan.py tests/test_selective_scan_mamba.py tests/test_modal_mix.py
  tests/test_ops_registration.py tests/test_block.py tests/test_step.py tests/test_block_cuda.py"
if [ "$PHASE" != bench ]; then
  SANITIZER_PIDS=()
  if [ $DRY = 0 ] && command -v compute-sanitizer >/dev/null; then
    for tool in memcheck racecheck synccheck initcheck; do
      # No caching allocator: every tensor is its own allocation, so memcheck sees overruns.
      run_step "sanitizer_$tool" 300 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer \
        --tool "$tool" --error-exitcode 99 --print-limit 30 $PY -m tools.gpu.sanitize_driver &
      SANITIZER_PIDS+=($!)
    done
  else
    run_step sanitize_driver 120 $PY -m tools.gpu.sanitize_driver --device "$DEVICE"
  fi
  XDIST=""
  $PY -c "import xdist" 2>/dev/null && XDIST="-n 6"
  if [ $DRY = 1 ]; then
    run_step pytest 300 $PY -m pytest -q -x --co $CUDA_TESTS
  else
    run_step pytest 300 $PY -m pytest -q -rs $XDIST --junitxml="$LOGS/junit.xml" $CUDA_TESTS
    grep -E "passed|failed" "$LOGS/pytest.log" | tail -n 1 | tee -a "$SUMMARY"
    grep -E "^FAILED|^ERROR" "$LOGS/pytest.log" | head -n 40 | tee -a "$SUMMARY"
  fi
  for pid in "${SANITIZER_PIDS[@]}"; do wait "$pid"; done
  # The Triton backend on the same CUDA tests (compiled by Triton on the GPU, no toolkit needed).
  if [ $DRY = 0 ]; then
    run_step pytest_triton 240 env DMM_KERNELS_BACKEND=triton $PY -m pytest -q -rs $XDIST \
      --junitxml="$LOGS/junit_triton.xml" $CUDA_TESTS tests/test_backend.py
    grep -E "passed|failed" "$LOGS/pytest_triton.log" | tail -n 1 | tee -a "$SUMMARY"
  fi
fi

# ---- benchmarks --------------------------------------------------------------------------------------
if [ "$PHASE" != tests ]; then
  QUICK=""; [ $DRY = 1 ] && QUICK="--quick"
  run_step bench_fused 150 $PY -m tools.gpu.bench_block "$LOGS/bench_fused.json" --device "$DEVICE" $QUICK
  run_step bench_unfused 150 env DMM_CUDA_BLOCK_UNFUSED=1 $PY -m tools.gpu.bench_block \
    "$LOGS/bench_unfused.json" --device "$DEVICE" $QUICK
  [ -f "$LOGS/bench_fused.json" ] && [ -f "$LOGS/bench_unfused.json" ] &&
    $PY -m tools.gpu.bench_table "$LOGS/bench_fused.json" "$LOGS/bench_unfused.json" | tee "$LOGS/bench_table.md"
  if [ -n "${MAMBA_PID:-}" ]; then
    timeout $(( $(left) > 200 ? $(left) - 200 : 1 )) tail --pid="$MAMBA_PID" -f /dev/null
    tail -n 3 "$LOGS/mamba_build.log" | tee -a "$SUMMARY"
  fi
  [ -n "$MAMBA_DIR" ] && export PYTHONPATH=$PYTHONPATH:$MAMBA_DIR
  SCAN="-m benchmarks.scan_speed --device $DEVICE --out $LOGS"
  if [ $DRY = 1 ]; then
    run_step scan_speed 200 $PY $SCAN --shapes tiny --reps 2
  else
    run_step scan_speed 200 $PY $SCAN --shapes paper,rl-large,long --compile-shapes paper
  fi
  [ $DRY = 0 ] && run_step scan_speed_triton 150 env DMM_KERNELS_BACKEND=triton $PY $SCAN \
    --shapes paper,long --compile-shapes "" --out "$LOGS/triton"
  STEPS=20; [ $DRY = 1 ] && STEPS=2
  run_step train_speed 90 $PY -m benchmarks.train_speed --devices "$DEVICE" --steps $STEPS \
    --out "$LOGS/train_speed.csv"
  run_step rollout_speed 90 $PY -m benchmarks.rollout_speed --device "$DEVICE" --steps $((STEPS * 10)) \
    --out "$LOGS/rollout_speed.csv"
fi
exit 0
