"""D4RL-format HDF5 datasets: a file path, or "d4rl:<name>" looked up in D4RL's cache.

Keys used: observations (N, S), actions (N, A), rewards (N,), terminals (N,), timeouts (N,)
(extra keys such as infos/* and next_observations are ignored). Episodes end at
terminals | timeouts; see dataset.split_episodes for the unfinished tail. Nothing is downloaded.
"""
from __future__ import annotations

import os

import h5py

from .dataset import TrajectoryDataset, check_array, split_episodes
from .staging import interrupted_install, repair_hint
from .scores import REFERENCE_RETURNS, task_family

KEYS = {"observations": 2, "actions": 2, "rewards": (1, 2), "terminals": (1, 2), "timeouts": (1, 2)}

# family -> (Gymnasium env id to evaluate in, reward_scale, target_return, max_ep_len).
# Targets are the Decision Transformer ones (docs/ARCHITECTURE.md, "The paper's settings"); ant has no published DT
# target, so it gets ~1.1x its expert return like hopper and walker2d. D4RL was recorded with
# MuJoCo v2 envs; v5 is Gymnasium's maintained version with the same observation layout.
# AntMaze has no Gymnasium env with D4RL's layout (gymnasium-robotics' AntMaze uses dict
# observations and different mazes), so it gets env_id None: train on it, evaluate elsewhere.
TASKS = {
    "hopper": ("Hopper-v5", 1000.0, 3600.0, 1000),
    "halfcheetah": ("HalfCheetah-v5", 1000.0, 12000.0, 1000),
    "walker2d": ("Walker2d-v5", 1000.0, 5000.0, 1000),
    "ant": ("Ant-v5", 1000.0, 4300.0, 1000),
    "antmaze": (None, 1.0, 1.0, 1000),
}


def d4rl_cache_dir() -> str:
    return os.environ.get("D4RL_DATASET_DIR") or os.path.expanduser("~/.d4rl/datasets")


def _read_hdf5(path: str) -> dict:
    src = os.path.basename(path)
    try:
        with h5py.File(path, "r") as f:
            arrays = {}
            for key, ndim in KEYS.items():
                if key not in f:
                    raise ValueError(
                        f"{src}: missing key '{key}'; a D4RL dataset needs "
                        f"{', '.join(KEYS)} (found: {', '.join(sorted(f.keys())) or 'nothing'})"
                    )
                if not isinstance(f[key], h5py.Dataset):
                    raise ValueError(f"{src}: key '{key}' is a group, expected an array")
                arrays[key] = check_array(f[key][()], source=src, key=key, ndim=ndim)
    except OSError as e:  # h5py's error for truncated, corrupt or non-HDF5 files
        raise ValueError(f"{src}: cannot read as HDF5 ({e}); the file is truncated or corrupt, "
                         "download or write it again") from e
    for key in ("rewards", "terminals", "timeouts"):
        a = arrays[key]
        if a.ndim == 2 and a.shape[1] != 1:
            raise ValueError(f"{src}: key '{key}' has shape {a.shape}; expected (N,) or (N, 1)")
        arrays[key] = a.reshape(len(a))
    return arrays


def load_hdf5(path: str | os.PathLike, name: str | None = None, min_tail_len: int = 10) -> TrajectoryDataset:
    """Load a D4RL-format HDF5 file. Env id, reference returns, reward scale and target come
    from the task family in `name` (default: the file name), e.g. 'hopper-medium-v2'."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such D4RL dataset file")
    src = os.path.basename(path)
    arrays = _read_hdf5(path)
    episodes = split_episodes(**arrays, source=src, min_tail_len=min_tail_len)
    name = name or os.path.splitext(src)[0]
    family = task_family(name.replace("_", "-"))
    env_id, reward_scale, target, max_ep_len = TASKS.get(family, (None, 1000.0, None, None))
    meta = {"source": os.path.abspath(path), "format": "d4rl-hdf5"}
    if family == "antmaze":
        meta["note"] = "no Gymnasium env with D4RL's AntMaze layout; env_id is None"
    elif family is None:
        meta["note"] = "unknown task family: no env_id or reference returns; pass them yourself"
    return TrajectoryDataset(episodes, name=name, env_id=env_id,
                             reference_returns=REFERENCE_RETURNS.get(family), reward_scale=reward_scale,
                             target_return=target, max_ep_len=max_ep_len, metadata=meta)


def load_d4rl(name: str, min_tail_len: int = 10) -> TrajectoryDataset:
    """'hopper-medium-v2' -> <cache>/hopper-medium-v2.hdf5, or D4RL's own download name
    <cache>/hopper_medium-v2.hdf5. Never downloads."""
    cache = d4rl_cache_dir()
    base = name[:-5] if name.endswith(".hdf5") else name
    head, _, rest = base.partition("-")
    candidates = [base + ".hdf5"] + ([f"{head}_{rest}.hdf5"] if rest else [])
    for fname in candidates:
        path = os.path.join(cache, fname)
        if os.path.isfile(path):
            return load_hdf5(path, name=base, min_tail_len=min_tail_len)
        interrupted = interrupted_install(cache, "hdf5", fname)
        if interrupted is not None:
            raise FileNotFoundError(f"d4rl:{name}: {repair_hint(interrupted)}")
    tried = ", ".join(os.path.join(cache, c) for c in candidates)
    raise FileNotFoundError(
        f"d4rl:{name}: not found (tried {tried}). This project never downloads: copy the D4RL "
        "file there, or set D4RL_DATASET_DIR to the folder holding it"
    )
