#!/usr/bin/env bash
# One call on a lent GPU for the fused block (csrc/cuda/block.cu, issue 3):
#   1. build dmm_kernels._C in place with setup.py (CUDA forced, sm_90 unless TORCH_CUDA_ARCH_LIST)
#   2. the CUDA tests (tests/test_block_cuda.py and any other tests/*cuda*.py)
#   3. compute-sanitizer memcheck / racecheck / synccheck / initcheck on tiny shapes
#   4. timing: fused vs composite (DMM_CUDA_BLOCK_UNFUSED=1) forward, forward+backward and step,
#      launches per call, peak memory; then benchmarks/scan_speed.py when present
# Logs go to $OUT (default ./gpu_check_out); the summary table is printed last.
# Usage (repository root): bash tools/gpu_check.sh [--quick]   (--quick: skip sanitizers and bench)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
QUICK=${1:-}
export DMM_FORCE_CUDA=1
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-16}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
unset DMM_KERNELS_LIBRARY DMM_KERNELS_FORCE_REFERENCE DMM_CUDA_BLOCK_UNFUSED

SUMMARY=()
STATUS=0
run_step() {  # run_step NAME TIMEOUT_S CMD...: log to $OUT/NAME.log, record the outcome
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  echo "== $name: $*"
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  local dt=$((SECONDS - t0))
  if [ $rc -eq 0 ]; then
    SUMMARY+=("$(printf '%-22s ok      %4ss' "$name" "$dt")")
  else
    SUMMARY+=("$(printf '%-22s FAILED  %4ss  rc=%s (see %s.log)' "$name" "$dt" "$rc" "$name")")
    STATUS=1
    tail -25 "$OUT/$name.log"
  fi
  return $rc
}

{ nvidia-smi; nvcc --version; $PY -c "import torch; print(torch.__version__, torch.version.cuda)"; } \
  >"$OUT/env.txt" 2>&1

# ---- 0. mamba-ssm baseline (background) ------------------------------------------------------
# The GPU machine has no network: carry its sdist in .whl/ (here: `pip download --no-deps
# --no-build-isolation mamba-ssm==2.3.2.post1 -d .whl`) and name .whl in the run's carry.
MAMBA_SDIST=$(ls .whl/mamba_ssm-*.tar.gz 2>/dev/null | head -1)
if [ -n "$MAMBA_SDIST" ]; then
  echo "== mamba-ssm: building $MAMBA_SDIST for sm_90 in the background (log: $OUT/mamba_build.log)"
  ( MAMBA_FORCE_BUILD=TRUE TORCH_CUDA_ARCH_LIST=9.0 $PY -m pip install --no-build-isolation --no-deps \
      "$MAMBA_SDIST" >"$OUT/mamba_build.log" 2>&1 ) &
  MAMBA_PID=$!
fi

# ---- 1. build ----------------------------------------------------------------------------------
run_step build 580 $PY setup.py build_ext --inplace || { printf '%s\n' "${SUMMARY[@]}"; exit 1; }
SO=$(ls dmm_kernels/_C*.so 2>/dev/null | head -1)
if [ -n "$SO" ] && command -v cuobjdump >/dev/null; then  # registers / smem / stack of our kernels
  cuobjdump --dump-resource-usage "$SO" 2>&1 | grep -A1 -E "5block" >"$OUT/resource_usage_block.txt"
fi

# ---- 2. tests ----------------------------------------------------------------------------------
CUDA_TESTS=$(ls tests/test_block_cuda.py tests/*cuda*.py 2>/dev/null | sort -u | tr '\n' ' ')
run_step pytest_cuda 500 $PY -m pytest -q -rs $CUDA_TESTS
run_step pytest_block_cpu 300 $PY -m pytest -q -x tests/test_block.py tests/test_step.py

if [ "$QUICK" = "--quick" ]; then
  printf '%s\n' "${SUMMARY[@]}"
  exit $STATUS
fi

# ---- 3. sanitizers -----------------------------------------------------------------------------
cat >"$OUT/sanitize_driver.py" <<'EOF'
# Tiny shapes through every fused kernel: tiles that end mid-tile (L = 13, 7), D not a multiple of
# 32, N = 32 (8 lanes per channel), one modality, W = 1, fp32 / bf16 / fp64; the composite backward.
import torch
import dmm_kernels
from dmm_kernels import reference as ref
assert dmm_kernels.HAS_EXTENSION, dmm_kernels.EXTENSION_ERROR
cases = [  # (mixer, B, L, D, N, window, M)
    ("conv", 2, 13, 32, 16, 6, 3), ("line", 1, 7, 48, 16, 6, 3), ("double-conv", 2, 13, 40, 32, 4, 2),
    ("double-line", 1, 13, 32, 16, 6, 1), ("conv", 1, 5, 32, 8, 1, 3),
]
for dtype in (torch.float32, torch.bfloat16, torch.float64):
    for mixer, B, L, D, N, W, M in cases:
        p = ref.make_block_params(D, mixer, d_state=N, window=W, n_modalities=M, dtype=dtype, device="cuda")
        args = [p.get(k) for k in ref.PARAM_NAMES]
        h = torch.randn(B, L, D, device="cuda", dtype=dtype)
        out = torch.ops.dmm.metamamba_block_fwd(h, *args, mixer, M, False, 1e-5)
        if dtype == torch.float32:
            torch.ops.dmm.metamamba_block_bwd(torch.randn_like(out), h, *args, mixer, M, False, 1e-5)
        cache = ref.allocate_step_cache_ref(B, p, mixer, dtype, "cuda")
        for t in range(4):
            torch.ops.dmm.metamamba_step(h[:, t % L], cache["mixer1_cache"], cache["mixer2_cache"],
                                         cache["ssm_state"], *args, mixer, M, True, 1e-5, t)
        torch.cuda.synchronize()
print("sanitize driver done")
EOF
if command -v compute-sanitizer >/dev/null; then
  for tool in memcheck racecheck synccheck initcheck; do
    # No caching allocator: every tensor is its own allocation, so memcheck sees overruns.
    run_step "sanitizer_$tool" 300 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
      compute-sanitizer --tool "$tool" --error-exitcode 99 --print-limit 30 \
      $PY "$OUT/sanitize_driver.py"
  done
else
  SUMMARY+=("sanitizers             SKIPPED (no compute-sanitizer)")
fi

# ---- 4. timing -----------------------------------------------------------------------------------
cat >"$OUT/bench_block.py" <<'EOF'
# Median CUDA-event times of the block op (fwd, fwd+bwd) and of the step op (eager, graph replay)
# over 8 rotating input sets; launches per call from the profiler; peak memory of one forward.
import json, os, sys, statistics
import torch
import dmm_kernels
from dmm_kernels import reference as ref
torch.backends.cuda.matmul.allow_tf32 = False
SHAPES = {"paper": (64, 24, 128), "rl-large": (256, 60, 256)}
MIXERS = ("conv", "line", "double-conv")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}

def median_ms(fn, inputs, reps=50, warmup=10):
    for i in range(warmup):
        fn(inputs[i % len(inputs)])
    times = []
    for i in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(inputs[i % len(inputs)]); b.record(); b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)

def launches(fn, x):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn(x); torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)

rows = []
for shape_name, (B, L, D) in SHAPES.items():
    for mixer in MIXERS:
        for dname, dtype in DTYPES.items():
            p = ref.make_block_params(D, mixer, dtype=dtype, device="cuda")
            for k in ("A_log", "D", "dt_proj_bias"):
                p[k] = p[k].float()
            hs = [torch.randn(B, L, D, device="cuda", dtype=dtype) for _ in range(8)]
            fwd = lambda h: dmm_kernels.metamamba_block(h, p, mixer)
            for v in p.values():
                if v is not None:
                    v.requires_grad_()
            hg = [h.clone().requires_grad_() for h in hs]
            def fwd_bwd(h):
                dmm_kernels.metamamba_block(h, p, mixer).sum().backward()
            with torch.no_grad():
                torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
                fwd(hs[0]); torch.cuda.synchronize()
                peak = (torch.cuda.max_memory_allocated() - base) / 2**20
                t_fwd = median_ms(fwd, hs)
                n_fwd = launches(fwd, hs[0])
            t_fb = median_ms(fwd_bwd, hg, reps=20, warmup=3)
            # step: one token for B rows, eager and as a captured graph
            cache = ref.allocate_step_cache_ref(B, p, mixer, dtype, "cuda")
            xs = [torch.randn(B, D, device="cuda", dtype=dtype) for _ in range(8)]
            pa = [None if p.get(k) is None else p[k].detach() for k in ref.PARAM_NAMES]
            step = lambda x: torch.ops.dmm.metamamba_step(
                x, cache["mixer1_cache"], cache["mixer2_cache"], cache["ssm_state"], *pa, mixer,
                3, False, 1e-5, 4)
            t_step = median_ms(step, xs, reps=200, warmup=20)
            n_step = launches(step, xs[0])
            x_static = xs[0].clone()
            s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                step(x_static)
            torch.cuda.current_stream().wait_stream(s)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                step(x_static)
            t_graph = median_ms(lambda x: g.replay(), xs, reps=200, warmup=20)
            rows.append(dict(shape=shape_name, mixer=mixer, dtype=dname, fwd_ms=t_fwd,
                             fwd_bwd_ms=t_fb, fwd_launches=n_fwd, fwd_peak_mib=peak,
                             step_ms=t_step, step_graph_ms=t_graph, step_launches=n_step))
json.dump(rows, open(sys.argv[1], "w"), indent=1)
EOF
cat >"$OUT/bench_table.py" <<'EOF'
import json, sys
fused, unfused = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
print(f"{'shape':9}{'mixer':12}{'dt':5}| fwd ms f/u (launch f/u) | fwd+bwd ms f/u | step us f/u "
      f"(graph f/u) launch f/u | peak MiB f/u")
for f, u in zip(fused, unfused):
    print(f"{f['shape']:9}{f['mixer']:12}{f['dtype']:5}| {f['fwd_ms']:.3f}/{u['fwd_ms']:.3f} "
          f"({f['fwd_launches']}/{u['fwd_launches']}) | {f['fwd_bwd_ms']:.3f}/{u['fwd_bwd_ms']:.3f} | "
          f"{1e3*f['step_ms']:.0f}/{1e3*u['step_ms']:.0f} ({1e3*f['step_graph_ms']:.0f}/"
          f"{1e3*u['step_graph_ms']:.0f}) {f['step_launches']}/{u['step_launches']} | "
          f"{f['fwd_peak_mib']:.1f}/{u['fwd_peak_mib']:.1f}")
EOF
run_step bench_fused 240 $PY "$OUT/bench_block.py" "$OUT/bench_fused.json"
run_step bench_unfused 240 env DMM_CUDA_BLOCK_UNFUSED=1 $PY "$OUT/bench_block.py" "$OUT/bench_unfused.json"
if [ -f "$OUT/bench_fused.json" ] && [ -f "$OUT/bench_unfused.json" ]; then
  $PY "$OUT/bench_table.py" "$OUT/bench_fused.json" "$OUT/bench_unfused.json" | tee "$OUT/bench_table.txt"
fi
[ -n "${MAMBA_PID:-}" ] && { wait "$MAMBA_PID" || echo "mamba-ssm build failed: baselines use the reference scan"; }
run_step scan_speed 300 $PY benchmarks/scan_speed.py --out "$OUT/scan_speed"

echo "== summary (logs in $OUT)"
printf '%s\n' "${SUMMARY[@]}"
exit $STATUS
