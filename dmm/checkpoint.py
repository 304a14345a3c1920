"""Atomic checkpoints: everything needed to rebuild a model and to resume training exactly.

A checkpoint is a plain dict saved with torch.save:
    format          CHECKPOINT_FORMAT (bumped when the layout changes)
    model_config    dict for dmm.build_model (state_dim / act_dim included)
    model           state dict
    optimizer, scheduler      state dicts (absent in inference-only checkpoints)
    step            number of optimizer steps completed
    rng             python / numpy / torch (and cuda) generator states
    state_mean, state_std     numpy arrays used to normalize observations
    reward_scale    returns-to-go are divided by this
    dataset         the dataset spec the model was trained on
    config          the resolved run configuration (nested dict, see dmm.train)
"""
from __future__ import annotations

import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dmm._io import atomic_write

CHECKPOINT_FORMAT = 1
# Checkpoints are written atomically, so a damaged one was cut short or changed afterwards.
_DAMAGED_FIX = ("copy it again from where it came from, or start a new run (dmm train without "
                "--resume)")


def rng_state() -> dict:
    """Snapshot of every global random generator the training loop touches."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write `payload` to `path` atomically: a temporary file in the same folder, then
    os.replace, so a crash or Ctrl-C mid-write never leaves a truncated checkpoint."""
    payload = {"format": CHECKPOINT_FORMAT, **payload}
    return atomic_write(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by save_checkpoint. `path` may be the .pt file or a run
    folder (then <run>/checkpoints/last.pt is used)."""
    path = resolve_checkpoint_path(path)
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file, not a checkpoint; {_DAMAGED_FIX}")
    try:
        # weights_only=False: the payload holds numpy arrays and RNG tuples; only load files you trust.
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as e:
        why = " ".join(str(e).split())[:200]  # torch's reader errors span lines
        raise ValueError(f"{path}: cannot read as a checkpoint ({type(e).__name__}: {why}); it is "
                         f"truncated or damaged; {_DAMAGED_FIX}") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
        raise ValueError(f"{path} is not a dmm checkpoint (missing 'model' / 'model_config')")
    if ckpt.get("format", 0) > CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} has checkpoint format {ckpt['format']}, newer than this dmm "
            f"({CHECKPOINT_FORMAT}); upgrade dmm to read it")
    return ckpt


def resolve_checkpoint_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.is_dir():
        candidate = path / "checkpoints" / "last.pt"
        if not candidate.exists():
            raise FileNotFoundError(
                f"run folder {path} has no checkpoints/last.pt; pass the .pt file itself")
        return candidate
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path
