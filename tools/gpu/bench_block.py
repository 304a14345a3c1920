"""Fused CUDA block against its own composite (DMM_CUDA_BLOCK_UNFUSED=1 in a second process):
median CUDA-event times of the block op (fwd, fwd+bwd) and the step op (eager and CUDA-graph
replay), launches per call, peak memory of one forward. Writes a JSON list of rows.
    python -m tools.gpu.bench_block OUT.json [--device cuda] [--quick]
"""
import argparse
import itertools
import json

import torch

import dmm_kernels
from benchmarks import timing
from benchmarks.scan_speed import kernel_launches
from dmm_kernels import reference as ref
from dmm_kernels.params import SCAN_PARAMS  # fp32 in low-precision blocks, as ops.py keeps them

SHAPES = {"paper": (64, 24, 128), "rl-large": (256, 60, 256)}  # (B, L, D); docs/ARCHITECTURE.md, "Benchmark shapes"
MIXERS = ("conv", "line", "double-conv")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def median_ms(fn, inputs, reps, warmup):
    """Median per-call time of fn over the inputs in rotation (benchmarks/timing.median_ms)."""
    rotation = itertools.cycle(inputs)
    return timing.median_ms(lambda: fn(next(rotation)), inputs[0].device, reps, warmup)


def launches(fn, x):
    return kernel_launches(lambda: fn(x), x.device.type)


def step_graph_ms(step, xs, reps):
    """One captured step replayed: the launch cost a decoding loop under CUDA graphs pays."""
    x_static = xs[0].clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step(x_static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step(x_static)
    return median_ms(lambda x: graph.replay(), xs, reps, 20)


def measure(shape_name, B, L, D, mixer, dtype, device, reps):
    p = ref.make_block_params(D, mixer, dtype=dtype, device=device).map(torch.Tensor.float,
                                                                        SCAN_PARAMS)
    hs = [torch.randn(B, L, D, device=device, dtype=dtype) for _ in range(8)]
    with torch.no_grad():
        fwd = lambda h: dmm_kernels.metamamba_block(h, p, mixer)  # noqa: E731
        fwd(hs[0])
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fwd(hs[0])
            torch.cuda.synchronize()
            peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        else:
            peak = float("nan")
        t_fwd = median_ms(fwd, hs, reps, 10)
        n_fwd = launches(fwd, hs[0])
    leaves = [v.requires_grad_() for v in p.present().values()]
    hg = [h.clone().requires_grad_() for h in hs]

    def fwd_bwd(h):
        out = dmm_kernels.metamamba_block(h, p, mixer)
        torch.autograd.grad(out.float().sum(), [h, *leaves])

    t_fb = median_ms(fwd_bwd, hg, max(reps // 2, 3), 3)
    pa = p.map(torch.Tensor.detach)
    A = -torch.exp(pa.A_log.float())
    cache = ref.allocate_step_cache_ref(B, p, mixer, dtype, device)
    xs = [torch.randn(B, D, device=device, dtype=dtype) for _ in range(8)]

    def step(x):
        return torch.ops.dmm.metamamba_step(x, cache["mixer1_cache"], cache["mixer2_cache"],
                                            cache["ssm_state"], *pa, A, mixer, 3, False, 1e-5, 4)

    t_step = median_ms(step, xs, reps * 4, 20)
    n_step = launches(step, xs[0])
    t_graph = step_graph_ms(step, xs, reps * 4) if device == "cuda" else float("nan")
    # batch-1 step: the inference target (<= 10 us per block under graph replay)
    cache1 = ref.allocate_step_cache_ref(1, p, mixer, dtype, device)
    x1 = [torch.randn(1, D, device=device, dtype=dtype) for _ in range(8)]

    def step1(x):
        return torch.ops.dmm.metamamba_step(x, cache1["mixer1_cache"], cache1["mixer2_cache"],
                                            cache1["ssm_state"], *pa, A, mixer, 3, False, 1e-5, 4)

    t_graph1 = step_graph_ms(step1, x1, reps * 4) if device == "cuda" else float("nan")
    return dict(shape=shape_name, mixer=mixer, dtype=str(dtype).removeprefix("torch."), fwd_ms=t_fwd,
                fwd_bwd_ms=t_fb, fwd_launches=n_fwd, fwd_peak_mib=peak, step_ms=t_step,
                step_graph_ms=t_graph, step_b1_graph_ms=t_graph1, step_launches=n_step)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, few reps (CPU rehearsal)")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    shapes = {"tiny": (2, 6, 32)} if args.quick else SHAPES
    reps = 3 if args.quick else 50
    rows = []
    for shape_name, (B, L, D) in shapes.items():
        for mixer in MIXERS:
            for dtype in DTYPES.values():
                rows.append(measure(shape_name, B, L, D, mixer, dtype, args.device, reps))
                print(rows[-1], flush=True)
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
