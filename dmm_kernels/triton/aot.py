"""The Triton kernels compiled ahead of time for a GPU target on a machine without one.

`recorded_launches()` intercepts launches: the host wrappers run (on CPU or meta tensors) and each
launch is recorded, an autotuned kernel's once per configuration. `compile_launch` compiles one
for sm_80 / sm_90 with the specialisation the JIT would give the same arguments (16-byte aligned
pointers, integers divisible by 16, integers equal to 1), so registers, spills and shared memory
are those of the kernel a GPU would run. Used by tests/test_triton_aot.py and
benchmarks/triton_report.py.
"""
from __future__ import annotations

import contextlib
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.autotuner import Autotuner
from triton.runtime.jit import JITFunction, create_function_from_signature

TARGETS = {"sm_80": GPUTarget("cuda", 80, 32), "sm_90": GPUTarget("cuda", 90, 32)}


@dataclass
class Launch:
    kernel: JITFunction
    args: tuple
    kwargs: dict                  # constexprs, num_warps / num_stages
    grid: tuple
    config: dict = field(default_factory=dict)  # the autotuning configuration, if any

    @property
    def name(self) -> str:
        return self.kernel.__name__


def _grid(grid, kwargs):
    grid = grid(kwargs) if callable(grid) else grid
    return tuple(grid) + (1,) * (3 - len(grid))


@contextlib.contextmanager
def recorded_launches(all_configs: bool = True):
    """Record launches instead of running them. An autotuned kernel records one launch per
    configuration (all of them, or those its pruning keeps for these arguments) and reports the
    first as chosen, so host code reading `best_config` goes on."""
    launches: list[Launch] = []
    jit_run, tuner_run = JITFunction.run, Autotuner.run

    def record(self, *args, grid, warmup, **kwargs):
        launches.append(Launch(self, args, kwargs, _grid(grid, kwargs)))

    def record_configs(self, *args, **kwargs):
        self.nargs = dict(zip(self.arg_names, args))
        configs = self.configs if all_configs else self.prune_configs(kwargs)
        grid = kwargs.pop("grid")
        kwargs.pop("warmup", None)
        for config in configs:
            full = {**kwargs, **config.all_kwargs()}
            launches.append(Launch(self.fn, args, full, _grid(grid, full), config.all_kwargs()))
        self.best_config = configs[0]

    JITFunction.run, Autotuner.run = record, record_configs
    try:
        yield launches
    finally:
        JITFunction.run, Autotuner.run = jit_run, tuner_run


def compile_launch(launch: Launch, target: GPUTarget):
    """triton.compile of the launch as the JIT would specialise it, for `target`."""
    kernel = launch.kernel
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*launch.args, **launch.kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, launch.kwargs, bound,
                                                              specialization, options)
    return triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target,
                          options=options.__dict__)


def _tool(name: str) -> str:
    return getattr(triton.knobs.nvidia, name).path


def resources(compiled) -> dict:
    """Registers, spill bytes (stores), stack, shared memory (static + Triton's dynamic) and
    warps of a compiled kernel: cuobjdump -res-usage on its cubin, ptxas -v on its PTX."""
    arch = f"sm_{compiled.metadata.target.arch}" + ("a" if compiled.metadata.target.arch == 90 else "")
    with tempfile.TemporaryDirectory() as tmp:
        cubin, ptx = Path(tmp) / "k.cubin", Path(tmp) / "k.ptx"
        cubin.write_bytes(compiled.asm["cubin"])
        ptx.write_text(compiled.asm["ptx"])
        usage = subprocess.run([_tool("cuobjdump"), "-res-usage", str(cubin)], capture_output=True,
                               text=True, check=True).stdout
        log = subprocess.run([_tool("ptxas"), f"-arch={arch}", "-v", str(ptx), "-o", str(Path(tmp) / "o")],
                             capture_output=True, text=True, check=True).stderr
    regs, stack, shared, local = map(int, re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)",
                                                    usage).groups())
    spills = re.search(r"(\d+) bytes spill stores", log)
    return {"n_regs": regs, "n_spills": int(spills.group(1)) if spills else 0, "stack": stack,
            "local": local, "shared": max(shared, compiled.metadata.shared),
            "warps": compiled.metadata.num_warps}


_INSTR = re.compile(r"^\s*/\*([0-9a-f]+)\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)")
_LABEL = re.compile(r"^(\.L_x_\d+):")
_TARGET = re.compile(r"`\((\.L_x_\d+)\)")


def sass(compiled) -> str:
    """nvdisasm of the kernel's cubin."""
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        return subprocess.run([_tool("nvdisasm"), "-c", str(cubin)], capture_output=True, text=True,
                              check=True).stdout


def loop_profile(text: str) -> dict:
    """Static SASS instruction counts: {"total", "loops": [(first, last, own count), ...]} where
    a loop is a back edge (a branch to an earlier label) and `own count` excludes nested loops;
    loops are listed outermost first, in program order."""
    instrs, labels, branches = [], {}, []
    for line in text.splitlines():
        if m := _LABEL.match(line.strip()):
            labels[m.group(1)] = len(instrs)
        elif m := _INSTR.match(line):
            if m.group(2).startswith("BRA") and (target := _TARGET.search(line)):
                branches.append((len(instrs), target.group(1)))
            instrs.append(m.group(2))
    loops = sorted(((labels[t], i) for i, t in branches if t in labels and labels[t] <= i),
                   key=lambda lo: (lo[0], -lo[1]))
    own = []
    for first, last in loops:
        inner = sum(b - a + 1 for a, b in loops if (a, b) != (first, last) and first <= a and b <= last
                    and not any((c, d) not in ((a, b), (first, last)) and first <= c <= a and b <= d <= last
                                for c, d in loops))
        own.append((first, last, last - first + 1 - inner))
    return {"total": len(instrs), "loops": own}
