"""Loads the compiled ops (dmm_kernels._C) and decides what runs them (dmm_kernels/backend.py).

The build writes _build_info.json next to _C: the torch it compiled against and what it decided
(CPU only, or CPU + CUDA, and why). An extension built against another torch release is not
loaded (its C++ ABI may not match): the reference is used, with a warning that says how to fix it.
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import torch

from dmm_kernels import backend

BUILD_INFO_FILE = Path(__file__).with_name("_build_info.json")


def _release(version: str) -> str:
    """'2.13.0+cpu' -> '2.13.0': local variants share the C++ ABI of their release."""
    return version.split("+", 1)[0]


def read_build_info() -> dict | None:
    """What the build recorded ({"torch", "cuda", "decision"}), or None for an older build."""
    try:
        return json.loads(BUILD_INFO_FILE.read_text())
    except (OSError, ValueError):
        return None


def _load() -> tuple[bool, Exception | None]:
    try:
        if os.environ.get("DMM_KERNELS_LIBRARY"):
            torch.ops.load_library(os.environ["DMM_KERNELS_LIBRARY"])
            return True, None
        if importlib.util.find_spec("dmm_kernels._C") is None:
            raise ImportError("dmm_kernels._C is not built")
        built = (BUILD_INFO or {}).get("torch")
        if built and _release(built) != _release(torch.__version__):
            raise ImportError(f"dmm_kernels._C was built against torch {built} but torch "
                              f"{torch.__version__} is installed; rebuild it with `pip install .`")
        importlib.import_module("dmm_kernels._C")  # its static initialisers register torch.ops.dmm.*
        return True, None
    except (ImportError, OSError) as error:
        return False, error


def _configure() -> tuple[dict[str, str], str | None]:
    try:
        return backend.configure(EXTENSION_LOADED, EXTENSION_ERROR), None
    except backend.BackendError as error:  # raised by every op instead (see check_backend)
        return {"cpu": "none", "cuda": "none"}, str(error)


BUILD_INFO = read_build_info()
EXTENSION_LOADED, EXTENSION_ERROR = _load()
BACKEND, BACKEND_ERROR = _configure()  # {device type: what runs the ops}, why none can
REFERENCE_FORCED = backend.reference_forced()
HAS_EXTENSION = EXTENSION_LOADED and not REFERENCE_FORCED


def check_backend() -> None:
    """Raise BackendError (one line, naming the switch and the fix) when DMM_KERNELS_BACKEND
    cannot be honoured; the command line calls it before it spends any work."""
    if BACKEND_ERROR is not None:
        raise backend.BackendError(BACKEND_ERROR)


def uses_ops(device: torch.device) -> bool:
    """Whether tensors on `device` run through torch.ops.dmm (else the reference functions)."""
    check_backend()
    return HAS_EXTENSION and BACKEND.get(device.type) != "reference"
