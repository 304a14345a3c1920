"""MuJoCo locomotion datasets made here the D4RL way (docs/ARCHITECTURE.md, "Datasets"): `dmm datasets make ENV`.

D4RL built its locomotion data by training SAC online and saving what it saw. This module does
the same on Gymnasium's MuJoCo v5 tasks with stable-baselines3's SAC, in stages that each leave
files in a work folder, so an interrupted call continues where it stopped:

  stage       what it does                                          files in the work folder
  train       SAC from scratch; every EVAL_EVERY steps (at the end   model.zip, replay_buffer.pkl,
              of an episode) 10 evaluation episodes of the            state.json (checkpoint every
              stochastic policy; the first evaluation whose mean      CKPT_EVERY steps)
              return reaches MEDIUM_FRACTION of D4RL's expert
              reference return is the MEDIUM CUT: the policy is      medium.zip, medium_replay.npz
              frozen there, and the replay buffer up to it saved
  expert      (--until expert) SAC goes on to EXPERT_STEPS           expert.zip
  datasets    random   uniform actions                               <out>/...
              medium   the frozen medium policy, stochastic actions
              medium-replay  every transition SAC trained on up to the cut
              expert, medium-expert (medium and expert concatenated) when the expert exists

Each dataset is written twice: as a Minari dataset through minari's own DataCollector (in
<out>/minari, a Minari store: MINARI_DATASETS_PATH=<out>/minari, id dmm/<task>/<kind>-v0) and
in D4RL's HDF5 layout (<out>/d4rl/<task>-<kind>-dmm-v0.hdf5: observations, actions, rewards,
terminals, timeouts, next_observations; float32 / bool; gzip). Rollouts (random, medium,
expert) step a DataCollector-wrapped env and keep the same steps for the HDF5 file. The
medium-replay transitions come from the SAC replay buffer; every training episode was reset
with a seed this module chose (SeededResets), so they are written to Minari by replaying the
recorded actions from that seed through a DataCollector-wrapped env, and the replayed
observations and rewards are checked against the buffer's.

Every dataset records its behaviour policy's measured return (mean, std, count of its own
complete episodes), the SAC step count and the evaluation return at the cut, and the recipe.
Normalized scores use D4RL's reference returns (dmm.data.scores.REFERENCE_RETURNS).

Determinism: one torch thread; seeds for SAC, every reset and the rollouts derive from --seed.
A run resumed from a checkpoint is not bit-identical to an uninterrupted one (the torch
generator is not checkpointed), but every file it writes is self-consistent.
"""
from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np
import torch
from tqdm import tqdm

from dmm.optional import require

from .d4rl import d4rl_cache_dir
from .staging import sha256
from .minari import minari_store_dir
from .scores import REFERENCE_RETURNS

# ---- the recipe (documented in README.md; changing it changes the data: bump RECIPE_VERSION) --

RECIPE_VERSION = 1
SAC_KWARGS = dict(  # stable-baselines3 SAC defaults, written out so a library change shows
    policy="MlpPolicy", learning_rate=3e-4, buffer_size=1_000_000, learning_starts=100,
    batch_size=256, tau=0.005, gamma=0.99, train_freq=1, gradient_steps=1, ent_coef="auto",
    policy_kwargs=dict(net_arch=[256, 256]),
)
MEDIUM_FRACTION = 1.0 / 3.0  # medium cut: evaluation return >= this * D4RL expert reference
EVAL_EVERY = 5_000           # SAC steps between evaluations (taken at the next episode end)
EVAL_EPISODES = 10           # stochastic-policy episodes per evaluation
CKPT_EVERY = 10_000          # SAC steps between checkpoints (at an episode end)
MAX_MEDIUM_STEPS = 1_000_000  # give up looking for the medium cut after this many steps
EXPERT_STEPS = 1_000_000     # SAC steps of the expert policy (D4RL trained ~1M for hopper)
DATASET_STEPS = 1_000_000    # steps of random / medium / expert datasets (D4RL: 1M), whole episodes
ENVS = ("Hopper-v5", "HalfCheetah-v5", "Walker2d-v5")
KINDS = ("random", "medium", "medium-replay", "expert", "medium-expert")
MINARI_NAMESPACE = "dmm"
DATASET_VERSION = "v0"
# Reset seeds: episode i of a dataset kind starts from episode_seed(seed, stream, i); the SAC
# training env uses stream 1 (so medium-replay, its replay buffer, replays from it).
RESET_STREAMS = {"medium-replay": 1, "random": 10, "medium": 11, "expert": 12}


def work_root() -> Path:
    root = os.environ.get("DMM_CACHE_DIR") or os.path.expanduser("~/.cache/dmm")
    return Path(root) / "sac"


def task_of(env_id: str) -> str:
    """'Hopper-v5' -> 'hopper'; a ValueError listing the supported envs for any other env."""
    if env_id not in ENVS:
        raise ValueError(f"{env_id!r} is not an env `dmm datasets make` supports; choose one of "
                         f"{', '.join(ENVS)} (D4RL's locomotion tasks on Gymnasium's MuJoCo v5)")
    return env_id.split("-")[0].lower()


def check_can_make(env_id: str, kinds: list[str]) -> None:
    """What `dmm datasets make` needs, checked before anything is imported or written: a
    supported env, known dataset kinds, and the optional packages (SAC only past random)."""
    task_of(env_id)
    for k in kinds:
        if k not in KINDS:
            raise ValueError(f"unknown dataset kind {k!r}; choose from {', '.join(KINDS)}")
    needs = ["mujoco", "minari", "jax"] + ([] if kinds == ["random"] else ["stable_baselines3"])
    require(needs, "dmm datasets make", " (or: pip install '.[datasets]')")


def medium_threshold(env_id: str) -> float:
    return MEDIUM_FRACTION * REFERENCE_RETURNS[task_of(env_id)][1]


def minari_id(env_id: str, kind: str) -> str:
    return f"{MINARI_NAMESPACE}/{task_of(env_id)}/{kind}-{DATASET_VERSION}"


def hdf5_name(env_id: str, kind: str) -> str:
    return f"{task_of(env_id)}-{kind}-dmm-{DATASET_VERSION}.hdf5"


def episode_seed(seed: int, stream: int, index: int) -> int:
    """Reset seed of episode `index` of stream (1 = SAC training, 2 = evaluation, 10+ = datasets)."""
    return int(np.random.SeedSequence([seed, stream, index]).generate_state(1)[0])


def _log(msg: str, log=None) -> None:
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    if log is not None:
        with open(log, "a") as f:
            f.write(line + "\n")


def _atomic_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


# ---- stage 1: SAC ------------------------------------------------------------------------------

def _seeded_resets_env(env_id: str, base_seed: int, first_episode: int):

    class SeededResets(gym.Wrapper):
        """Resets episode i with episode_seed(seed, 1, i), whatever seed the caller passes, so
        every training episode can be replayed exactly from the replay buffer's actions."""

        def __init__(self, env):
            super().__init__(env)
            self.episode = first_episode

        def reset(self, *, seed=None, options=None):  # noqa: ARG002 (the seed is ours)
            s = episode_seed(base_seed, 1, self.episode)
            self.episode += 1
            return self.env.reset(seed=s, options=options)

    return SeededResets(gym.make(env_id))


def evaluate_policy_returns(model, env_id: str, seed: int, n: int = EVAL_EPISODES,
                            deterministic: bool = False, stream: int = 2) -> np.ndarray:

    env = gym.make(env_id)
    out = []
    for i in range(n):
        obs, _ = env.reset(seed=episode_seed(seed, stream, i))
        done, ret = False, 0.0
        while not done:
            act, _ = model.predict(obs, deterministic=deterministic)
            obs, r, term, trunc, _ = env.step(act)
            ret += float(r)
            done = term or trunc
        out.append(ret)
    env.close()
    return np.asarray(out)


def _extract_buffer(model, n_steps: int) -> dict:
    buf = model.replay_buffer
    if buf.full or buf.pos < n_steps:
        raise RuntimeError(f"replay buffer holds {buf.pos} steps (full={buf.full}); "
                           f"cannot extract the first {n_steps}")
    dones = buf.dones[:n_steps, 0].astype(bool)
    timeouts = buf.timeouts[:n_steps, 0].astype(bool)
    return {"observations": buf.observations[:n_steps, 0].astype(np.float32),
            "next_observations": buf.next_observations[:n_steps, 0].astype(np.float32),
            "actions": buf.actions[:n_steps, 0].astype(np.float32),
            "rewards": buf.rewards[:n_steps, 0].astype(np.float32),
            "terminals": dones & ~timeouts, "timeouts": timeouts}


def train_sac(env_id: str, work: Path, seed: int = 0, until: str = "medium",
              max_medium_steps: int = MAX_MEDIUM_STEPS, expert_steps: int = EXPERT_STEPS,
              eval_every: int = EVAL_EVERY, ckpt_every: int = CKPT_EVERY,
              eval_episodes: int = EVAL_EPISODES, threshold: float | None = None,
              progress: bool = True, log: Path | None = None) -> dict:
    """Train (or resume) SAC until the medium cut (until='medium') or EXPERT_STEPS ('expert').
    Returns state.json's content."""
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback

    torch.set_num_threads(1)
    work.mkdir(parents=True, exist_ok=True)
    threshold = medium_threshold(env_id) if threshold is None else float(threshold)
    state = _sac_state(work, env_id, seed, threshold, eval_every, eval_episodes)
    target = expert_steps if until == "expert" else max_medium_steps
    if state["medium"] is not None and (until == "medium" or state["expert"] is not None):
        return state
    if state["timesteps"] >= target and until == "medium":
        raise RuntimeError(f"no medium cut after {state['timesteps']} SAC steps (threshold "
                           f"{threshold:.0f}); raise --max-medium-steps")

    env = _seeded_resets_env(env_id, seed, state["episodes"])
    model = _sac_model(SAC, work, env, state, seed, threshold, log)
    bar = None
    if progress:
        bar = tqdm(total=target, initial=state["timesteps"], unit="step", desc=f"SAC {env_id}",
                   mininterval=2.0, smoothing=0.05)
    run = _SacRun(model, work, state, until, target, threshold,
                  dict(eval_every=eval_every, ckpt_every=ckpt_every, eval_episodes=eval_episodes),
                  log)
    model.learn(total_timesteps=max(target - state["timesteps"], 1) + 2000,
                callback=_sac_hook(BaseCallback, run, bar), reset_num_timesteps=False,
                log_interval=10**9)
    if bar is not None:
        bar.close()
    if until == "medium" and state["medium"] is None:
        raise RuntimeError(f"no medium cut after {state['timesteps']} SAC steps (threshold "
                           f"{threshold:.0f}); raise --max-medium-steps")
    if until == "expert" and state["timesteps"] >= expert_steps:
        model.save(work / "expert.zip")
        rets = evaluate_policy_returns(model, env_id, seed, eval_episodes)
        state["expert"] = {"step": state["timesteps"], "eval_return_mean": float(rets.mean()),
                           "eval_return_std": float(rets.std())}
        _atomic_json(work / "state.json", state)
        _log(f"EXPERT at step {state['timesteps']}: eval return {rets.mean():.1f}", log)
    env.close()
    return state


def _sac_state(work: Path, env_id: str, seed: int, threshold: float, eval_every: int,
               eval_episodes: int) -> dict:
    """state.json of the work folder, or a new run's."""
    state_path = work / "state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {
        "env_id": env_id, "seed": seed, "recipe_version": RECIPE_VERSION,
        "sac": {k: v for k, v in SAC_KWARGS.items()}, "medium_threshold": threshold,
        "eval_every": eval_every, "eval_episodes": eval_episodes,
        "timesteps": 0, "episodes": 0, "train_seconds": 0.0, "evals": [], "medium": None,
        "expert": None}
    if state["env_id"] != env_id or state["seed"] != seed:
        raise ValueError(f"{work}: holds a run of {state['env_id']} seed {state['seed']}")
    return state


def _sac_model(SAC, work: Path, env, state: dict, seed: int, threshold: float, log):
    """The SAC model of the work folder's checkpoint, or a new one."""
    env_id = state["env_id"]
    if not (work / "model.zip").exists():
        kw = dict(SAC_KWARGS)
        model = SAC(kw.pop("policy"), env, seed=seed, device="cpu", verbose=0, **kw)
        _log(f"started {env_id} SAC seed {seed}; medium cut at evaluation return >= "
             f"{threshold:.1f}", log)
        return model
    model = SAC.load(work / "model.zip", env=env, device="cpu")
    model.load_replay_buffer(work / "replay_buffer.pkl")
    model._last_obs = None  # a fresh episode: the env of the checkpoint is gone
    if model.num_timesteps != state["timesteps"] or model.replay_buffer.size() != min(
            state["timesteps"], SAC_KWARGS["buffer_size"]):
        raise RuntimeError(f"{work}: checkpoint and state.json disagree (model at "
                           f"{model.num_timesteps} steps, state at {state['timesteps']}); "
                           "delete the folder to start again")
    _log(f"resumed {env_id} SAC at {state['timesteps']} steps, {state['episodes']} episodes", log)
    return model


class _SacRun:
    """A SAC run's bookkeeping at episode ends: evaluations, the medium cut, checkpoints, and
    when to stop (SB3's callback, _sac_hook, calls episode_end)."""

    def __init__(self, model, work: Path, state: dict, until: str, target: int,
                 threshold: float, every: dict, log):
        self.model, self.work, self.state, self.until = model, work, state, until
        self.target, self.threshold, self.log = target, threshold, log
        self.eval_every, self.ckpt_every = every["eval_every"], every["ckpt_every"]
        self.eval_episodes = every["eval_episodes"]
        self.episodes = state["episodes"]
        self.next_eval = (state["timesteps"] // self.eval_every + 1) * self.eval_every
        self.next_ckpt = (state["timesteps"] // self.ckpt_every + 1) * self.ckpt_every
        self.t0_seconds = state["train_seconds"]
        self.t_start = time.perf_counter() - self.t0_seconds
        self.start_steps = state["timesteps"]
        self.stop = False

    def checkpoint(self, n_steps: int, seconds: float) -> None:
        # Write all three, then swap them in together: an interruption leaves either the old
        # checkpoint or the new one (but for a window of microseconds between the renames).
        work, state = self.work, self.state
        self.model.save(work / "model.tmp.zip")
        self.model.save_replay_buffer(work / "replay_buffer.tmp.pkl")
        state.update(timesteps=n_steps, episodes=self.episodes, train_seconds=round(seconds, 1))
        (work / "state.tmp.json").write_text(json.dumps(state, indent=1))
        os.replace(work / "model.tmp.zip", work / "model.zip")
        os.replace(work / "replay_buffer.tmp.pkl", work / "replay_buffer.pkl")
        os.replace(work / "state.tmp.json", work / "state.json")

    def episode_end(self, n: int) -> None:
        self.episodes += 1
        assert self.model.replay_buffer.size() == min(n, SAC_KWARGS["buffer_size"])
        seconds = time.perf_counter() - self.t_start
        if n >= self.next_eval:  # after the cut too: the way to the expert is logged
            self.next_eval = (n // self.eval_every + 1) * self.eval_every
            self._evaluate(n, seconds)
        if n >= self.next_ckpt:
            self.next_ckpt = (n // self.ckpt_every + 1) * self.ckpt_every
            self.checkpoint(n, seconds)
        if n >= self.target:
            self.checkpoint(n, seconds)
            self.stop = True

    def _evaluate(self, n: int, seconds: float) -> None:
        state, env_id = self.state, self.state["env_id"]
        rets = evaluate_policy_returns(self.model, env_id, state["seed"], self.eval_episodes)
        state["evals"].append({"step": n, "return_mean": float(rets.mean()),
                               "return_std": float(rets.std()), "seconds": round(seconds, 1)})
        rate = (n - self.start_steps) / max(seconds - self.t0_seconds, 1e-9)
        _log(f"{env_id} step {n}: eval return {rets.mean():.1f} +- {rets.std():.1f} "
             f"({self.episodes} episodes, {rate:.1f} steps/s this call)", self.log)
        if state["medium"] is None and rets.mean() >= self.threshold:
            self.model.save(self.work / "medium.zip")
            np.savez_compressed(self.work / "medium_replay.npz",
                                **_extract_buffer(self.model, n), n_episodes=self.episodes)
            state["medium"] = {"step": n, "episodes": self.episodes,
                               "eval_return_mean": float(rets.mean()),
                               "eval_return_std": float(rets.std()),
                               "eval_returns": [round(float(r), 2) for r in rets],
                               "seconds": round(seconds, 1)}
            _log(f"MEDIUM CUT at step {n}: eval return {rets.mean():.1f} >= "
                 f"{self.threshold:.1f}", self.log)
            self.checkpoint(n, seconds)
            self.stop = self.until == "medium"


def _sac_hook(BaseCallback, run: _SacRun, bar):
    """SB3's callback for `run` (BaseCallback passed in: stable-baselines3 is optional)."""

    class Hook(BaseCallback):
        def __init__(self):
            super().__init__()
            self.episode_ended = False

        # SB3 calls on_step before it stores the step in the replay buffer and on_rollout_end
        # after (train_freq 1: one step per rollout), so the bookkeeping is done at rollout end.
        def _on_step(self) -> bool:
            if run.stop:
                return False
            if bar is not None:
                bar.update(1)
            self.episode_ended = bool(self.locals["dones"][0])
            return True

        def _on_rollout_end(self) -> None:
            if self.episode_ended:
                self.episode_ended = False
                run.episode_end(self.num_timesteps)

    return Hook()


# ---- stage 3: datasets ---------------------------------------------------------------------

def default_out_dirs() -> tuple[Path, Path]:
    """(D4RL HDF5 folder, Minari store): the caches the loaders read by default."""
    return Path(d4rl_cache_dir()), Path(minari_store_dir())


class _MinariStore:
    """Points minari (DataCollector, load_dataset, ...) at one store while in the block."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()  # minari breaks on a relative MINARI_DATASETS_PATH

    def __enter__(self):
        self.old = os.environ.get("MINARI_DATASETS_PATH")
        self.root.mkdir(parents=True, exist_ok=True)
        os.environ["MINARI_DATASETS_PATH"] = str(self.root)
        return self

    def __exit__(self, *exc):
        if self.old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = self.old


def _returns(rewards: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Returns of the episodes that end at indices `ends` (inclusive), in order."""
    csum = np.concatenate([[0.0], np.cumsum(rewards, dtype=np.float64)])
    starts = np.concatenate([[0], ends[:-1] + 1])
    return csum[ends + 1] - csum[starts]


def _summary(arrays: dict, env_id: str) -> dict:
    ends = np.flatnonzero(arrays["terminals"] | arrays["timeouts"])
    rets = _returns(arrays["rewards"], ends)
    lo, hi = REFERENCE_RETURNS[task_of(env_id)]
    norm = 100.0 * (rets - lo) / (hi - lo)
    return {"steps": int(len(arrays["rewards"])), "episodes": int(len(ends)),
            "return_mean": float(rets.mean()), "return_std": float(rets.std()),
            "return_min": float(rets.min()), "return_max": float(rets.max()),
            "normalized_mean": float(norm.mean()),
            "terminals": int(arrays["terminals"].sum()), "timeouts": int(arrays["timeouts"].sum())}


def write_hdf5(path: Path, arrays: dict, metadata: dict, next_observations: bool = True) -> None:
    """D4RL layout, float32 / bool, gzip; `metadata` as JSON in the attribute dmm_metadata.
    next_observations (D4RL's v2 files have them) can be left out: the files are 40% smaller."""

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        for key in ("observations", "next_observations", "actions", "rewards"):
            if key == "next_observations" and (not next_observations or key not in arrays):
                continue
            f.create_dataset(key, data=np.asarray(arrays[key], np.float32), compression="gzip",
                             compression_opts=9, shuffle=True)
        for key in ("terminals", "timeouts"):
            f.create_dataset(key, data=np.asarray(arrays[key], bool), compression="gzip",
                             compression_opts=9)
        f.attrs["dmm_metadata"] = json.dumps(metadata)
    os.replace(tmp, path)


def _new_collector(env_id: str, dataset_id: str):
    import minari

    if dataset_id in minari.list_local_datasets():
        minari.delete_dataset(dataset_id)
    # float32 observations, as in D4RL's files (MuJoCo's are float64): half the size. Cast in
    # a StepDataCallback, not a wrapper, so the dataset's env_spec stays plain (serializable).
    env = gym.make(env_id)
    space = env.observation_space
    obs_space = gym.spaces.Box(space.low.astype(np.float32), space.high.astype(np.float32),
                               space.shape, np.float32)

    class Float32Observations(minari.StepDataCallback):
        def __call__(self, env, **kw):
            data = super().__call__(env, **kw)
            data["observation"] = np.asarray(data["observation"], np.float32)
            return data

    return minari.DataCollector(env, step_data_callback=Float32Observations, record_infos=False,
                                observation_space=obs_space)


def _finish_minari(collector, env_id: str, dataset_id: str, metadata: dict):
    import stable_baselines3

    lo, hi = REFERENCE_RETURNS[task_of(env_id)]
    with warnings.catch_warnings():  # "author_email is set to None": the project has none
        warnings.filterwarnings("ignore", message=".*author_email.*")
        ds = _create(collector, env_id, dataset_id, metadata, lo, hi, stable_baselines3)
    ds.storage.update_metadata({"dmm_metadata": json.dumps(metadata)})
    collector.close()
    return ds


def algorithm_name(sb3_version: str | None = None) -> str:
    return f"SAC (stable-baselines3{' ' + sb3_version if sb3_version else ''}), `dmm datasets make`"


def description(env_id: str, metadata: dict) -> str:
    return (f"{env_id} {metadata['kind']} data made the D4RL way by `dmm datasets make` (recipe "
            f"{metadata.get('recipe_version', RECIPE_VERSION)}); D4RL's reference returns for "
            "normalization. " + json.dumps(metadata["behaviour"]))


def _create(collector, env_id, dataset_id, metadata, lo, hi, stable_baselines3):
    return collector.create_dataset(
        dataset_id=dataset_id, eval_env=env_id,
        algorithm_name=algorithm_name(stable_baselines3.__version__),
        author="decision-metamamba", code_permalink="dmm/data/generate.py",
        ref_min_score=lo, ref_max_score=hi, description=description(env_id, metadata),
        requirements=[f"gymnasium[mujoco]=={gym.__version__}"])


def rollout_dataset(env_id: str, policy, n_steps: int, seed: int, stream: int, dataset_id: str,
                    progress: bool = True, desc: str = "") -> dict:
    """Whole episodes of `policy(obs) -> action` in a DataCollector-wrapped env until at least
    n_steps steps; returns the same steps as D4RL arrays (the Minari dataset is left in the
    collector for _finish_minari)."""
    collector = _new_collector(env_id, dataset_id)
    keys = ("observations", "next_observations", "actions", "rewards", "terminals", "timeouts")
    buf = {k: [] for k in keys}
    bar = None
    if progress:
        bar = tqdm(total=n_steps, unit="step", desc=desc, mininterval=2.0)
    total, i = 0, 0
    while total < n_steps:
        obs, _ = collector.reset(seed=episode_seed(seed, stream, i))
        i += 1
        done = False
        while not done:
            act = np.asarray(policy(obs), np.float32)
            nxt, r, term, trunc, _ = collector.step(act)
            for k, v in zip(keys, (obs, nxt, act, r, term, trunc and not term)):
                buf[k].append(v)
            obs, done = nxt, term or trunc
            total += 1
        if bar is not None:
            bar.update(min(total, n_steps) - bar.n)
    if bar is not None:
        bar.close()
    arrays = {k: np.asarray(v, np.float32) for k, v in buf.items()}
    arrays["terminals"] = arrays["terminals"].astype(bool)
    arrays["timeouts"] = arrays["timeouts"].astype(bool)
    return {"arrays": arrays, "collector": collector}


def replay_dataset(env_id: str, arrays: dict, seed: int, dataset_id: str, progress: bool = True,
                   atol: float = 1e-4):
    """The SAC replay buffer through a DataCollector: episode i reset with episode_seed(seed, 1,
    i), then the buffer's actions; observations and rewards must match the buffer's."""
    collector = _new_collector(env_id, dataset_id)
    ends = np.flatnonzero(arrays["terminals"] | arrays["timeouts"])
    if len(ends) == 0 or ends[-1] != len(arrays["rewards"]) - 1:
        raise ValueError("the replay buffer must end with a complete episode")
    it = range(len(ends))
    if progress:
        it = tqdm(it, unit="episode", desc="medium-replay via DataCollector", mininterval=2.0)
    start, worst = 0, 0.0
    for i in it:
        obs, _ = collector.reset(seed=episode_seed(seed, 1, i))
        for t in range(start, ends[i] + 1):
            worst = max(worst, float(np.abs(obs - arrays["observations"][t]).max()))
            obs, r, term, trunc, _ = collector.step(arrays["actions"][t])
            worst = max(worst, abs(float(r) - float(arrays["rewards"][t])))
        if bool(term) != bool(arrays["terminals"][ends[i]]) or not (term or trunc):
            raise RuntimeError(f"replaying episode {i} of the replay buffer ended differently "
                               "from the recorded one")
        start = ends[i] + 1
    if worst > atol:
        raise RuntimeError(f"replayed medium-replay differs from the replay buffer by {worst:.3g}")
    return collector, worst


def _policy_fn(model, deterministic: bool = False):
    """obs -> env action of an SB3 SAC model: what model.predict computes, without its
    per-call overhead (3x faster on one thread)."""

    actor, policy = model.policy.actor, model.policy
    policy.set_training_mode(False)

    def act(obs):
        with torch.no_grad():
            a = actor(torch.as_tensor(np.asarray(obs, np.float32)[None]), deterministic=deterministic)
        return policy.unscale_action(a.numpy()[0])
    return act


def make_datasets(env_id: str, seed: int = 0, until: str = "medium", kinds=None,
                  steps: int = DATASET_STEPS, work: Path | None = None,
                  d4rl_dir: Path | None = None, minari_dir: Path | None = None,
                  progress: bool = True, force: bool = False, next_observations: bool = True,
                  train_kwargs: dict | None = None) -> dict:
    """`dmm datasets make ENV`: train (or resume) SAC, then write every dataset of `kinds` that is
    not written yet (force: rewrite). Returns {kind: summary}."""
    kinds = list(kinds) if kinds else (list(KINDS) if until == "expert" else
                                       ["random", "medium", "medium-replay"])
    check_can_make(env_id, kinds)
    torch.set_num_threads(1)
    work = Path(work) if work is not None else work_root() / f"{env_id}-seed{seed}"
    dd, md = default_out_dirs()
    d4rl_dir = (Path(d4rl_dir) if d4rl_dir is not None else dd).resolve()
    minari_dir = (Path(minari_dir) if minari_dir is not None else md).resolve()  # minari needs it
    log = work / "make.log"
    work.mkdir(parents=True, exist_ok=True)
    if any(k in ("expert", "medium-expert") for k in kinds):
        until = "expert"
    state = _sac_stage(env_id, work, seed, until, kinds, progress, log, train_kwargs)
    lo, hi = REFERENCE_RETURNS[task_of(env_id)]
    done_path = work / "datasets.json"
    done = json.loads(done_path.read_text()) if done_path.exists() else {}
    job = _DatasetJob(env_id, seed, steps, work, d4rl_dir, state, progress, next_observations,
                      {"env_id": env_id, "seed": seed, "recipe_version": RECIPE_VERSION,
                       "sac": SAC_KWARGS | {"policy_kwargs": str(SAC_KWARGS["policy_kwargs"])},
                       "medium_threshold": state["medium_threshold"],
                       "medium_cut": state["medium"], "expert": state.get("expert"),
                       "reference_returns": [lo, hi]})
    results = {}
    for kind in kinds:
        h5, mid = d4rl_dir / hdf5_name(env_id, kind), minari_id(env_id, kind)
        key = f"{kind}|{h5}|{minari_dir / mid}"
        if not force and key in done and h5.exists() and (minari_dir / mid).exists():
            results[kind] = done[key]
            _log(f"{kind}: already written ({h5})", log)
            continue
        t1 = time.perf_counter()
        with _MinariStore(minari_dir):
            meta, summary = job.write(kind, h5, mid)
        meta["generation_seconds"] = round(time.perf_counter() - t1, 1)
        results[kind] = done[key] = meta
        _atomic_json(done_path, done)
        _log(f"{kind}: {summary['episodes']} episodes, {summary['steps']} steps, return "
             f"{summary['return_mean']:.1f} +- {summary['return_std']:.1f} (normalized "
             f"{summary['normalized_mean']:.1f}) in {meta['generation_seconds']:.0f} s -> {h5}, "
             f"minari:{mid} in {minari_dir}", log)
    return results


def _sac_stage(env_id, work: Path, seed: int, until: str, kinds, progress, log, train_kwargs):
    """state.json after SAC trained as far as `until` (random alone needs no SAC)."""
    if kinds == ["random"]:  # the state is whatever the work folder holds
        return (json.loads((work / "state.json").read_text()) if (work / "state.json").exists()
                else {"medium_threshold": medium_threshold(env_id), "medium": None,
                      "expert": None, "timesteps": 0})
    t0 = time.perf_counter()
    state = train_sac(env_id, work, seed, until=until, progress=progress, log=log,
                      **(train_kwargs or {}))
    _log(f"SAC stage done in {time.perf_counter() - t0:.0f} s this call "
         f"({state['train_seconds']:.0f} s of SAC in all, {state['timesteps']} steps)", log)
    return state


class _DatasetJob:
    """Writes one dataset kind of a make_datasets call: its steps (rollout, replay or the
    medium + expert concatenation) as a Minari dataset (in the current _MinariStore) and an
    HDF5 file."""

    def __init__(self, env_id, seed, steps, work, d4rl_dir, state, progress, next_observations,
                 base_meta):
        self.env_id, self.seed, self.steps, self.work = env_id, seed, steps, work
        self.d4rl_dir, self.state, self.progress = d4rl_dir, state, progress
        self.next_observations, self.base_meta = next_observations, base_meta
        self.arrays_of: dict = {}  # kind -> arrays written in this call (medium-expert reuses)
        self.action_space = gym.make(env_id).action_space

    def write(self, kind: str, h5: Path, mid: str) -> tuple[dict, dict]:
        """-> (metadata, summary) of the dataset written."""
        t1 = time.perf_counter()
        arrays, collector, ds, behaviour = self._steps(kind, mid)
        summary = _summary(arrays, self.env_id)
        state = self.state
        meta = dict(self.base_meta, kind=kind, behaviour={"policy": behaviour, **summary},
                    minari_id=mid, hdf5=h5.name,
                    generation_seconds=round(time.perf_counter() - t1, 1),
                    sac_steps=(state["medium"]["step"] if kind in ("medium", "medium-replay")
                               else state["timesteps"] if kind == "expert" else 0))
        if collector is not None:
            _finish_minari(collector, self.env_id, mid, meta)
        else:
            lo, hi = self.base_meta["reference_returns"]
            ds.storage.update_metadata({"ref_min_score": lo, "ref_max_score": hi,
                                        "dmm_metadata": json.dumps(meta)})
        write_hdf5(h5, arrays, meta, next_observations=self.next_observations)
        self.arrays_of[kind] = arrays
        return meta, summary

    def _steps(self, kind: str, mid: str):
        """(arrays, DataCollector or None, combined Minari dataset or None, behaviour)."""
        env_id, seed = self.env_id, self.seed
        if kind in ("random", "medium", "expert"):
            policy, behaviour = self._policy(kind)
            out = rollout_dataset(env_id, policy, self.steps, seed, RESET_STREAMS[kind], mid,
                                  progress=self.progress, desc=f"{env_id} {kind}")
            return out["arrays"], out["collector"], None, behaviour
        if kind == "medium-replay":
            with np.load(self.work / "medium_replay.npz") as z:
                arrays = {k: z[k] for k in ("observations", "next_observations", "actions",
                                            "rewards", "terminals", "timeouts")}
            collector, worst = replay_dataset(env_id, arrays, seed, mid, progress=self.progress)
            return arrays, collector, None, (
                f"every transition of SAC training up to the medium cut (step "
                f"{self.state['medium']['step']}); replay max deviation {worst:.2g}")
        return self._medium_expert(mid)

    def _policy(self, kind: str):
        """(obs -> action, its description) of a rollout kind."""
        if kind == "random":
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, RESET_STREAMS[kind]]))
            low, high = self.action_space.low, self.action_space.high
            return (lambda obs: rng.uniform(low, high).astype(np.float32),
                    "uniform random actions")
        from stable_baselines3 import SAC

        model = SAC.load(self.work / f"{kind}.zip", device="cpu")
        model.set_random_seed(self.seed + RESET_STREAMS[kind])
        return _policy_fn(model), f"SAC policy at the {kind} checkpoint, stochastic actions"

    def _medium_expert(self, mid: str):
        """medium and expert concatenated, as in D4RL."""
        import minari

        parts = []
        for sub in ("medium", "expert"):
            if sub not in self.arrays_of:
                self.arrays_of[sub] = _read_hdf5_arrays(self.d4rl_dir / hdf5_name(self.env_id, sub))
            parts.append(self.arrays_of[sub])
        arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k in parts[1]}
        if mid in minari.list_local_datasets():
            minari.delete_dataset(mid)
        ds = minari.combine_datasets([minari.load_dataset(minari_id(self.env_id, "medium")),
                                      minari.load_dataset(minari_id(self.env_id, "expert"))], mid)
        return arrays, None, ds, "the medium and expert datasets concatenated"


def _read_hdf5_arrays(path: Path) -> dict:

    with h5py.File(path, "r") as f:
        out = {k: f[k][()] for k in ("observations", "actions", "rewards", "terminals", "timeouts")}
        if "next_observations" in f:
            out["next_observations"] = f["next_observations"][()]
        return out


# ---- shipping ----------------------------------------------------------------------------------

def pack(env_id: str, out: Path, kinds) -> dict:
    """<out>/MANIFEST.json for the HDF5 files <out>/d4rl/<task>-<kind>-dmm-v0.hdf5 of `kinds`
    (merged into an existing one): file names, sha256, episode and step counts, returns. What
    `dmm datasets install` reads; it makes the Minari datasets from the HDF5 files, so a shipped
    folder holds each dataset once (the Minari copies in <out>/minari are not shipped)."""

    out = Path(out)
    manifest_path = out / "MANIFEST.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    task = task_of(env_id)
    for kind in kinds:
        h5 = out / "d4rl" / hdf5_name(env_id, kind)
        with h5py.File(h5, "r") as f:
            meta = json.loads(f.attrs["dmm_metadata"])
        manifest[f"{task}-{kind}"] = {
            "minari_id": minari_id(env_id, kind),
            "hdf5": f"d4rl/{h5.name}", "hdf5_sha256": sha256(h5), "hdf5_bytes": h5.stat().st_size,
            "episodes": meta["behaviour"]["episodes"], "steps": meta["behaviour"]["steps"],
            "return_mean": meta["behaviour"]["return_mean"],
            "return_std": meta["behaviour"]["return_std"],
            "normalized_mean": meta["behaviour"]["normalized_mean"],
            "behaviour": meta["behaviour"]["policy"], "sac_steps": meta["sac_steps"],
            "medium_cut": meta["medium_cut"], "generation_seconds": meta["generation_seconds"],
            "recipe_version": meta["recipe_version"], "seed": meta["seed"]}
    _atomic_json(manifest_path, manifest)
    return manifest
