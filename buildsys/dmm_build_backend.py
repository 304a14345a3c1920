"""PEP 517 backend of this project: setuptools' own, made to build against the torch of the
environment being installed into.

`pip install .` builds in an isolated environment, into which pip would otherwise install the
newest torch from the index (another release, possibly another CUDA) and compile against it. The
build process runs on the target environment's interpreter, so its site-packages are known:
when torch is there, that folder is appended to sys.path (after the isolated environment's, so
setuptools and friends still come from there) and torch is not requested for the build. Only
when the target environment has no torch does the build ask pip for one, and says so.
"""
from __future__ import annotations

import importlib.util
import os
import site
import sys

from setuptools import build_meta as _setuptools
from setuptools.build_meta import (  # the hooks this backend does not change
    build_editable,
    build_sdist,
    build_wheel,
    get_requires_for_build_sdist,
    prepare_metadata_for_build_editable,
    prepare_metadata_for_build_wheel,
)


def _target_torch_dir() -> str | None:
    """The site-packages folder of the running interpreter's environment that holds torch."""
    for folder in [*site.getsitepackages(), site.getusersitepackages()]:
        if os.path.isfile(os.path.join(folder, "torch", "__init__.py")):
            return folder
    return None


def _find_torch() -> bool:
    if importlib.util.find_spec("torch") is not None:  # --no-build-isolation, or pip gave one
        return True
    folder = _target_torch_dir()
    if folder is None:
        return False
    sys.path.append(folder)
    importlib.invalidate_caches()
    return importlib.util.find_spec("torch") is not None


__all__ = [  # the PEP 517 hooks
    "build_editable", "build_sdist", "build_wheel", "get_requires_for_build_editable",
    "get_requires_for_build_sdist", "get_requires_for_build_wheel",
    "prepare_metadata_for_build_editable", "prepare_metadata_for_build_wheel",
]
HAVE_TORCH = _find_torch()
NO_TORCH_NOTE = ("dmm_kernels build: no torch in the target environment; pip installs one into the "
                 "isolated build environment and the kernels are built against it (install torch "
                 "first to choose the release and build)")


def _requires(hook, config_settings):
    if HAVE_TORCH:
        return hook(config_settings)
    print(NO_TORCH_NOTE, file=sys.stderr, flush=True)
    return ["torch"]


def get_requires_for_build_wheel(config_settings=None):
    return _requires(_setuptools.get_requires_for_build_wheel, config_settings)


def get_requires_for_build_editable(config_settings=None):
    return _requires(_setuptools.get_requires_for_build_editable, config_settings)
