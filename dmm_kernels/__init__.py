"""Fused Decision-MetaMamba kernels: torch.ops.dmm.* with a pure-PyTorch fallback.

HAS_EXTENSION is True when the compiled ops are loaded and in use. Set
DMM_KERNELS_FORCE_REFERENCE=1 to use the reference instead, or DMM_KERNELS_LIBRARY=/path/to.so
to load a development build of the ops in place of dmm_kernels._C.
"""
import importlib.util
import os
import warnings

import torch

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

FORCE_REFERENCE = os.environ.get("DMM_KERNELS_FORCE_REFERENCE", "") not in ("", "0")
HAS_EXTENSION = EXTENSION_LOADED and not FORCE_REFERENCE
if not EXTENSION_LOADED and not FORCE_REFERENCE:
    warnings.warn(
        f"dmm_kernels: compiled ops not available ({EXTENSION_ERROR}); using the pure-PyTorch "
        "reference, which is slow. Reinstall with `pip install .` to build them.",
        stacklevel=2,
    )

from dmm_kernels.ops import (  # noqa: E402
    allocate_step_cache,
    metamamba_block,
    metamamba_step,
    modal_mix,
    selective_scan,
)

__all__ = [
    "HAS_EXTENSION", "selective_scan", "modal_mix", "metamamba_block", "metamamba_step",
    "allocate_step_cache",
]
