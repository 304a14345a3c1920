"""Fused Decision-MetaMamba kernels: torch.ops.dmm.* with a pure-PyTorch fallback.

HAS_EXTENSION is True when the compiled ops are loaded and in use; BACKEND says what runs them
per device type (dmm_kernels/backend.py: compiled CUDA kernels, Triton, or the reference).
DMM_KERNELS_BACKEND=cuda|triton|reference forces one; DMM_KERNELS_FORCE_REFERENCE=1 is the same
as reference; DMM_KERNELS_LIBRARY=/path/to.so loads a development build of the ops in place of
dmm_kernels._C.
"""
import importlib.util
import os
import warnings

import torch

from dmm_kernels import backend

EXTENSION_LOADED = False
EXTENSION_ERROR = None
try:
    if os.environ.get("DMM_KERNELS_LIBRARY"):
        torch.ops.load_library(os.environ["DMM_KERNELS_LIBRARY"])
    elif importlib.util.find_spec("dmm_kernels._C") is None:
        raise ImportError("dmm_kernels._C is not built")
    else:
        from dmm_kernels import _C  # noqa: F401  (registers torch.ops.dmm.*)
    EXTENSION_LOADED = True
except (ImportError, OSError) as error:
    EXTENSION_ERROR = error

BACKEND = backend.configure(EXTENSION_LOADED, EXTENSION_ERROR)
FORCE_REFERENCE = backend.reference_forced()
HAS_EXTENSION = EXTENSION_LOADED and not FORCE_REFERENCE
if not EXTENSION_LOADED and not FORCE_REFERENCE:
    warnings.warn(
        f"dmm_kernels: compiled ops not available ({EXTENSION_ERROR}); using the pure-PyTorch "
        "reference, which is slow. Reinstall with `pip install .` to build them.",
        stacklevel=2,
    )



def uses_ops(device: torch.device) -> bool:
    """Whether tensors on `device` run through torch.ops.dmm (else the reference functions)."""
    return HAS_EXTENSION and BACKEND.get(device.type) != "reference"


from dmm_kernels.ops import (  # noqa: E402
    allocate_step_cache,
    metamamba_block,
    metamamba_step,
    modal_mix,
    selective_scan,
)

__all__ = [
    "HAS_EXTENSION", "BACKEND", "uses_ops", "selective_scan", "modal_mix", "metamamba_block", "metamamba_step",
    "allocate_step_cache",
]
