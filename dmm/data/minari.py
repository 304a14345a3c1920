"""Minari datasets ("minari:<id>") through the `minari` package, imported only when used.

Datasets are read from Minari's local store ($MINARI_DATASETS_PATH or ~/.minari/datasets);
nothing is downloaded. Minari episodes hold T+1 observations (the one after the last action
included); the last is dropped so every step has (observation, action, reward).
"""
from __future__ import annotations

import os
from pathlib import Path

import gymnasium as gym
import numpy as np

from dmm.optional import import_optional

from .d4rl import TASKS
from .dataset import TrajectoryDataset
from .staging import interrupted_install, repair_hint
from .scores import REFERENCE_RETURNS, task_family


def minari_store_dir() -> str:
    return os.environ.get("MINARI_DATASETS_PATH") or os.path.expanduser("~/.minari/datasets")


def _flat_observations(obs, space, source: str) -> np.ndarray:
    """(T+1, S) array from a Box observation, or the Box parts of a Dict one concatenated in the
    space's key order (what gymnasium.wrappers.FlattenObservation gives at evaluation)."""
    if isinstance(obs, dict):
        keys = list(getattr(space, "spaces", obs).keys())
        parts = [np.asarray(obs[k], np.float32).reshape(len(obs[k]), -1) for k in keys]
        return np.concatenate(parts, axis=1)
    obs = np.asarray(obs)
    if obs.dtype == object or obs.ndim < 1:
        raise ValueError(f"{source}: observations of space {space} are not supported; need Box or Dict of Box")
    return obs.reshape(len(obs), -1).astype(np.float32)


def _action_scale(space, source: str) -> float:
    """Scale mapping the action space to [-1, 1] (symmetric Box with one bound), else 1."""
    if not isinstance(space, gym.spaces.Box):
        raise ValueError(f"{source}: action space {space} is not continuous (Box); "
                         "DecisionMetaMamba predicts continuous actions")
    low, high = np.asarray(space.low, np.float64), np.asarray(space.high, np.float64)
    if np.all(np.isfinite(high)) and np.allclose(low, -high) and np.allclose(high, high.flat[0]) and high.flat[0] > 0:
        return float(high.flat[0])
    return 1.0


def _open(minari, dataset_id: str, source: str):
    """minari.load_dataset, with the errors of an absent, half-installed or damaged dataset as
    one line that says what to do."""
    store = Path(minari_store_dir())
    interrupted = interrupted_install(store, "minari_id", dataset_id)
    if interrupted is not None:
        raise ValueError(f"{source}: {repair_hint(interrupted)}")
    try:
        return minari.load_dataset(dataset_id, download=False)
    except FileNotFoundError as e:
        if not (store / dataset_id).exists():
            raise FileNotFoundError(
                f"{source}: not in the local Minari store {store}. This project never downloads: "
                "run `minari download <id>` yourself or set MINARI_DATASETS_PATH") from e
        why = e
    except (OSError, ValueError, KeyError) as e:  # h5py / json errors of damaged files
        why = e
    raise ValueError(f"{source}: the dataset in {store / dataset_id} is incomplete or damaged "
                     f"({type(why).__name__}: {why}); delete that folder and install or make it "
                     "again (shipped datasets: dmm datasets install DIR)")


def load_minari(dataset_id: str) -> TrajectoryDataset:
    minari = import_optional("minari", "reading 'minari:' datasets",
                             " (or use a D4RL .hdf5 file, a native .npz or an embedded dataset)")
    source = f"minari:{dataset_id}"
    data = _open(minari, dataset_id, source)
    scale = _action_scale(data.action_space, source)
    episodes = []
    for ep in data.iterate_episodes():
        T = len(ep.rewards)
        if T == 0:
            continue
        obs = _flat_observations(ep.observations, data.observation_space, source)
        if len(obs) != T + 1:
            raise ValueError(f"{source}: episode {ep.id} has {len(obs)} observations for {T} "
                             "rewards; Minari episodes must have T+1 observations")
        actions = np.asarray(ep.actions, np.float32).reshape(T, -1) / scale
        episodes.append({"observations": obs[:-1], "actions": actions,
                         "rewards": np.asarray(ep.rewards, np.float32).reshape(T),
                         "terminals": np.asarray(ep.terminations, bool).reshape(T)})
    # Evaluate where the dataset says to (eval_env_spec, private in minari 0.5), else where it
    # was collected.
    spec = getattr(data, "_eval_env_spec", None) or data.env_spec
    env_id = spec.id if spec is not None else None
    meta = data.storage.metadata
    refs = None
    if meta.get("ref_min_score") is not None and meta.get("ref_max_score") is not None:
        refs = (float(meta["ref_min_score"]), float(meta["ref_max_score"]))
    family = task_family(dataset_id)
    refs = refs or REFERENCE_RETURNS.get(family)
    max_steps = spec.max_episode_steps if spec is not None else None
    reward_scale = 1.0 if family == "antmaze" else 1000.0 if family else 1.0
    # D4RL task families get the same evaluation target as their HDF5 files.
    target = TASKS[family][2] if family in TASKS else (refs[1] if refs else None)
    return TrajectoryDataset(
        episodes, name=dataset_id, env_id=env_id, reference_returns=refs, reward_scale=reward_scale,
        target_return=target, max_ep_len=max_steps, action_scale=scale,
        metadata={"source": source, "format": "minari", "minari_version": meta.get("minari_version")})
