"""Offline RL datasets: loading (embedded, D4RL HDF5, Minari, native .npz), segment sampling,
normalized scores. Entry point: load_dataset(spec)."""
from __future__ import annotations

import os

from .d4rl import load_d4rl, load_hdf5
from .dataset import PAD_ACTION, SegmentSampler, TrajectoryDataset
from .embedded import DEFAULT_DATASET, behaviour_policy, load_embedded
from .minari import load_minari
from .native import load_native, save_native
from .scores import normalized_score, reference_returns

__all__ = ["load_dataset", "TrajectoryDataset", "SegmentSampler", "normalized_score",
           "reference_returns", "behaviour_policy", "save_native", "load_native",
           "DEFAULT_DATASET", "PAD_ACTION"]

SPEC_HELP = ("'embedded:<name>' (e.g. embedded:pendulum-medium-replay), a D4RL .hdf5 path, "
             "'d4rl:<name>' (read from $D4RL_DATASET_DIR or ~/.d4rl/datasets), 'minari:<id>', "
             "or a native .npz path")


def load_dataset(spec: str | None = None) -> TrajectoryDataset:
    """Load a dataset from a spec string; None or '' gives DEFAULT_DATASET."""
    spec = os.fspath(spec) if spec else DEFAULT_DATASET
    kind, sep, rest = spec.partition(":")
    if sep and kind == "embedded":
        return load_embedded(rest)
    if sep and kind == "d4rl":
        return load_d4rl(rest)
    if sep and kind == "minari":
        return load_minari(rest)
    lower = spec.lower()
    if lower.endswith((".hdf5", ".h5")):
        return load_hdf5(spec)
    if lower.endswith(".npz"):
        return load_native(spec)
    raise ValueError(f"cannot tell what dataset {spec!r} is; use {SPEC_HELP}")
