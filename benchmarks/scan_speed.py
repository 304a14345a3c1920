"""Time and memory of the dmm ops vs unfused baselines (docs/ARCHITECTURE.md, "Benchmark shapes").

    python -m benchmarks.scan_speed [--device cpu|cuda] [--shapes paper,rl-large,long] [--reps N]

Rows (each a median over --reps runs after warm-up, all measured side by side in one run):
  selective_scan   ours vs the PyTorch reference (CPU) / mamba-ssm's kernel (GPU, when installed)
  metamamba_block  ours vs the paper's path (PyTorch mixer + GEMMs + scan) and, on GPU, the
                   reference block under torch.compile
Writes benchmarks/results/scan_speed_<device>.csv and .png and prints a table with ratios.
"""
from __future__ import annotations

import argparse
import os

import torch

import dmm_kernels
from benchmarks.baselines import paper_block, paper_scan
from benchmarks.csv_out import write_rows
from benchmarks.timing import median_ms
from dmm_kernels import reference

SHAPES = {  # docs/ARCHITECTURE.md, "Benchmark shapes"
    "paper": dict(batch=64, L=24, d_model=128, expand=2, d_state=16, window=6, dtype=torch.float32),
    "rl-large": dict(batch=256, L=60, d_model=256, expand=2, d_state=16, window=6, dtype=torch.float32),
    "long": dict(batch=8, L=4096, d_model=1024, expand=2, d_state=16, window=6, dtype=torch.bfloat16),
    "tiny": dict(batch=2, L=7, d_model=16, expand=2, d_state=4, window=3, dtype=torch.float32),  # smoke
}
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def ours_label(device):
    """"ours" with what runs the ops on this device (cuda-kernels, triton, cpu-kernels, ...)."""
    return f"ours[{dmm_kernels.BACKEND.get(torch.device(device).type, '?')}]"


def peak_mib(fn, device):
    if device != "cuda":
        return float("nan")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def kernel_launches(fn, device):
    """CUDA kernels launched by one call (nan on CPU)."""
    if device != "cuda":
        return float("nan")
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def _fwd_bwd(fn, inputs):
    def run():
        out = fn()
        grads = torch.autograd.grad(out.float().sum(), inputs)
        return grads
    return run


def scan_inputs(shape, device):
    g = torch.Generator().manual_seed(0)
    batch, L, E, N = shape["batch"], shape["L"], shape["d_model"] * shape["expand"], shape["d_state"]
    dt = shape["dtype"]

    def rand(*s, scale=1.0):
        return (torch.randn(*s, generator=g) * scale).to(device, dt)

    u, delta, z = rand(batch, E, L), rand(batch, E, L, scale=0.5), rand(batch, E, L)
    B, C = rand(batch, N, L), rand(batch, N, L)
    A = -torch.rand(E, N, generator=g).add(0.5).to(device)
    D, delta_bias = torch.randn(E, generator=g).to(device), torch.randn(E, generator=g).to(device)
    return (u, delta, A, B, C, D, z, delta_bias)


def bench_scan(shape_name, shape, device, reps, rows):
    args = scan_inputs(shape, device)
    grads_of = [t.requires_grad_() for t in args[:5]]
    candidates = [(ours_label(device), dmm_kernels.selective_scan)]
    name, other = paper_scan()
    if device == "cuda" and name != "mamba-ssm":
        print("  (mamba-ssm not installed: scan baseline is the PyTorch reference)")
    if shape_name != "long" or device == "cuda":
        candidates.append((name, other))
    for label, fn in candidates:
        call = (lambda fn=fn: fn(*args, True))
        rows.append(dict(shape=shape_name, op="selective_scan", impl=label,
                         fwd_ms=median_ms(call, device, reps),
                         fwd_bwd_ms=median_ms(_fwd_bwd(call, grads_of), device, reps),
                         peak_mib=peak_mib(_fwd_bwd(call, grads_of), device),
                         launches=kernel_launches(call, device)))


def bench_block(shape_name, shape, device, reps, rows, mixer, compile_baseline):
    params = reference.make_block_params(shape["d_model"], mixer, shape["expand"], shape["d_state"],
                                         shape["window"], device=device,
                                         generator=torch.Generator().manual_seed(1))
    leaves = [p.requires_grad_() for p in params.present().values()]
    h = torch.randn(shape["batch"], shape["L"], shape["d_model"], device=device, requires_grad=True)
    candidates = [(ours_label(device), dmm_kernels.metamamba_block),
                  (f"paper({paper_scan()[0]})", paper_block)]
    if compile_baseline:
        candidates.append(("reference+compile", torch.compile(reference.metamamba_block_ref)))
    dtype = shape["dtype"]
    for label, fn in candidates:
        def call(fn=fn):
            with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
                return fn(h, params, mixer)
        rows.append(dict(shape=shape_name, op=f"block[{mixer}]", impl=label,
                         fwd_ms=median_ms(call, device, reps),
                         fwd_bwd_ms=median_ms(_fwd_bwd(call, [h, *leaves]), device, reps),
                         peak_mib=peak_mib(_fwd_bwd(call, [h, *leaves]), device),
                         launches=kernel_launches(call, device)))


def print_table(rows):
    print(f"{'shape':9} {'op':22} {'impl':26} {'fwd ms':>9} {'fwd+bwd ms':>11} {'x vs ours':>9} "
          f"{'peak MiB':>9} {'launches':>8}")
    ours = {(r["shape"], r["op"]): r for r in rows if r["impl"].startswith("ours")}
    for r in rows:
        ratio = r["fwd_bwd_ms"] / ours[(r["shape"], r["op"])]["fwd_bwd_ms"]
        r["fwd_bwd_vs_ours"] = ratio
        print(f"{r['shape']:9} {r['op']:22} {r['impl']:26} {r['fwd_ms']:9.3f} {r['fwd_bwd_ms']:11.3f} "
              f"{ratio:9.2f} {r['peak_mib']:9.1f} {r['launches']:8}")


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["shape"], r["op"]) for r in rows}, key=str)
    fig, axes = plt.subplots(1, len(groups), figsize=(4 * len(groups), 3.5), squeeze=False)
    for ax, (shape, op) in zip(axes[0], groups):
        sel = [r for r in rows if (r["shape"], r["op"]) == (shape, op)]
        ax.bar([r["impl"] for r in sel], [r["fwd_bwd_ms"] for r in sel], color="tab:blue")
        ax.set_title(f"{op}\n{shape}", fontsize=9)
        ax.set_ylabel("fwd+bwd median ms")
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shapes", default=None, help="comma list of " + ",".join(SHAPES)
                        + " (default: all on GPU; paper,rl-large on CPU)")
    parser.add_argument("--mixers", default="conv,line,double-conv")
    parser.add_argument("--compile-shapes", default=None,
                        help="shapes with the torch.compile baseline (default: all on GPU, none on CPU)")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions (default 20 GPU, 5 CPU)")
    parser.add_argument("--out", default=RESULTS_DIR)
    args = parser.parse_args(argv)
    device = args.device
    shapes = (args.shapes or ("paper,rl-large,long" if device == "cuda" else "paper,rl-large")).split(",")
    reps = args.reps or (20 if device == "cuda" else 5)
    compiled = (args.compile_shapes if args.compile_shapes is not None
                else ",".join(shapes) if device == "cuda" else "").split(",")
    torch.manual_seed(0)
    print(f"device {device} ({torch.cuda.get_device_name() if device == 'cuda' else f'{torch.get_num_threads()} CPU threads'}), "
          f"ops: {dmm_kernels.BACKEND}, torch {torch.__version__}")
    rows = []
    for name in shapes:
        shape = SHAPES[name]
        print(f"[{name}] {shape}")
        bench_scan(name, shape, device, reps, rows)
        if name != "long":
            for mixer in args.mixers.split(","):
                bench_block(name, shape, device, reps, rows, mixer, name in compiled)
    print_table(rows)
    stem = os.path.join(args.out, f"scan_speed_{device}")
    write_rows(rows, stem + ".csv")
    plot(rows, stem + ".png")
    print(f"wrote {stem}.png")


if __name__ == "__main__":
    main()
