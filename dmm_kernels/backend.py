"""Which implementation runs the dmm ops on each device (DESIGN.md section 2).

CUDA tensors: the compiled CUDA kernels when this build has them, else the Triton kernels (no
toolkit needed: they compile just in time), else the pure-PyTorch reference. CPU tensors: the
C++ CPU kernels, else the reference. DMM_KERNELS_BACKEND=cuda|triton|reference forces one, with
an error when it is not available; with TRITON_INTERPRET=1 and DMM_KERNELS_BACKEND=triton the
Triton kernels also run CPU tensors (through Triton's interpreter: how CI checks them).
"""
from __future__ import annotations

import importlib.util
import os

import torch

CHOICES = ("cuda", "triton", "reference")
_LIBRARY = None  # the torch.library registrations of the Triton kernels, kept alive


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def requested() -> str:
    """DMM_KERNELS_BACKEND, validated ("" when unset)."""
    name = os.environ.get("DMM_KERNELS_BACKEND", "").strip().lower()
    if name and name not in CHOICES:
        raise ValueError(f"DMM_KERNELS_BACKEND must be one of {', '.join(CHOICES)}; got {name!r}")
    return name


def reference_forced() -> bool:
    return requested() == "reference" or _flag("DMM_KERNELS_FORCE_REFERENCE")


def has_compiled_cuda() -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key("dmm::selective_scan_fwd", "CUDA")


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def configure(extension_loaded: bool, extension_error) -> dict[str, str]:
    """Register what runs the ops and return {device type: implementation}."""
    global _LIBRARY
    name = requested()
    if reference_forced():
        return {"cpu": "reference", "cuda": "reference"}
    if not extension_loaded:
        if name:
            raise RuntimeError(f"DMM_KERNELS_BACKEND={name}: the compiled dmm ops are not "
                               f"available ({extension_error}); reinstall with `pip install .`")
        return {"cpu": "reference", "cuda": "reference"}
    if name == "cuda" and not has_compiled_cuda():
        raise RuntimeError("DMM_KERNELS_BACKEND=cuda: this build of dmm_kernels has no CUDA kernels "
                           "(it was built without a CUDA toolkit); unset it to use the Triton kernels, "
                           "or rebuild with CUDA_HOME set to a toolkit")
    if name == "triton" and not triton_available():
        raise RuntimeError("DMM_KERNELS_BACKEND=triton: triton is not installed (`pip install triton`)")
    chosen = {"cpu": "cpu-kernels", "cuda": "cuda-kernels" if has_compiled_cuda() else "reference"}
    wants_triton = name == "triton" or (
        not name and chosen["cuda"] == "reference" and triton_available() and torch.cuda.is_available())
    if wants_triton:
        from dmm_kernels.triton import ops as triton_ops
        _LIBRARY = torch.library.Library("dmm", "IMPL")
        triton_ops.register(_LIBRARY, "CUDA")
        chosen["cuda"] = "triton"
        if _flag("TRITON_INTERPRET"):
            triton_ops.register(_LIBRARY, "CPU")
            chosen["cpu"] = "triton (interpreter)"
    return chosen
