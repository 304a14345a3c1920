"""Static performance report of the Triton selective-scan kernels, without a GPU (all predicted).

    python -m benchmarks.triton_report [--archs sm_80,sm_90] [--shapes paper,long]

Per kernel, autotuning configuration, arch and shape ("paper": B 64, L 24, E 256, N 16, float32;
"long": B 8, L 4096, E 2048, N 16, bfloat16, as benchmarks/kernel_report.py):
  * from triton.compile of the kernel as the JIT specialises it at that shape
    (dmm_kernels/triton/aot.py): registers, spill bytes, shared memory, warps, and the SASS
    instruction count per program (straight-line code once, each chunk loop per chunk, the state
    loops inside them N times per chunk);
  * global-memory bytes each kernel requests, counted under Triton's interpreter (its masked loads
    and stores wrapped, per argument) on one program's worth of the shape: one channel tile, and
    for "long" L = 2 and 3 chunks, extended to L linearly (every chunk is full) and to all programs;
    `bytes_dram` counts B / C once per batch row (the programs of a row share them through L2);
    `bytes_min`: every input read once, every output written once;
  * launches per op call: the kernel plus the host code's fills, sums and casts (counted by a
    dispatch mode on meta tensors);
  * a roofline prediction at H100 bandwidth (benchmarks/roofline.py), labelled predicted.
The autotuner picks a configuration by timing on the GPU; the table shows, per kernel, shape and
arch, the configuration with the lowest prediction, and the CSV all of them. When
benchmarks/results/static/kernel_report.csv (the CUDA report) is present, the CUDA kernels' and
mamba-ssm's predictions for the same shape and arch are set beside.
The step's stages at batch 1 (`step_rows`; `--step-only` for just those): programs, warps,
registers, spills, shared memory, occupancy per stage and arch.
Writes benchmarks/results/static/triton_report.csv and .md, triton_step.csv and .md.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys

from benchmarks import roofline
from benchmarks.csv_out import write_rows

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

OUT = os.path.join(HERE, "results", "static")
SHAPES = {
    "paper": dict(batch=64, L=24, E=256, N=16, dtype="float32"),
    "long": dict(batch=8, L=4096, E=2048, N=16, dtype="bfloat16"),
}
ITEMSIZE = {"float32": 4, "bfloat16": 2}
KERNELS = {"fwd": "scan_fwd_kernel", "bwd": "scan_bwd_kernel"}


def _inputs(shape, device, torch):
    dt = getattr(torch, shape["dtype"])
    b, E, L, N = shape["batch"], shape["E"], shape["L"], shape["N"]
    return [torch.randn(b, E, L, dtype=dt, device=device), torch.randn(b, E, L, dtype=dt, device=device),
            -torch.rand(E, N, device=device), torch.randn(b, N, L, dtype=dt, device=device),
            torch.randn(b, N, L, dtype=dt, device=device), torch.randn(E, device=device),
            torch.randn(b, E, L, dtype=dt, device=device), torch.randn(E, device=device)]


def _run(direction, args, config=None):
    from dmm_kernels.triton import scan
    if direction == "fwd":
        scan.scan_fwd(*args, True, config=config)
    else:
        scan.scan_bwd(args[0].clone(), *args, True, config=config)


# ---- bytes, under the interpreter (a subprocess with TRITON_INTERPRET=1) ---------------------------
def count_bytes(direction, shape, config_kwargs, warps):
    """{argument name: bytes} one call requests at `shape` with that configuration."""
    import numpy as np
    import torch
    import triton
    from triton.runtime import interpreter as ti

    counts: dict[str, int] = {}
    ranges: list[tuple[int, int, str]] = []
    call = ti.GridExecutor.__call__

    def traced_call(self, *args, **kwargs):
        ranges.clear()
        for name, a in zip(self.arg_names, args):
            if isinstance(a, torch.Tensor):
                start = a.untyped_storage().data_ptr()
                ranges.append((start, start + a.untyped_storage().nbytes(), name))
        return call(self, *args, **kwargs)

    def add(ptrs, mask):
        m = np.broadcast_to(np.asarray(mask.data, dtype=bool), ptrs.data.shape)
        if not m.any():
            return
        addr = int(ptrs.data[m].flat[0])
        name = next((n for lo, hi, n in ranges if lo <= addr < hi), "?")
        bits = ptrs.get_element_ty().primitive_bitwidth
        counts[name] = counts.get(name, 0) + int(m.sum()) * bits // 8

    builder = ti.InterpreterBuilder
    load, store = builder.create_masked_load, builder.create_masked_store

    def masked_load(self, ptrs, mask, *rest):
        add(ptrs, mask)
        return load(self, ptrs, mask, *rest)

    def masked_store(self, ptrs, value, mask, *rest):
        add(ptrs, mask)
        return store(self, ptrs, value, mask, *rest)

    ti.GridExecutor.__call__, builder.create_masked_load, builder.create_masked_store = (
        traced_call, masked_load, masked_store)
    try:
        torch.manual_seed(0)
        _run(direction, _inputs(shape, "cpu", torch), triton.Config(config_kwargs, num_warps=warps))
    finally:
        ti.GridExecutor.__call__, builder.create_masked_load, builder.create_masked_store = (
            call, load, store)
    return counts


def _count_in_interpreter(jobs):
    """Run count_bytes for each job in a fresh interpreter process (the interpreter is chosen
    when the kernels are defined, so not in this process, which compiles them)."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    code = ("import json, sys; import benchmarks.triton_report as r; "  # -c: cwd ROOT is on the path
            "print(json.dumps([r.count_bytes(*j) for j in json.load(sys.stdin)]))")
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(jobs), env=env,
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout
    return json.loads(out.strip().splitlines()[-1])


def program_bytes(direction, shape, config):
    """{argument: bytes} of the whole shape, from one channel tile of one batch row: counted at
    the real L ("paper") or at 2 and 3 chunks and extended linearly to L (whole chunks)."""
    kw, block_e, chunk = config.kwargs, config.kwargs["BLOCK_E"], config.kwargs["CHUNK"]
    programs = shape["batch"] * shape["E"] // block_e
    one = dict(shape, batch=1, E=block_e)
    if shape["L"] <= 3 * chunk:
        (counts,) = _count_in_interpreter([[direction, one, kw, config.num_warps]])
        return {k: v * programs for k, v in counts.items()}
    assert shape["L"] % chunk == 0, "extension along L needs whole chunks"
    # bytes(L) = bytes(2 chunks) + (chunks - 2) * (bytes(3 chunks) - bytes(2 chunks))
    c2, c3 = _count_in_interpreter([[direction, dict(one, L=2 * chunk), kw, config.num_warps],
                                    [direction, dict(one, L=3 * chunk), kw, config.num_warps]])
    chunks = shape["L"] // chunk
    out = {k: (c2.get(k, 0) + (chunks - 2) * (c3.get(k, 0) - c2.get(k, 0))) * programs
           for k in set(c2) | set(c3)}
    assert all(c3.get(k, 0) >= c2.get(k, 0) for k in out), (c2, c3)
    return out


def minimum_bytes(direction, shape):
    """Every input read once, every output written once (A, D, delta_bias and dA, dD, ddelta_bias
    included; the forward's last state in float32)."""
    b, E, L, N, s = shape["batch"], shape["E"], shape["L"], shape["N"], ITEMSIZE[shape["dtype"]]
    small = (E * N + 2 * E) * 4
    if direction == "fwd":  # u, delta, z, B, C -> out, last
        return (4 * b * E * L + 2 * b * N * L) * s + b * E * N * 4 + small
    # dout, u, delta, z, B, C -> du, ddelta, dz, dB, dC (+ the small parameters' gradients)
    return (7 * b * E * L + 4 * b * N * L) * s + 2 * small


def dram_bytes(counts, shape, config):
    """Requested bytes with B / C re-reads by the channel tiles of a batch row served by L2."""
    per_row = shape["E"] // config.kwargs["BLOCK_E"]
    return sum(v // per_row if k in ("B_ptr", "C_ptr") else v for k, v in counts.items())


# ---- launches, on meta tensors ----------------------------------------------------------------------
def launches_per_call(direction, shape):
    """The kernel's launch plus every host-side op that would launch one (fills, sums, casts)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from dmm_kernels.triton import aot

    free = {"empty", "empty_strided", "view", "_unsafe_view", "slice", "select", "as_strided",
            "t", "transpose", "permute", "expand", "alias", "detach", "unsqueeze", "squeeze",
            "clone"}  # clone: this report's own dout

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ not in free:
                Count.n += 1
            return func(*args, **(kwargs or {}))

    args = _inputs(shape, "meta", torch)
    with aot.recorded_launches(all_configs=False) as launches, Count():
        _run(direction, args)
    # recorded_launches records an autotuned launch once per configuration: count kernels
    return Count.n + len({launch.name for launch in launches})


# ---- registers, spills, instructions: triton.compile -------------------------------------------------
def _nested(loops):
    """Loops (first, last, own) -> [(loop, [loops directly inside it])] for the top-level ones,
    the one-instruction self-branch at the kernel's end dropped."""
    loops = [lo for lo in loops if lo[1] > lo[0]]
    top = [lo for lo in loops if not any(o != lo and o[0] <= lo[0] and lo[1] <= o[1] for o in loops)]
    return [(t, [lo for lo in loops if lo != t and t[0] <= lo[0] and lo[1] <= t[1]]) for t in top]


def warp_instructions(direction, profile, shape, config):
    """SASS instructions one warp executes per program: the chunk loops (the backward's entry
    pass over n_chunks - 1 chunks, then its reverse pass over n_chunks) with the state loops
    inside them run N times per chunk, plus the straight-line code once."""
    chunks = -(-shape["L"] // config.kwargs["CHUNK"])
    trips = [chunks] if direction == "fwd" else [chunks - 1, chunks]
    tops = _nested(profile["loops"])
    if len(tops) != len(trips) or any(len(inner) != 1 for _, inner in tops):
        raise RuntimeError(f"{direction}: unexpected loop structure {profile['loops']}")
    total, in_loops = 0, 0
    for ((first, last, own), inner), n in zip(tops, trips):
        (i_first, i_last, i_own), = inner
        total += n * (own + shape["N"] * i_own)
        in_loops += last - first + 1
    return total + profile["total"] - in_loops - 1


def sass_per_update(direction, profile, config, warps):
    """SASS instructions per thread per (time step, state) update: the state loop's own count
    (the backward's two state loops added, as the CUDA report adds its entry pass) over the tile
    elements each thread holds."""
    per_thread = config.kwargs["BLOCK_E"] * config.kwargs["CHUNK"] / (32 * warps)
    return round(sum(inner[0][2] for _, inner in _nested(profile["loops"])) / per_thread, 2)


SMEM_PER_SM = {"sm_80": 164 * 1024, "sm_90": 228 * 1024}


def occupancy(arch, regs, smem, warps):
    """Theoretical resident warps / 64: CTAs limited by registers (allocated in 8s), shared
    memory and 32 CTAs per SM."""
    by_regs = 65536 // (-(-regs // 8) * 8 * 32 * warps)
    by_smem = SMEM_PER_SM[arch] // max(smem, 1)
    return round(min(64, min(by_regs, by_smem, 32) * warps) / 64, 3)


def static_rows(archs, shapes):
    import torch

    from dmm_kernels.triton import aot, scan

    rows = []
    for shape_name in shapes:
        shape = SHAPES[shape_name]
        for direction in ("fwd", "bwd"):
            n_launches = launches_per_call(direction, shape)
            minimum = minimum_bytes(direction, shape)
            with aot.recorded_launches(all_configs=True) as launches:
                _run(direction, _inputs(shape, "meta", torch))
            for launch in launches:
                config = next(c for c in (scan.FWD_CONFIGS if direction == "fwd" else scan.BWD_CONFIGS)
                              if c.all_kwargs() == launch.config)
                counts = program_bytes(direction, shape, config)
                moved, dram = sum(counts.values()), dram_bytes(counts, shape, config)
                programs = launch.grid[0] * launch.grid[1] * launch.grid[2]
                for arch in archs:
                    compiled = aot.compile_launch(launch, aot.TARGETS[arch])
                    res = aot.resources(compiled)
                    profile = aot.loop_profile(aot.sass(compiled))
                    warp_insns = warp_instructions(direction, profile, shape, config)
                    thread_insns = warp_insns * 32 * res["warps"] * programs
                    rows.append({
                        "impl": "triton", "kernel": f"selective_scan_{direction}", "shape": shape_name,
                        "arch": arch, "dtype": shape["dtype"],
                        "config": f"E{config.kwargs['BLOCK_E']}xT{config.kwargs['CHUNK']}/w{res['warps']}",
                        "threads": 32 * res["warps"], "registers": res["n_regs"],
                        "spill_bytes": res["n_spills"], "smem": res["shared"],
                        "occupancy": occupancy(arch, res["n_regs"], res["shared"], res["warps"]),
                        "sass_per_update": sass_per_update(direction, profile, config, res["warps"]),
                        "warp_insns_per_program": warp_insns, "bytes_moved": moved, "bytes_dram": dram,
                        "bytes_min": minimum, "launches": n_launches,
                        "predicted_us": round(1e6 * roofline.predict_seconds(dram, thread_insns, n_launches), 1),
                        "bound": roofline.bound(dram, thread_insns),
                        "bytes_by_argument": " ".join(f"{k.removesuffix('_ptr')}={v}"
                                                      for k, v in sorted(counts.items())),
                    })
                    print({k: rows[-1][k] for k in ("kernel", "shape", "arch", "config", "registers",
                                                    "spill_bytes", "predicted_us")}, flush=True)
    return rows


def cuda_predictions():
    """{(impl, kernel, shape, arch): predicted_us} from the CUDA report, when present."""
    path = os.path.join(OUT, "kernel_report.csv")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return {(r["impl"], r["kernel"], r["shape"], r["arch"]): r["predicted_us"]
                for r in csv.DictReader(f) if r["impl"] != "triton"}


def best_rows(rows):
    best = {}
    for r in rows:
        key = (r["kernel"], r["shape"], r["arch"])
        if key not in best or r["predicted_us"] < best[key]["predicted_us"]:
            best[key] = r
    return list(best.values())


def markdown(rows) -> str:
    cuda = cuda_predictions()
    cols = ["kernel", "shape", "arch", "config", "threads", "registers", "spill_bytes", "smem",
            "occupancy", "sass_per_update", "bytes_dram", "bytes_min", "launches", "predicted_us"]
    extra = ["ours (CUDA) us", "mamba-ssm us"] if cuda else []
    lines = ["| " + " | ".join(cols + ["dram / min"] + extra) + " |",
             "|" + "---|" * (len(cols) + 1 + len(extra))]
    for r in best_rows(rows):
        cells = [f"{r[c] / 1e6:.1f} M" if c.startswith("bytes") else str(r[c]) for c in cols]
        cells.append(f"{r['bytes_dram'] / r['bytes_min']:.2f}")
        for impl in ("ours", "mamba-ssm") if cuda else ():
            cells.append(str(cuda.get((impl, r["kernel"], r["shape"], r["arch"]), "-")))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def step_rows(archs, d_model=128) -> list[dict]:
    """The step's stages (dmm_kernels/triton/block.py) at batch 1 and the paper's width (d_model
    128, E 256, N 16): programs per launch, warps, registers, spills, shared memory, occupancy."""
    import torch
    from dmm_kernels import reference
    from dmm_kernels.triton import aot, block
    rows = []
    for mixer in ("conv", "double-line"):
        for dtype in (torch.float32, torch.bfloat16):
            p = reference.make_block_params(d_model, mixer, dtype=dtype)
            cache = reference.allocate_step_cache_ref(1, p, mixer, dtype)
            with aot.recorded_launches(all_configs=False) as launches:
                block.step(torch.randn(1, d_model, dtype=dtype), cache["mixer1_cache"],
                           cache["mixer2_cache"], cache["ssm_state"], p, -p.A_log.float().exp(),
                           mixer, 3, False, 1e-5, 0)
            for launch in launches:
                for arch in archs:
                    res = aot.resources(aot.compile_launch(launch, aot.TARGETS[arch]))
                    rows.append({"mixer": mixer, "dtype": str(dtype).removeprefix("torch."),
                                 "stage": launch.name, "arch": arch, "programs": launch.grid[0],
                                 "warps": res["warps"], "registers": res["n_regs"],
                                 "spill_bytes": res["n_spills"], "smem": res["shared"],
                                 "occupancy": occupancy(arch, res["n_regs"], res["shared"], res["warps"])})
    return rows


def step_markdown(rows) -> str:
    cols = list(rows[0])
    return "\n".join(["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
                     + ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", default="sm_80,sm_90")
    parser.add_argument("--shapes", default="paper,long")
    parser.add_argument("--step-only", action="store_true", help="only the step's stages (fast)")
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET", "") not in ("", "0"):
        sys.exit("triton_report: unset TRITON_INTERPRET (the kernels are compiled here; the byte "
                 "counts run the interpreter in a subprocess)")
    steps = step_rows(args.archs.split(","))
    write_rows(steps, os.path.join(OUT, "triton_step.csv"))
    with open(os.path.join(OUT, "triton_step.md"), "w") as f:
        f.write(step_markdown(steps))
    print(step_markdown(steps))
    if args.step_only:
        return
    rows = static_rows(args.archs.split(","), args.shapes.split(","))
    write_rows(rows, os.path.join(OUT, "triton_report.csv"))
    table = markdown(rows)
    with open(os.path.join(OUT, "triton_report.md"), "w") as f:
        f.write(table)
    print(table)


def triton_rows() -> list[dict]:
    """The committed report's best predicted configuration per kernel, shape and arch, in
    benchmarks/kernel_report.py's columns (impl "triton")."""
    path = os.path.join(OUT, "triton_report.csv")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = [dict(r, predicted_us=float(r["predicted_us"])) for r in csv.DictReader(f)]
    ints = ("threads", "registers", "spill_bytes", "bytes_moved", "bytes_dram", "bytes_min", "launches")
    return [{"impl": "triton", "kernel": r["kernel"], "shape": r["shape"], "arch": r["arch"],
             "dtype": r["dtype"], **{k: int(r[k]) for k in ints}, "smem_static": 0,
             "smem_dynamic": int(r["smem"]), "occupancy": float(r["occupancy"]),
             "sass_per_update": float(r["sass_per_update"]), "source": "benchmarks/triton_report.py",
             "predicted_us": r["predicted_us"], "bound": r["bound"]}
            for r in best_rows(rows)]


if __name__ == "__main__":
    main()
