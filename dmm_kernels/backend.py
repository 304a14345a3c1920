"""Which implementation runs the dmm ops on each device (docs/ARCHITECTURE.md, "Backends").

CUDA tensors: the compiled CUDA kernels when this build has them, else the Triton kernels (no
toolkit needed: they compile just in time), else the pure-PyTorch reference. CPU tensors: the
C++ CPU kernels, else the reference. DMM_KERNELS_BACKEND=cuda|triton|reference forces one, with
an error when it is not available; with TRITON_INTERPRET=1 and DMM_KERNELS_BACKEND=triton the
Triton kernels also run CPU tensors (through Triton's interpreter: how CI checks them).

A switch that cannot be honoured never breaks `import dmm_kernels` (so `dmm --help` works
whatever the environment says): configure() raises BackendError, the package keeps it, and
every op raises it, as one line, when called.
"""
from __future__ import annotations

import importlib.util
import os
import warnings

import torch

CHOICES = ("cuda", "triton", "reference")
OVERRIDE_WARNING = r"(?s).*Overriding a previously registered kernel"  # torch's text spans lines
_LIBRARY = None  # the torch.library registrations of the Triton kernels, kept alive


class BackendError(ValueError):
    """DMM_KERNELS_BACKEND asks for a backend that is unknown or absent from this build."""


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def _switch() -> str:
    return os.environ.get("DMM_KERNELS_BACKEND", "").strip().lower()


def requested() -> str:
    """DMM_KERNELS_BACKEND, validated ("" when unset)."""
    if _flag("DMM_KERNELS_FORCE_REFERENCE"):  # the retired second switch: say so, never ignore it
        raise BackendError("DMM_KERNELS_FORCE_REFERENCE is no longer read: set "
                           "DMM_KERNELS_BACKEND=reference instead (and unset it)")
    name = _switch()
    if name and name not in CHOICES:
        raise BackendError(f"DMM_KERNELS_BACKEND={os.environ['DMM_KERNELS_BACKEND']!r} is not a "
                           f"backend: expected one of {', '.join(CHOICES)}; unset it for the "
                           "automatic choice")
    return name


def reference_forced() -> bool:
    return _switch() == "reference"


def has_compiled_cuda() -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key("dmm::selective_scan_fwd", "CUDA")


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def configure(extension_loaded: bool, extension_error) -> dict[str, str]:
    """Register what runs the ops and return {device type: implementation}; BackendError when
    DMM_KERNELS_BACKEND cannot be honoured."""
    global _LIBRARY
    name = requested()
    if reference_forced():
        return {"cpu": "reference", "cuda": "reference"}
    if not extension_loaded:
        if name:
            raise BackendError(f"DMM_KERNELS_BACKEND={name}: the compiled dmm ops are not "
                               f"available ({extension_error}); reinstall with `pip install .`, "
                               "or set DMM_KERNELS_BACKEND=reference")
        return {"cpu": "reference", "cuda": "reference"}
    if name == "cuda" and not has_compiled_cuda():
        raise BackendError("DMM_KERNELS_BACKEND=cuda: this build of dmm_kernels has no CUDA "
                           "kernels (it was built without a CUDA toolkit); unset it to use the "
                           "Triton kernels, or rebuild with CUDA_HOME set to a toolkit")
    if name == "triton" and not triton_available():
        raise BackendError("DMM_KERNELS_BACKEND=triton: triton is not installed; "
                           "`pip install triton`, or unset DMM_KERNELS_BACKEND")
    chosen = {"cpu": "cpu-kernels", "cuda": "cuda-kernels" if has_compiled_cuda() else "reference"}
    wants_triton = name == "triton" or (
        not name and chosen["cuda"] == "reference" and triton_available() and torch.cuda.is_available())
    if wants_triton:
        keys = ["CUDA"] + (["CPU"] if _flag("TRITON_INTERPRET") else [])
        _LIBRARY = register_triton(keys)
        chosen["cuda"] = "triton"
        if "CPU" in keys:
            chosen["cpu"] = "triton (interpreter)"
    return chosen


def register_triton(keys: list[str]) -> torch.library.Library:
    """The Triton functions as the ops' kernels for the dispatch keys `keys`. Replacing a key's
    compiled kernels is the point of choosing Triton, so torch's "Overriding a previously
    registered kernel" warning (torch <= 2.13) says nothing the user could act on: silenced."""
    from dmm_kernels.triton import ops as triton_ops
    lib = torch.library.Library("dmm", "IMPL")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=OVERRIDE_WARNING)
        for key in keys:
            triton_ops.register(lib, key)
    return lib
