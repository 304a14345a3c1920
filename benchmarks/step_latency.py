"""Latency of one action on one CPU core, batch 1: the recurrent step before and after the fused
CPU kernel (csrc/cpu/step.cpp), beside the paper's window protocol.

One action is three tokens (R_t, s_t, a_t) through every layer. Rows per model:
  blocks, per-block composite   3 x n_layers metamamba_step calls on the composite (~30 ATen calls
                                each): the op's CPU path before the fused kernel
  blocks, per-block fused       3 x n_layers metamamba_step calls on the fused CPU kernel
  blocks, metamamba_steps       3 metamamba_steps calls (all layers in one fused call)
  blocks, metamamba_steps, C++  the same calls made from C++ (--cpp: builds
                                benchmarks/step_latency_cpp.cpp; no Python argument parsing)
  policy, per-block composite   RecurrentPolicy.act + observe_action, one step() per layer, the op
                                on the composite (the eager recurrent step before)
  policy, metamamba_steps       RecurrentPolicy.act + observe_action as it runs now
  policy, window K              model.window_action on the last K steps (the paper's protocol)
The blocks rows call the ops with prebuilt arguments (the op cost from Python); the policy rows
include the embeddings, the head and the Python around them. Untrained models (the latency does
not depend on the weights). Median over --actions actions after a warm-up.

    python -m benchmarks.step_latency [--actions 2000] [--threads 1] [--cpp]
"""
from __future__ import annotations

import argparse
import functools
import statistics
import time
from pathlib import Path

import torch

import dmm_kernels
from benchmarks.csv_out import write_rows
from dmm import DecisionMetaMamba
from dmm_kernels.ops import _scan_A, _steps_lists

COMPOSITE = torch._C.DispatchKey.CompositeExplicitAutograd
STATE_DIM, ACT_DIM = 17, 6  # HalfCheetah
MODELS = [  # label, DecisionMetaMamba arguments
    ("default (d_model 64, 3 layers, conv)",
     {"d_model": 64, "n_layers": 3, "context_len": 8, "mixer": "conv", "window": 6}),
    ("paper v1 (d_model 128, 3 layers, conv)",
     {"d_model": 128, "n_layers": 3, "context_len": 8, "mixer": "conv", "window": 6}),
]


def median_us(fn, reps: int, warmup: int = 50) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def block_calls(model, composite: bool):
    """One action through the blocks as per-block metamamba_step calls, prebuilt arguments."""
    policy = model.recurrent_policy(1)
    blocks = list(model.blocks)
    per_layer = []
    for blk, cache in zip(blocks, policy.caches):
        p = blk.block_params()
        cfg = blk.kernel_config()
        per_layer.append((cache["mixer1_cache"], cache["mixer2_cache"], cache["ssm_state"], *p,
                          _scan_A(p.A_log, torch.float32), cfg["mixer"], cfg["n_modalities"],
                          cfg["residual_ssm"], cfg["eps"]))
    op = torch.ops.dmm.metamamba_step.default
    call = functools.partial(op._op_dk, COMPOSITE) if composite else op
    h = torch.randn(1, model.d_model)
    state = {"pos": 0}

    def action():
        for _ in range(3):
            x = h
            for args in per_layer:
                x = call(x, *args, state["pos"])
            state["pos"] += 1
    return action


def steps_calls(model):
    """One action through the blocks as three metamamba_steps calls, prebuilt arguments."""
    policy = model.recurrent_policy(1)
    params = [blk.block_params() for blk in model.blocks]
    lists = _steps_lists(policy.caches, params, torch.float32)
    cfg = model.blocks[0].kernel_config()
    config = (cfg["mixer"], cfg["n_modalities"], cfg["residual_ssm"], cfg["eps"])
    op = torch.ops.dmm.metamamba_steps.default
    h = torch.randn(1, model.d_model)
    state = {"pos": 0}

    def action():
        for _ in range(3):
            op(h, *lists, *config, state["pos"])
            state["pos"] += 1
    return action


def steps_cpp_us(ext, model, actions: int) -> float:
    """Median us per action of metamamba_steps called from C++ (step_latency_cpp.cpp)."""
    policy = model.recurrent_policy(1)
    params = [blk.block_params() for blk in model.blocks]
    mixer1, mixer2, states, *per_param, A = _steps_lists(policy.caches, params, torch.float32)
    cfg = model.blocks[0].kernel_config()
    return ext.steps_median_us(torch.randn(1, model.d_model), mixer1, mixer2, states, per_param, A,
                               cfg["mixer"], cfg["n_modalities"], cfg["residual_ssm"], cfg["eps"],
                               actions, 50)


def policy_calls(model, per_block_composite: bool):
    """One action of RecurrentPolicy: act + observe_action."""
    policy = model.recurrent_policy(1)
    if per_block_composite:
        policy._config = None  # one blk.step() per layer, as before metamamba_steps
    s, rtg, a = torch.randn(1, STATE_DIM), torch.randn(1, 1), torch.rand(1, ACT_DIM) * 2 - 1

    def action():
        policy.act(s, rtg)
        policy.observe_action(a)
    return action


def window_calls(model):
    K = model.context_len
    hist = (torch.randn(1, K, STATE_DIM), torch.rand(1, K, ACT_DIM) * 2 - 1, torch.randn(1, K, 1),
            torch.arange(K)[None])
    return lambda: model.window_action(*hist)


class composite_step_op:
    """Within: torch.ops.dmm.metamamba_step (as dmm_kernels calls it) runs the composite."""

    def __enter__(self):
        self.op = torch.ops.dmm.metamamba_step
        torch.ops.dmm.metamamba_step = functools.partial(self.op.default._op_dk, COMPOSITE)

    def __exit__(self, *exc):
        torch.ops.dmm.metamamba_step = self.op


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--actions", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cpp", action="store_true",
                   help="also time metamamba_steps called from C++ (compiles a small extension)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "step_latency.csv"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if not dmm_kernels.HAS_EXTENSION:
        raise SystemExit("step_latency: the compiled dmm ops are not loaded; build them first "
                         "(pip install -e .)")
    print(f"CPU, batch 1, {torch.get_num_threads()} thread(s), median of {args.actions} actions "
          f"(us per action = 3 tokens through all layers)")
    ext = None
    if args.cpp:
        from torch.utils.cpp_extension import load
        ext = load("dmm_step_latency_cpp", [str(Path(__file__).with_name("step_latency_cpp.cpp"))],
                   extra_cflags=["-O2"])
    rows = []
    with torch.no_grad():
        for label, kw in MODELS:
            torch.manual_seed(0)
            model = DecisionMetaMamba(STATE_DIM, ACT_DIM, dropout=0.0, **kw).eval()
            before = median_us(block_calls(model, composite=True), args.actions)
            cases = [("blocks, per-block composite (before)", before),
                     ("blocks, per-block fused", median_us(block_calls(model, False), args.actions)),
                     ("blocks, metamamba_steps", median_us(steps_calls(model), args.actions))]
            if ext is not None:
                cases.append(("blocks, metamamba_steps, C++", steps_cpp_us(ext, model, args.actions)))
            with composite_step_op():
                policy_before = median_us(policy_calls(model, True), args.actions)
            cases += [("policy, per-block composite (before)", policy_before),
                      ("policy, metamamba_steps", median_us(policy_calls(model, False), args.actions)),
                      (f"policy, window K{model.context_len}",
                       median_us(window_calls(model), args.actions))]
            print(f"\n{label}")
            for name, us in cases:
                base = policy_before if name.startswith("policy") else before
                print(f"  {name:40s} {us:9.1f} us   x{base / us:5.2f} vs before")
                rows.append({"model": label, "case": name, "us_per_action": round(us, 2),
                             "speedup_vs_before": round(base / us, 2),
                             "threads": torch.get_num_threads()})
    write_rows(rows, args.out)


if __name__ == "__main__":
    main()
