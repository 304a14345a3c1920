"""Fused Decision-MetaMamba kernels: torch.ops.dmm.* with a pure-PyTorch fallback.

HAS_EXTENSION is True when the compiled ops are loaded and in use; BUILD_INFO says what the
build compiled (CPU or CPU + CUDA kernels, against which torch, and why); BACKEND says what runs
the ops per device type (dmm_kernels/backend.py: compiled CUDA kernels, Triton, or the reference).
DMM_KERNELS_BACKEND=cuda|triton|reference forces one (reference turns the
compiled ops off); DMM_KERNELS_LIBRARY=/path/to.so loads a development build of the ops in place of
dmm_kernels._C. A DMM_KERNELS_BACKEND that cannot be honoured does not fail the import: every
op raises BackendError (BACKEND_ERROR holds the message; check_backend() raises it).
"""
import warnings

from dmm_kernels._extension import (
    BACKEND,
    BACKEND_ERROR,
    BUILD_INFO,
    EXTENSION_ERROR,
    EXTENSION_LOADED,
    REFERENCE_FORCED,
    HAS_EXTENSION,
    check_backend,
)
from dmm_kernels.params import BlockParams
from dmm_kernels.backend import BackendError
from dmm_kernels.ops import (
    allocate_step_cache,
    metamamba_block,
    metamamba_prefill,
    metamamba_step,
    metamamba_steps,
    metamamba_steps_fn,
    modal_mix,
    selective_scan,
)

if not EXTENSION_LOADED and not REFERENCE_FORCED and BACKEND_ERROR is None:  # else ops raise it
    warnings.warn(
        f"dmm_kernels: compiled ops not available ({EXTENSION_ERROR}); using the pure-PyTorch "
        "reference, which is slow. Reinstall with `pip install .` to build them.",
        stacklevel=2,
    )

__all__ = [
    "BlockParams", "HAS_EXTENSION", "BACKEND", "BACKEND_ERROR", "BackendError", "check_backend",
    "EXTENSION_LOADED", "EXTENSION_ERROR", "BUILD_INFO", "selective_scan", "modal_mix",
    "metamamba_block", "metamamba_prefill", "metamamba_step", "metamamba_steps",
    "metamamba_steps_fn", "allocate_step_cache",
]
