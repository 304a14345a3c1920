"""Latency of one action: batch 1, one CPU thread, median over N actions, for the ways a trained
policy can run (random weights: latency does not depend on them; Hopper's sizes, S 11, A 3):

  eager window      the paper's protocol as `dmm eval --mode window` (re-read the last K steps),
                    with the plain PyTorch reference ("reference") and with the dmm ops ("dmm")
  eager recurrent   `dmm eval --mode recurrent`: RecurrentPolicy, one token at a time (3 per
                    action), with the dmm ops
  aoti              the `dmm export` package (dmm/export.py) of a mode, with the plain torch ops
                    ("reference": the compiler sees them) or the dmm ops (opaque calls), called
                    from Python; and from C++ (examples/cpp_policy `policy_check bench`, the whole
                    Policy::act) when --cpp names the built policy_check

Models: "default" (default.yaml: d_model 64, 3 layers, conv mixer, K 8, W 6) and "v1" (the
paper's v1 size: d_model 128, 3 layers, conv, K 8). Python rows time the model call on a
normalized state (the runner's bookkeeping is outside it); C++ rows time Policy::act whole.

    python -m benchmarks.policy_latency [--actions 2000] [--models default v1]
        [--modes recurrent window] [--cpp build/cpp_policy/policy_check]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import dmm_kernels
from benchmarks.csv_out import write_rows
from dmm import build_model, export
from dmm.evaluate import _RecurrentStepper, _WindowStepper

S, A = 11, 3  # Hopper
MODELS = {
    "default": {"model": "dmm", "mixer": "conv", "d_model": 64, "n_layers": 3, "context_len": 8,
                "window": 6, "dropout": 0.0},
    "v1": {"model": "dmm", "mixer": "conv", "d_model": 128, "n_layers": 3, "context_len": 8,
           "window": 6, "dropout": 0.0},
}


def median_us(step, n: int, warmup: int = 50) -> float:
    """Median microseconds of step(i) over n calls (a new episode every 1000, as MuJoCo's)."""
    times = []
    with torch.no_grad():
        for i in range(n + warmup):
            t0 = time.perf_counter()
            step(i)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def states(n: int) -> torch.Tensor:
    return torch.randn(n, 1, S, generator=torch.Generator().manual_seed(0))   # (n, 1, S)


def eager_row(model, mode: str, ops: str, n: int) -> float:
    xs, rtg = states(n + 50), torch.full((1, 1), 3.6)
    with export.cpu_ops(ops):
        stepper = [None]

        def step(i):
            if i % 1000 == 0:
                stepper[0] = (_WindowStepper(model, 1, -10.0, "cpu", 1000) if mode == "window"
                              else _RecurrentStepper(model, 1, "cpu", 1000))
            stepper[0].act(xs[i], rtg, i % 1000)
        return median_us(step, n)


def fake_checkpoint(model) -> dict:
    return {"config": {"eval": {"target_return": 3600.0, "mode": "recurrent", "action_pad": -10.0}},
            "dataset_info": {"env_id": "Hopper-v5", "name": "hopper-medium-v2", "action_scale": 1.0},
            "state_mean": np.zeros(S, np.float32), "state_std": np.ones(S, np.float32),
            "reward_scale": 1000.0, "step": 0}


def aoti_rows(model, name: str, mode: str, ops: str, n: int, folder: Path, cpp: str | None):
    module, specs = export.step_module(model, mode), export.cache_specs(model, mode)
    meta = export.metadata(model, fake_checkpoint(model), mode, ops, specs, None, "random weights")
    path = folder / f"{name}-{mode}-{ops}.pt2"
    t0 = time.perf_counter()
    export.compile_package(module, specs, ops, path, export.package_metadata(meta))
    compile_s = time.perf_counter() - t0
    runner = torch._inductor.aoti_load_package(str(path))
    xs, rtg = states(n + 50), torch.full((1, 1), 3.6)
    caches = export.zero_caches(specs, 1)

    def step(i):
        if i % 1000 == 0:
            for c, s in zip(caches, specs):
                c.fill_(s["init"])
        runner(xs[i], rtg, torch.full((1,), i % 1000, dtype=torch.long), *caches)
    python_us = median_us(step, n)
    cpp_us = None
    if cpp:
        out = subprocess.run([cpp, "bench", str(path), str(n)], capture_output=True, text=True,
                             check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        cpp_us = float(out.stdout.split("median ")[1].split(" us")[0])
    return python_us, cpp_us, compile_s


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--actions", type=int, default=2000)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--modes", nargs="+", default=list(export.MODES), choices=list(export.MODES))
    p.add_argument("--cpp", help="examples/cpp_policy's built policy_check, for the C++ rows")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "policy_latency.csv"))
    args = p.parse_args()
    torch.set_num_threads(1)
    if not dmm_kernels.HAS_EXTENSION:
        raise SystemExit("policy_latency: the compiled dmm ops are not loaded; `pip install .` first")
    rows, n = [], args.actions
    print(f"batch 1, 1 thread, median of {n} actions; torch {torch.__version__}")
    print(f"{'model':<8} {'mode':<10} {'runs as':<27} {'us/action':>10} {'x eager window dmm':>19}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            torch.manual_seed(0)
            model = build_model({**MODELS[name], "state_dim": S, "act_dim": A}).eval()
            cases = [("window", "eager", "reference"), ("window", "eager", "dmm"),
                     ("recurrent", "eager", "dmm")]
            results = []
            for mode, how, ops in cases:
                results.append((mode, f"eager, {ops} ops", eager_row(model, mode, ops, n), None))
            for mode in args.modes:
                for ops in ("reference", "dmm"):
                    py_us, cpp_us, compile_s = aoti_rows(model, name, mode, ops, n, Path(tmp), args.cpp)
                    results.append((mode, f"aoti python, {ops} ops", py_us, compile_s))
                    if cpp_us is not None:
                        results.append((mode, f"aoti c++, {ops} ops", cpp_us, compile_s))
            base = results[1][2]  # eager window with the dmm ops: what `dmm eval` runs
            for mode, how, us, compile_s in results:
                rows.append({"model": name, "d_model": MODELS[name]["d_model"], "mode": mode,
                             "runs_as": how, "us_per_action": round(us, 1),
                             "ratio_to_eager_window_dmm": round(us / base, 3),
                             "aoti_compile_s": None if compile_s is None else round(compile_s, 1),
                             "actions": n, "threads": 1, "torch": torch.__version__})
                print(f"{name:<8} {mode:<10} {how:<27} {us:>10.1f} {us / base:>19.3f}", flush=True)
    write_rows(rows, args.out)


if __name__ == "__main__":
    main()
