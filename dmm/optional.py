"""Optional packages (minari, stable-baselines3, MuJoCo): looked for before any work is spent;
when one is missing, one line names it and the pip command that installs it."""
from __future__ import annotations

import importlib
import importlib.util

# module -> the pip requirement that provides it
PIP_NAMES = {"minari": "minari", "jax": "minari[create]", "stable_baselines3": "stable-baselines3",
             "mujoco": "gymnasium[mujoco]"}


class MissingPackage(ImportError):
    """An optional package a command needs is not installed (the message says what to install)."""


def require(modules, purpose: str, alternative: str = "") -> None:
    """Raise MissingPackage when any of `modules` is not installed; imports nothing."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        pips = " ".join(f"'{PIP_NAMES.get(m, m)}'" for m in missing)
        raise MissingPackage(f"{purpose} needs {', '.join(missing)}, which is not installed: "
                             f"pip install {pips}{alternative}")


def import_optional(module: str, purpose: str, alternative: str = ""):
    """The optional `module`, imported on first use (its absence must not break importing dmm)."""
    require([module], purpose, alternative)
    return importlib.import_module(module)
