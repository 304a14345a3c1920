"""A Minari dataset made from a D4RL-layout HDF5 file of `dmm datasets make` (what `dmm datasets
install` does with the shipped files, so the repository keeps each dataset once, as HDF5).

The HDF5 file holds T observations per episode; Minari holds T+1 (the one after the last
action), which the file does not have. It is found by replaying the episode: reset with the seed
`dmm datasets make` used (episode_seed(seed, RESET_STREAMS[kind], i)), then the file's actions.
The replayed observations and rewards must match the file's (else the file is not what the
recipe made, and nothing is written); the Minari steps are the file's own values, bit for bit,
so both loaders give the same data whatever the machine, and only the last observation of each
episode comes from the replay. Needs gymnasium[mujoco] and minari (not jax).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np

from dmm.optional import require

from .generate import (RESET_STREAMS, _MinariStore, _summary, algorithm_name, description,
                       episode_seed, task_of)
from .scores import REFERENCE_RETURNS

REPLAY_ATOL = 1e-4  # float32 files against float64 replays: rounding only (observed <= 5e-7)


def read_hdf5(path: Path, source: str) -> tuple[dict, dict]:
    """(arrays, dmm_metadata) of a file written by `dmm datasets make`."""
    with h5py.File(path, "r") as f:
        if "dmm_metadata" not in f.attrs:
            raise ValueError(f"{source}: no dmm_metadata attribute; only files made by `dmm datasets "
                             "make` can be turned into Minari datasets")
        meta = json.loads(f.attrs["dmm_metadata"])
        arrays = {k: f[k][()] for k in ("observations", "actions", "rewards", "terminals",
                                        "timeouts")}
    return arrays, meta


def reset_seeds(meta: dict, n_episodes: int, source: str) -> list[int]:
    """The reset seed of every episode, as `dmm datasets make` chose it."""
    kind = meta["kind"]
    if kind not in RESET_STREAMS:
        raise ValueError(f"{source}: kind {kind!r} cannot be replayed (supported: "
                         f"{', '.join(RESET_STREAMS)}); install its parts and combine them")
    return [episode_seed(meta["seed"], RESET_STREAMS[kind], i) for i in range(n_episodes)]


def _replay_last_observation(env, arrays: dict, start: int, end: int, seed: int, source: str,
                             episode: int) -> np.ndarray:
    """Replays steps start..end (inclusive) from the reset `seed`; returns the observation after
    the last action, after checking every step against the file."""
    obs, _ = env.reset(seed=seed)
    for t in range(start, end + 1):
        worst = float(np.abs(obs - arrays["observations"][t]).max())
        obs, r, term, trunc, _ = env.step(arrays["actions"][t])
        worst = max(worst, abs(float(r) - float(arrays["rewards"][t])))
        if worst > REPLAY_ATOL or (t < end and (term or trunc)):
            raise ValueError(f"{source}: episode {episode} does not replay (step {t - start}: "
                             f"deviation {worst:.3g}); the file is not what `dmm datasets make` "
                             "wrote: restore it (e.g. git checkout) or make it again")
    if bool(term) != bool(arrays["terminals"][end]) or not (term or trunc):
        raise ValueError(f"{source}: episode {episode} ends differently when replayed; restore "
                         "the file (e.g. git checkout) or make it again")
    return np.asarray(obs, np.float32)


def episode_buffers(path: Path, source: str) -> tuple[list, dict, gym.Env]:
    """The file's episodes as minari EpisodeBuffers (T+1 observations), its metadata and the env;
    errors name `source` (the file the user has)."""
    from minari.data_collector import EpisodeBuffer

    arrays, meta = read_hdf5(path, source)
    ends = np.flatnonzero(arrays["terminals"] | arrays["timeouts"])
    if len(ends) == 0 or ends[-1] != len(arrays["rewards"]) - 1:
        raise ValueError(f"{source}: the last episode is not complete (no terminal or timeout)")
    env = gym.make(meta["env_id"])
    buffers, start = [], 0
    for i, (end, seed) in enumerate(zip(ends, reset_seeds(meta, len(ends), source))):
        last = _replay_last_observation(env, arrays, start, end, seed, source, i)
        sl = slice(start, end + 1)
        buffers.append(EpisodeBuffer(
            id=i, seed=seed, observations=np.concatenate([arrays["observations"][sl], last[None]]),
            actions=arrays["actions"][sl], rewards=arrays["rewards"][sl],
            terminations=arrays["terminals"][sl], truncations=arrays["timeouts"][sl], infos={}))
        start = end + 1
    summary = _summary(arrays, meta["env_id"])
    if summary != {k: meta["behaviour"].get(k) for k in summary}:
        raise ValueError(f"{source}: its counts and returns differ from its own metadata; restore "
                         "the file (e.g. git checkout) or make it again")
    return buffers, meta, env


def make_minari(path: Path, dataset_id: str, store: Path, source: str | None = None) -> None:
    """Write the Minari dataset `dataset_id` of the HDF5 file `path` into the Minari store `store`
    (a folder; MINARI_DATASETS_PATH is pointed there while writing). `source`: the name errors
    give the file (default: path)."""
    require(["mujoco", "minari"], "making the Minari datasets from the shipped HDF5 files",
            " (or skip them: --no-minari)")
    import minari

    buffers, meta, env = episode_buffers(Path(path), source or str(path))
    task, env_id = task_of(meta["env_id"]), meta["env_id"]
    lo, hi = REFERENCE_RETURNS[task]
    space = env.observation_space  # float32, as the files (and D4RL's) keep them
    obs_space = gym.spaces.Box(space.low.astype(np.float32), space.high.astype(np.float32),
                               space.shape, np.float32)
    with _MinariStore(store), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*author_email.*")  # the project has none
        if dataset_id in minari.list_local_datasets():
            minari.delete_dataset(dataset_id)
        ds = minari.create_dataset_from_buffers(
            dataset_id, buffers, env=env.spec, eval_env=env_id,
            algorithm_name=algorithm_name(), author="decision-metamamba",
            code_permalink="dmm/data/generate.py", observation_space=obs_space,
            action_space=env.action_space, ref_min_score=lo, ref_max_score=hi,
            description=description(env_id, meta),
            requirements=[f"gymnasium[mujoco]=={gym.__version__}"])
        ds.storage.update_metadata({"dmm_metadata": json.dumps(meta)})
    env.close()
