"""GPU kernel launches of one metamamba_block forward + backward, counted without a GPU.

Against the emulated kernels' library (the CUDA kernels of csrc/cuda running in the CPU emulator,
csrc/emu), two counters give what a GPU would launch:
  * our kernels: the emulator's launch counter (torch.ops.dmm_emu.launches_run);
  * ATen ops (cuBLAS GEMMs, elementwise, reductions, copies, fills on a GPU): a TorchDispatchMode
    that sees every aten op, also those the C++ block ops call inside (it runs the dmm ops' kernels
    with itself active), less views and allocations, which launch nothing. An ATen op is counted
    as the kernels its CUDA implementation launches (one, or KERNELS_PER_OP).
The paper's path (benchmarks/baselines.paper_block: a PyTorch mixer, separate LayerNorms and
GEMMs, mamba-ssm's selective_scan_fn) is counted the same way; its scan as mamba-ssm's
csrc/selective_scan/selective_scan.cpp launches it: forward a zero fill of its chunk states and
the kernel, backward zero fills of dA, dB, dC, dD and ddelta_bias and the kernel (and casts of dB,
dC back to a half-precision B, C).

    DMM_KERNELS_LIBRARY=build/cmake/libdmm_emulated.so python -m benchmarks.launch_count
"""
from __future__ import annotations

import argparse
import functools
import operator
import sys
from collections import Counter

import torch
import torch.utils._pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

import dmm_kernels
from benchmarks.baselines import paper_block
from dmm_kernels import reference

aten = torch.ops.aten
GEMMS = {aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default,
         aten.addbmm.default, aten._addmm_activation.default}
# Ops that allocate or relabel memory and launch nothing on a GPU (views are found by is_view).
NO_LAUNCH = {aten.empty.memory_format, aten.empty_like.default, aten.empty_strided.default,
             aten.new_empty.default, aten.new_empty_strided.default, aten._unsafe_view.default,
             aten.detach.default, aten.lift_fresh.default}
# ATen ops whose CUDA implementation launches more than one kernel.
KERNELS_PER_OP = {aten.native_layer_norm_backward.default: 2}  # dX; dgamma and dbeta
# mamba-ssm's selective scan, per call: kernels (zero fills + the scan kernel).
MAMBA_SCAN = {"selective_scan_fwd": 2, "selective_scan_bwd": 6}

SHAPES = {"paper": dict(batch=64, L=24, d_model=128, expand=2, d_state=16, window=6)}
_BELOW_PYTHON = torch._C._dispatch_keyset_full_after(torch._C.DispatchKey.Python)


class LaunchCounter(TorchDispatchMode):
    """Counts the GPU launches of the aten ops dispatched under it: `launches` per op name, `gemms`,
    and per dmm op that called them (`under[dmm op][aten op]`, "" for the top level; `dmm` counts
    the dmm ops). dmm ops run their kernels with the counter active (so the aten ops they call are
    counted), or, with mamba_scan, count as mamba-ssm's scan and are not looked into."""

    def __init__(self, mamba_scan: bool = False):
        super().__init__()
        self.mamba_scan = mamba_scan
        self.launches: Counter = Counter()
        self.under: dict[str, Counter] = {}
        self.dmm: Counter = Counter()
        self.gemms = 0
        self._parents = [""]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "dmm":
            name = func._schema.name.split("::")[1]
            self.dmm[name] += 1
            if self.mamba_scan and name in MAMBA_SCAN:
                self.launches[f"mamba-ssm {name}"] += MAMBA_SCAN[name]
                return func(*args, **kwargs)
            keys = _BELOW_PYTHON & functools.reduce(
                operator.or_, (torch._C._dispatch_keys(t) for t in pytree.tree_leaves(args)
                               if isinstance(t, torch.Tensor)))
            self._parents.append(name)
            try:
                with self:  # the kernel's own aten calls come back here
                    return func.redispatch(keys, *args, **kwargs)
            finally:
                self._parents.pop()
        if torch._C._dispatch_has_kernel_for_dispatch_key(
                func.name(), torch._C.DispatchKey.CompositeImplicitAutograd):
            with self:  # e.g. linear, matmul: count the ops they decompose into
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        if not func.is_view and func not in NO_LAUNCH:
            name = func._schema.name.removeprefix("aten::")
            n = KERNELS_PER_OP.get(func, 1)
            self.launches[name] += n
            self.under.setdefault(self._parents[-1], Counter())[name] += n
            self.gemms += func in GEMMS
        return func(*args, **kwargs)


def count(fn) -> dict:
    """Launches of fn(): our kernels (emulator), ATen ops (dispatch mode), GEMMs among them."""
    emu = torch.ops.dmm_emu.launches_run
    counter = LaunchCounter()
    before = emu()
    with counter:
        fn()
    kernels = emu() - before
    aten_ops = sum(counter.launches.values())
    return {"kernels": kernels, "aten": aten_ops, "gemms": counter.gemms,
            "total": kernels + aten_ops, "ops": dict(counter.launches)}


def count_paper(fn) -> dict:
    """Launches of the paper's path fn() (ATen ops and mamba-ssm's scan; no kernels of ours)."""
    counter = LaunchCounter(mamba_scan=True)
    with counter:
        fn()
    total = sum(counter.launches.values())
    return {"kernels": 0, "aten": total, "gemms": counter.gemms, "total": total,
            "ops": dict(counter.launches)}


def block_case(mixer, shape="paper", dtype=torch.float32, seed=0):
    """h (B, L, D) and BlockParams at a named shape, both requiring grad."""
    s = SHAPES[shape]
    gen = torch.Generator().manual_seed(seed)
    params = reference.make_block_params(s["d_model"], mixer, s["expand"], s["d_state"],
                                         s["window"], dtype=dtype, generator=gen)
    params = params.map(lambda t: t.requires_grad_())
    h = torch.randn(s["batch"], s["L"], s["d_model"], generator=gen, dtype=dtype)
    return h.requires_grad_(), params


def fwd_bwd(block_fn, h, params, mixer):
    """One forward and one backward of the block (gradients of h and every parameter)."""
    def run():
        out = block_fn(h, params, mixer)
        torch.autograd.grad(out, [h, *params.present().values()], torch.ones_like(out))
    return run


def block_counts(mixer, shape="paper") -> dict:
    """{"ours": ..., "paper": ...} for one forward + backward at `shape` (float32)."""
    h, params = block_case(mixer, shape)
    ours = count(fwd_bwd(dmm_kernels.metamamba_block, h, params, mixer))
    scan = dmm_kernels.selective_scan
    paper = count_paper(fwd_bwd(lambda h_, p_, m_: paper_block(h_, p_, m_, scan=scan), h, params,
                                mixer))
    return {"ours": ours, "paper": paper}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mixers", nargs="+", default=["conv", "line"])
    parser.add_argument("--verbose", action="store_true", help="launches per op")
    args = parser.parse_args()
    try:
        torch.ops.dmm_emu.launches_run  # noqa: B018
    except (AttributeError, RuntimeError):
        sys.exit("launch_count: needs the emulated kernels' library "
                 "(DMM_KERNELS_LIBRARY=build/cmake/libdmm_emulated.so)")
    print("GPU launches of one block forward + backward at the paper shape (B 64, L 24, D 128, "
          "E 256, N 16, W 6), float32; counted on the CPU emulator")
    print(f"{'mixer':8} {'path':6} {'ours kernels':>12} {'ATen ops':>9} {'GEMMs':>6} {'total':>6}")
    for mixer in args.mixers:
        for path, c in block_counts(mixer).items():
            print(f"{mixer:8} {path:6} {c['kernels']:12} {c['aten']:9} {c['gemms']:6} "
                  f"{c['total']:6}")
            if args.verbose:
                print("   ", dict(sorted(c["ops"].items())))


if __name__ == "__main__":
    main()
