"""What the compiler says about CUDA kernels, without a GPU: ptxas resource usage, SASS of the scan's
state loop, theoretical occupancy. Used by kernel_report.py.

    compile_probe(source, arch, flags, includes) -> Probe   # nvcc: a host program + device code
    Probe.kernels: {mangled name: Resources}; Probe.run() -> stdout of the host program
"""
from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field

# Per-SM limits of the two archs the project compiles for (CUDA C Programming Guide, compute
# capabilities 8.0 and 9.0).
ARCH_LIMITS = {
    "80": dict(smem_per_sm=164 * 1024, regs_per_sm=65536, max_warps=64, max_blocks=32),
    "90": dict(smem_per_sm=228 * 1024, regs_per_sm=65536, max_warps=64, max_blocks=32),
}
RESERVED_SMEM_PER_BLOCK = 1024  # sm_80+: 1 KB of shared memory per block is reserved by the system


@dataclass
class Resources:
    registers: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    stack: int = 0
    smem_static: int = 0
    sass: list = field(default_factory=list)  # [(address, instruction text)]


def cuda_home() -> str:
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    if not os.access(os.path.join(home, "bin", "nvcc"), os.X_OK):
        raise SystemExit(f"kernel_report: no nvcc under CUDA_HOME={home}; set CUDA_HOME to a CUDA "
                         "toolkit (no GPU needed)")
    return home


def cuobjdump() -> str:
    """cuobjdump of the toolkit, else the copy Triton's wheel ships (pip's CUDA toolkits carry it)."""
    for candidate in (os.path.join(cuda_home(), "bin", "cuobjdump"), shutil.which("cuobjdump")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    try:
        import triton
        path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
        if os.access(path, os.X_OK):
            return path
    except ImportError:
        pass
    raise SystemExit("kernel_report: no cuobjdump (CUDA toolkit bin/, PATH, or Triton's wheel); "
                     "install one, e.g. pip install nvidia-cuda-cuobjdump-cu13")


_USAGE = {
    "registers": re.compile(r"Used (\d+) registers"),
    "smem_static": re.compile(r"(\d+) bytes smem"),
}
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def parse_ptxas(log: str) -> dict[str, Resources]:
    """ptxas -v output -> {mangled function name: Resources}."""
    kernels, current = {}, None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '(\S+)'", line) or \
            re.search(r"Function properties for (\S+)", line)
        if m:
            current = kernels.setdefault(m.group(1), Resources())
            continue
        if current is None:
            continue
        m = _FRAME.search(line)
        if m:
            current.stack, current.spill_stores, current.spill_loads = map(int, m.groups())
        for key, rx in _USAGE.items():
            m = rx.search(line)
            if m:
                setattr(current, key, int(m.group(1)))
    return kernels


_INSN = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")


def parse_sass(text: str) -> dict[str, list]:
    """cuobjdump -sass output -> {mangled function name: [(address, instruction)]}."""
    funcs, name = {}, None
    for line in text.splitlines():
        m = re.search(r"Function : (\S+)", line)
        if m:
            name = m.group(1)
            funcs[name] = []
            continue
        m = _INSN.match(line)
        if m and name:
            funcs[name].append((int(m.group(1), 16), m.group(2)))
    return funcs


def state_loops(sass: list, items: int) -> list[int]:
    """Static instruction counts of the scan's state loops: the innermost loops (a backward branch
    to an earlier address) holding at least `items` MUFU.EX2 (one exp2 per (time step, state)
    update of a thread's items), the smallest first, keeping only loops that do not overlap a kept
    one (a loop the compiler rotated shows as several overlapping back edges)."""
    loops = []
    for addr, text in sass:
        m = re.search(r"\bBRA\S*\s+(?:`\()?(0x[0-9a-f]+)", text)
        if m and int(m.group(1), 16) <= addr:
            lo, hi = int(m.group(1), 16), addr
            body = [t for a, t in sass if lo <= a <= hi]
            if sum("MUFU.EX2" in t for t in body) >= items:
                loops.append((lo, hi, len(body)))
    innermost = [x for x in loops
                 if not any(y != x and x[0] <= y[0] and y[1] <= x[1] for y in loops)]
    kept = []
    for lo, hi, n in sorted(innermost, key=lambda x: x[2]):
        if all(hi < k[0] or lo > k[1] for k in kept):
            kept.append((lo, hi, n))
    return [n for _, _, n in sorted(kept)]


@dataclass
class Probe:
    kernels: dict
    exe: str

    def run(self) -> str:
        return subprocess.run([self.exe], capture_output=True, text=True, check=True).stdout


def compile_probe(source: str, arch: str, flags: list, includes: list, workdir: str) -> Probe:
    """nvcc the probe (host main + kernels) for sm_<arch>; resource usage and SASS per kernel."""
    os.makedirs(workdir, exist_ok=True)
    src = os.path.join(workdir, f"probe_{arch}.cu")
    exe = os.path.join(workdir, f"probe_{arch}")
    with open(src, "w") as f:
        f.write(source)
    cmd = [os.path.join(cuda_home(), "bin", "nvcc"), f"-arch=sm_{arch}", "-Xptxas=-v", src, "-o", exe,
           *flags, *[f"-I{i}" for i in includes]]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"kernel_report: nvcc failed for sm_{arch}:\n{' '.join(cmd)}\n{done.stderr[-4000:]}")
    kernels = parse_ptxas(done.stdout + done.stderr)
    sass = parse_sass(subprocess.run([cuobjdump(), "-sass", exe], capture_output=True, text=True,
                                     check=True).stdout)
    for name, insns in sass.items():
        if name in kernels:
            kernels[name].sass = insns
    return Probe(kernels, exe)


def occupancy(arch: str, threads: int, registers: int, smem: int) -> float:
    """Theoretical occupancy (resident warps / max warps per SM) of one kernel configuration."""
    lim = ARCH_LIMITS[arch]
    warps = math.ceil(threads / 32)
    regs_per_warp = math.ceil(max(registers, 1) * 32 / 256) * 256  # allocated per warp in 256s
    by_regs = (lim["regs_per_sm"] // regs_per_warp) // warps
    by_warps = lim["max_warps"] // warps
    by_smem = lim["smem_per_sm"] // (smem + RESERVED_SMEM_PER_BLOCK)
    blocks = min(by_regs, by_warps, by_smem, lim["max_blocks"])
    return blocks * warps / lim["max_warps"]


def scratch_dir() -> str:
    return tempfile.mkdtemp(prefix="dmm_kernel_report_")
