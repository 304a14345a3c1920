"""Static performance report of the selective-scan CUDA kernels, without a GPU (all figures predicted).

    python -m benchmarks.kernel_report [--mamba-src DIR] [--archs 80,90]

Per kernel, arch (sm_80, sm_90) and shape ("paper": B 64, L 24, E 256, N 16, float32; "long": B 8,
L 4096, E 2048, N 16, bfloat16), beside mamba-ssm's selective_scan:
  * from nvcc (CUDA_HOME's toolkit; the kernels compiled exactly as the launcher instantiates them
    at that shape): registers, spill bytes, static and dynamic shared memory, threads per CTA,
    theoretical occupancy, and the static SASS instruction count of the scan's state loop per
    (time step, state) update (sass.state_loops; the backward adds its chunk-entry pass);
  * global-memory bytes: what the kernels request (`bytes_moved`, counted by the CUDA emulator when
    its counters are in the loaded library, else from the kernels' access pattern) beside the minimum
    (every input read once, every output written once), and `bytes_dram`: the same with re-reads
    of B / C by the CTAs of one batch row (and float atomics) served by L2;
  * launches per op call (kernel + fills and casts of the host code);
  * a roofline prediction at H100 bandwidth (benchmarks/roofline.py) from bytes_dram, the SASS count
    and the launches, labelled predicted.
mamba-ssm's figures: compiled here from its sdist's csrc for one arch at a time with the same nvcc
(its own flags: -O3 --use_fast_math), its kernels instantiated as its launcher picks them at each
shape; `--mamba-src DIR` (a folder holding csrc/selective_scan, e.g. the unpacked sdist of
`pip download mamba-ssm==2.3.2.post1 --no-deps --no-binary :all:`) recompiles them, otherwise the
committed benchmarks/results/static/mamba_ssm.csv is used. Its bytes follow its source (it reads
the saved forward output and chunk states in the backward, writes out and out_z in the forward).
Rows from benchmarks/triton_report.py (`triton_rows()`) are appended.
Writes benchmarks/results/static/kernel_report.csv, .png and .md (the table in RESULTS.md).
"""
from __future__ import annotations

import argparse
import csv
import math
import os

from benchmarks import roofline, sass
from benchmarks.csv_out import write_rows

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

OUT = os.path.join(HERE, "results", "static")
MAMBA_CSV = os.path.join(OUT, "mamba_ssm.csv")
SHAPES = {
    "paper": dict(batch=64, L=24, E=256, N=16, dtype="float32"),
    "long": dict(batch=8, L=4096, E=2048, N=16, dtype="bfloat16"),
}
ITEMSIZE = {"float32": 4, "bfloat16": 2}
LANES = 4  # lanes per channel (selective_scan.cuh)


# ---- our kernels: the configuration selective_scan.cu's scan_config picks --------------------------
def ours_config(direction: str, L: int) -> tuple[int, int]:
    """(items per lane, channels per CTA) for float32 / bfloat16; these shapes fit the first
    choice's shared memory."""
    return (16, 32) if L > 32 else (8, 32)


def ours_source(shapes: dict) -> str:
    ctype = {"float32": "float", "bfloat16": "__nv_bfloat16"}
    lines = ['#include <cstdio>', '#include "cuda/selective_scan.cuh"', "namespace dmm { namespace cuda {"]
    main = ["int main() {", "  using namespace dmm::cuda;"]
    for name, s in shapes.items():
        t = ctype[s["dtype"]]
        for direction in ("fwd", "bwd"):
            k, c = ours_config(direction, s["L"])
            traits = f"ScanTraits<{t}, {t}, {k}, {c}>"
            lines.append(f"template __global__ void selective_scan_{direction}_kernel<{traits}>(const ScanParams);")
            chunk = LANES * k
            main.append(f'  std::printf("{name} {direction} %lld\\n", (long long)(ScanSmem({s["N"]}, {c}, '
                        f'{chunk}, {chunk + 4}, {str(direction == "bwd").lower()}, 0).total * 4));')
    return "\n".join(lines + ["}}"] + main + ["}"]) + "\n"


def ours_kernel_name(names, direction, dtype, items, chans):
    token = {"float32": "ff", "bfloat16": "13__nv_bfloat16S3_"}[dtype]
    want = f"selective_scan_{direction}_kernel"
    frag = f"ScanTraitsI{token}Li{items}ELi{chans}E"
    return next(n for n in names if want in n and frag in n)


# ---- mamba-ssm's kernels, as its selective_scan_{fwd,bwd}_cuda launcher picks them ------------------
def mamba_config(L: int) -> tuple[int, int]:
    """(threads, items): its launcher's `#else` branch (the `#if warp_size == 32` test reads a
    constexpr variable, 0 to the preprocessor)."""
    if L <= 256:
        return 64, 4
    if L <= 512:
        return 64, 8
    if L <= 1024:
        return 64, 16
    return 128, 16


def mamba_source(shapes: dict) -> str:
    ctype = {"float32": "float", "bfloat16": "at::BFloat16"}
    lines = ['#include <cstdio>', '#include "selective_scan_fwd_kernel.cuh"',
             '#include "selective_scan_bwd_kernel.cuh"']
    main = ["int main() {"]
    for name, s in shapes.items():
        threads, items = mamba_config(s["L"])
        even = "true" if s["L"] % (threads * items) == 0 else "false"
        t = ctype[s["dtype"]]
        # variable B and C, z present, delta_softplus: the Mamba layer's call
        fwd = f"Selective_Scan_fwd_kernel_traits<{threads}, {items}, 1, {even}, true, true, true, {t}, float>"
        bwd = f"Selective_Scan_bwd_kernel_traits<{threads}, {items}, {even}, true, true, true, true, {t}, float>"
        lines += [f"using Fwd_{name} = {fwd};", f"using Bwd_{name} = {bwd};",
                  f"template __global__ void selective_scan_fwd_kernel<Fwd_{name}>(SSMParamsBase);",
                  f"template __global__ void selective_scan_bwd_kernel<Bwd_{name}>(SSMParamsBwd);"]
        main += [  # the dynamic shared memory its launchers request
            f'  std::printf("{name} fwd %d\\n", int(Fwd_{name}::kSmemSize + MAX_DSTATE * sizeof(Fwd_{name}::scan_t)));',
            f'  std::printf("{name} bwd %d\\n", int(Bwd_{name}::kSmemSize + MAX_DSTATE * sizeof(Bwd_{name}::scan_t)'
            f' + ({threads} + 4 * MAX_DSTATE) * sizeof(float)));']
    return "\n".join(lines + main + ["}"]) + "\n"


def mamba_kernel_name(names, direction, dtype, threads, items):
    token = {"float32": "fEE", "bfloat16": "N3c108BFloat16EfEE"}[dtype]
    frag = f"Selective_Scan_{direction}_kernel_traitsILi{threads}ELi{items}E"
    return next(n for n in names if frag in n and n.endswith(token + "EvT_") or frag in n and token in n)


def compile_mamba(src_dir: str, archs) -> list[dict]:
    """mamba-ssm's kernels compiled here, one arch per nvcc run; rows for mamba_ssm.csv."""
    import torch.utils.cpp_extension as cpp
    scan_dir = os.path.join(src_dir, "csrc", "selective_scan")
    if not os.path.isfile(os.path.join(scan_dir, "selective_scan_fwd_kernel.cuh")):
        raise SystemExit(f"kernel_report: no csrc/selective_scan/selective_scan_fwd_kernel.cuh under {src_dir}")
    flags = ["-O3", "-std=c++17", "--use_fast_math", "--expt-relaxed-constexpr", "--expt-extended-lambda",
             "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
             "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
             "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__"]
    rows = []
    work = sass.scratch_dir()
    for arch in archs:
        probe = sass.compile_probe(mamba_source(SHAPES), arch, flags, [scan_dir, *cpp.include_paths()],
                                   os.path.join(work, "mamba"))
        smem = {tuple(l.split()[:2]): int(l.split()[2]) for l in probe.run().splitlines()}
        for shape, s in SHAPES.items():
            threads, items = mamba_config(s["L"])
            for direction in ("fwd", "bwd"):
                name = mamba_kernel_name(probe.kernels, direction, s["dtype"], threads, items)
                r = probe.kernels[name]
                loops = sass.state_loops(r.sass, items)
                rows.append(dict(arch=f"sm_{arch}", shape=shape, direction=direction, threads=threads,
                                 items=items, registers=r.registers,
                                 spill_bytes=r.spill_stores + r.spill_loads, smem_static=r.smem_static,
                                 smem_dynamic=smem[(shape, direction)],
                                 sass_state_loop=loops[0], sass_per_update=round(loops[0] / items, 2)))
    return rows


# ---- bytes ---------------------------------------------------------------------------------------
def minimum_bytes(s: dict, direction: str) -> int:
    """Inputs read once, outputs written once (activations in the dtype; A, D, bias, last_state,
    dA, dD, ddelta_bias in float32)."""
    b, L, E, N, it = s["batch"], s["L"], s["E"], s["N"], ITEMSIZE[s["dtype"]]
    act, bc, params = b * E * L * it, 2 * b * N * L * it, (E * N + 2 * E) * 4
    if direction == "fwd":  # u, delta, z, B, C, A, D, bias -> out, last_state
        return 3 * act + bc + params + act + b * E * N * 4
    return 4 * act + bc + params + 3 * act + bc + params  # + dout -> du, ddelta, dz, dB, dC, dA, dD, dbias


def ours_bytes(s: dict, direction: str) -> tuple[int, int]:
    """(requested, dram) bytes of our kernels from their access pattern: u / delta / z / dout read
    once per pass, B / C staged once per CTA (E / 32 CTAs per batch row), dB / dC as one float
    atomic per (CTA, element); the backward's chunk-entry pass reads u, delta, B again and writes the
    float32 chunk-entry states that the reverse pass reads."""
    b, L, E, N, it = s["batch"], s["L"], s["E"], s["N"], ITEMSIZE[s["dtype"]]
    items, chans = ours_config(direction, L)
    chunk = LANES * items
    ctas = math.ceil(E / chans)
    act, bc1 = b * E * L * it, b * N * L * it  # one of B / C
    params = (E * N + 2 * E) * 4
    if direction == "fwd":
        requested = 3 * act + 2 * ctas * bc1 + params + act + b * E * N * 4
        dram = 3 * act + 2 * bc1 + params + act + b * E * N * 4
        return requested, dram
    n_chunks = math.ceil(L / chunk)
    pre = (n_chunks - 1) / n_chunks  # the part of L the chunk-entry pass covers
    states = 2 * b * E * (n_chunks - 1) * N * 4
    atomics = 2 * ctas * b * N * L * 4
    requested = (4 * act + 2 * ctas * bc1 + params) + pre * (2 * act + ctas * bc1) + states \
        + 3 * act + atomics + params
    dram = (4 * act + 2 * bc1 + params) + pre * 2 * act + states + 3 * act + 2 * b * N * L * 4 + params \
        + 2 * bc1 + 2 * b * N * L * 4  # the float32 dB / dC sums read back and cast to B's dtype
    return int(requested), int(dram)


def mamba_bytes(s: dict, direction: str) -> int:
    """DRAM bytes of mamba-ssm's kernels from its source, with the same L2 assumption (B / C and the
    dB / dC atomics of one batch row's CTAs served by L2)."""
    b, L, E, N, it = s["batch"], s["L"], s["E"], s["N"], ITEMSIZE[s["dtype"]]
    threads, items = mamba_config(L)
    n_chunks = math.ceil(L / (threads * items))
    act, bc = b * E * L * it, 2 * b * N * L * it
    params = (E * N + 2 * E) * 4
    x = b * E * n_chunks * N * 8  # float2 chunk-end states
    if direction == "fwd":  # reads u, delta, z, B, C; writes out, out_z, x
        return 3 * act + bc + params + 2 * act + x
    # reads u, delta (twice with softplus), dout, z, out, B, C, x; writes du, ddelta, dz, dB, dC (fp32)
    return 6 * act + bc + params + x + 3 * act + 2 * b * N * L * 4 + params + bc + 2 * b * N * L * 4


def emulator_bytes():
    """{(shape, direction): bytes} counted by the CUDA emulator, when the loaded library has the
    counters; None otherwise (the access-pattern figures are used, and the report says so)."""
    try:
        import torch
        import dmm_kernels  # noqa: F401
        torch.ops.dmm_emu.global_bytes  # noqa: B018
    except (ImportError, AttributeError, RuntimeError):
        return None
    return None  # wired to the emulator's counters once they exist (see RESULTS.md)


# ---- the report ------------------------------------------------------------------------------------
LAUNCHES = {  # per op call: kernel + fills / casts of the host code (both: zeros for dA, dB, dC, dD,
    # ddelta_bias, casts of dB, dC to B's dtype; selective_scan.cu, mamba-ssm's selective_scan.cpp)
    ("ours", "fwd"): lambda s: 1,
    ("ours", "bwd"): lambda s: 6 + (2 if s["dtype"] != "float32" else 0),
    ("mamba-ssm", "fwd"): lambda s: 1,
    ("mamba-ssm", "bwd"): lambda s: 6 + (2 if s["dtype"] != "float32" else 0),
}


def updates(s: dict, chunk: int) -> int:
    """(time step, state) updates the threads execute, the last chunk padded."""
    return s["batch"] * s["E"] * s["N"] * math.ceil(s["L"] / chunk) * chunk


def ours_rows(archs) -> list[dict]:
    work = sass.scratch_dir()
    flags = ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-U__CUDA_NO_HALF_OPERATORS__",
             "-U__CUDA_NO_HALF_CONVERSIONS__", "-U__CUDA_NO_BFLOAT16_OPERATORS__",
             "-U__CUDA_NO_BFLOAT16_CONVERSIONS__"]
    counted = emulator_bytes()
    rows = []
    for arch in archs:
        probe = sass.compile_probe(ours_source(SHAPES), arch, flags, [os.path.join(ROOT, "csrc")],
                                   os.path.join(work, "ours"))
        smem = {tuple(l.split()[:2]): int(l.split()[2]) for l in probe.run().splitlines()}
        for shape, s in SHAPES.items():
            for direction in ("fwd", "bwd"):
                items, chans = ours_config(direction, s["L"])
                r = probe.kernels[ours_kernel_name(probe.kernels, direction, s["dtype"], items, chans)]
                loops = sass.state_loops(r.sass, items)
                n_chunks = math.ceil(s["L"] / (LANES * items))
                # backward: the reverse pass's loop, plus the chunk-entry pass's where it runs
                per_update = (loops[-1] if direction == "fwd" or n_chunks == 1 else sum(loops)) / items
                requested, dram = ours_bytes(s, direction)
                rows.append(dict(
                    impl="ours", kernel=f"selective_scan_{direction}", shape=shape, arch=f"sm_{arch}",
                    dtype=s["dtype"], threads=LANES * chans, registers=r.registers,
                    spill_bytes=r.spill_stores + r.spill_loads, smem_static=r.smem_static,
                    smem_dynamic=smem[(shape, direction)],
                    occupancy=round(sass.occupancy(arch, LANES * chans, r.registers,
                                                   r.smem_static + smem[(shape, direction)]), 3),
                    sass_per_update=round(per_update, 2),
                    bytes_moved=counted[(shape, direction)] if counted else requested,
                    bytes_dram=dram, bytes_min=minimum_bytes(s, direction),
                    launches=LAUNCHES[("ours", direction)](s),
                    thread_insns=per_update * updates(s, LANES * items),
                    source="nvcc --resource-usage + cuobjdump -sass here; bytes "
                           + ("counted by the emulator" if counted else "from the kernels' access pattern")))
    return rows


def mamba_rows(mamba_src, archs) -> list[dict]:
    if mamba_src:
        write_rows(compile_mamba(mamba_src, archs), MAMBA_CSV)
    with open(MAMBA_CSV) as f:
        compiled = list(csv.DictReader(f))
    rows = []
    for c in compiled:
        s = SHAPES[c["shape"]]
        direction, threads, items = c["direction"], int(c["threads"]), int(c["items"])
        arch = c["arch"][3:]
        smem = int(c["smem_static"]) + int(c["smem_dynamic"])
        rows.append(dict(
            impl="mamba-ssm", kernel=f"selective_scan_{direction}", shape=c["shape"], arch=c["arch"],
            dtype=s["dtype"], threads=threads, registers=int(c["registers"]),
            spill_bytes=int(c["spill_bytes"]), smem_static=int(c["smem_static"]),
            smem_dynamic=int(c["smem_dynamic"]),
            occupancy=round(sass.occupancy(arch, threads, int(c["registers"]), smem), 3),
            sass_per_update=float(c["sass_per_update"]), bytes_moved=None,
            bytes_dram=mamba_bytes(s, direction), bytes_min=minimum_bytes(s, direction),
            launches=LAUNCHES[("mamba-ssm", direction)](s),
            thread_insns=float(c["sass_per_update"]) * updates(s, threads * items),
            source="mamba-ssm 2.3.2.post1 csrc compiled here (mamba_ssm.csv); bytes from its source"))
    return rows


def add_predictions(rows: list[dict]) -> None:
    for r in rows:
        if r.get("predicted_us") is None and r.get("bytes_dram") is not None:
            t = roofline.predict_seconds(r["bytes_dram"], r["thread_insns"], r["launches"], roofline.H100)
            r["predicted_us"] = round(t * 1e6, 1)
            r["bound"] = roofline.bound(r["bytes_dram"], r["thread_insns"], roofline.H100)


def triton_rows() -> list[dict]:
    from triton_report import triton_rows as rows
    return rows()


def markdown(rows: list[dict]) -> str:
    cols = ["impl", "kernel", "shape", "arch", "threads", "registers", "spill_bytes", "smem_dynamic",
            "occupancy", "sass_per_update", "bytes_moved", "bytes_dram", "bytes_min", "launches",
            "predicted_us"]
    def fmt(v):
        if v is None or v == "":
            return "-"
        if isinstance(v, float):
            return f"{v:g}"
        if isinstance(v, int) and v >= 10 ** 6:
            return f"{v / 1e6:.1f} M"
        return str(v)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric, title in ((axes[0], "sass_per_update", "SASS instructions per update (sm_90)"),
                              (axes[1], "predicted_us", "predicted time at H100 bandwidth, us (sm_90)")):
        keys = [(shape, k) for shape in SHAPES for k in ("selective_scan_fwd", "selective_scan_bwd")]
        impls = sorted({r["impl"] for r in rows})
        width = 0.8 / len(impls)
        for j, impl in enumerate(impls):
            vals = [next((r[metric] for r in rows if r["impl"] == impl and r["shape"] == sh
                          and r["kernel"] == k and r["arch"] in ("sm_90", "-")), 0) or 0 for sh, k in keys]
            ax.bar([i + j * width for i in range(len(keys))], vals, width, label=impl)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(keys))])
        ax.set_xticklabels([f"{sh}\n{k.split('_')[-1]}" for sh, k in keys])
        ax.set_title(title, fontsize=9)
        if metric == "predicted_us":
            ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.suptitle("selective_scan, static figures (predicted; no GPU)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mamba-src", help="folder holding mamba-ssm's csrc/selective_scan (recompiles "
                        "its kernels; else the committed mamba_ssm.csv is used)")
    parser.add_argument("--archs", default="80,90")
    args = parser.parse_args()
    archs = args.archs.split(",")
    rows = ours_rows(archs) + mamba_rows(args.mamba_src, archs) + triton_rows()
    add_predictions(rows)
    for r in rows:
        r.pop("thread_insns", None)
    write_rows(rows, os.path.join(OUT, "kernel_report.csv"))
    table = markdown(rows)
    with open(os.path.join(OUT, "kernel_report.md"), "w") as f:
        f.write(table)
    print(table)
    plot(rows, os.path.join(OUT, "kernel_report.png"))


if __name__ == "__main__":
    main()
