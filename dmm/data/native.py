"""The project's own dataset format: one .npz file.

Arrays (flat over steps, D4RL layout): observations (N, S) f32, actions (N, A) f32 in [-1, 1],
rewards (N,) f32, terminals (N,) bool, timeouts (N,) bool; an episode ends at
terminals | timeouts. `metadata` is a 0-d string array holding JSON: name, env_id,
reference_returns [random, expert] or null, reward_scale, target_return, max_ep_len,
action_scale, format_version, plus any extra fields. Loading needs no pickle.
"""
from __future__ import annotations

import json
import os
import zipfile

import numpy as np

from dmm._io import atomic_write

from .dataset import TrajectoryDataset, check_array, split_episodes

FORMAT_VERSION = 1
ARRAY_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")


def save_native(dataset: TrajectoryDataset, path: str | os.PathLike) -> str:
    """Write `dataset` to `path` atomically (temp file in the same folder, then os.replace),
    so a crash or a concurrent reader never sees a half-written file."""
    path = os.fspath(path)
    if not path.endswith(".npz"):
        raise ValueError(f"native dataset path must end with .npz, got {path!r}")
    meta = dict(dataset.metadata)
    meta.update(name=dataset.name, env_id=dataset.env_id,
                reference_returns=list(dataset.reference_returns) if dataset.reference_returns else None,
                reward_scale=dataset.reward_scale, target_return=dataset.target_return,
                max_ep_len=dataset.max_ep_len, action_scale=dataset.action_scale,
                format_version=FORMAT_VERSION)
    atomic_write(path, lambda f: np.savez(f, metadata=np.array(json.dumps(meta)), **dataset.flat()))
    return path


def load_native(path: str | os.PathLike, min_tail_len: int = 10) -> TrajectoryDataset:
    path = os.fspath(path)
    src = os.path.basename(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such dataset file")
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise ValueError("holds a single array, not a .npz archive")
        with z:
            missing = [k for k in ARRAY_KEYS + ("metadata",) if k not in z.files]
            if missing:
                raise ValueError(f"{src}: missing key '{missing[0]}'; a native dataset needs "
                                 f"{', '.join(ARRAY_KEYS)} and metadata (see dmm/data/native.py)")
            arrays = {k: z[k] for k in ARRAY_KEYS}
            meta_raw = z["metadata"]
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        if str(e).startswith(f"{src}: "):
            raise
        raise ValueError(f"{src}: not a readable .npz file ({e}); re-create it with save_native") from e
    try:
        meta = json.loads(str(meta_raw))
    except json.JSONDecodeError as e:
        raise ValueError(f"{src}: key 'metadata' is not a JSON string ({e})") from e
    if meta.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise ValueError(f"{src}: format_version {meta['format_version']} is newer than this "
                         f"code supports ({FORMAT_VERSION}); upgrade dmm")
    for key, ndim in zip(ARRAY_KEYS, (2, 2, (1, 2), 1, 1)):
        arrays[key] = check_array(arrays[key], source=src, key=key, ndim=ndim)
    episodes = split_episodes(**arrays, source=src, min_tail_len=min_tail_len)
    known = ("name", "env_id", "reference_returns", "reward_scale", "target_return",
             "max_ep_len", "action_scale", "format_version")
    refs = meta.get("reference_returns")
    return TrajectoryDataset(
        episodes, name=meta.get("name") or os.path.splitext(src)[0], env_id=meta.get("env_id"),
        reference_returns=tuple(refs) if refs else None, reward_scale=meta.get("reward_scale", 1.0),
        target_return=meta.get("target_return"), max_ep_len=meta.get("max_ep_len"),
        action_scale=meta.get("action_scale", 1.0),
        metadata={k: v for k, v in meta.items() if k not in known})
