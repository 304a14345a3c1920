"""Built-in datasets, generated from Gymnasium's Pendulum-v1 by scripted behaviour policies.

Pendulum-v1: obs (cos th, sin th, th_dot), th = 0 upright; torque in [-2, 2]; reward
-(th^2 + 0.1 th_dot^2 + 0.001 u^2) per step; every episode is truncated at 200 steps.
Datasets store actions in [-1, 1] (torque / 2, ACTION_SCALE), the units the model predicts.

Behaviour policies form one family indexed by a skill s in [0, 1]: the expert torque plus
Gaussian exploration noise of std NOISE_SCALE (1 - s) / s, clipped to [-2, 2], like a SAC
policy early (large noise) or late (small noise) in training. s = 0 is the uniform random
policy, s = 1 the noise-free expert. The noise leaves the mean action near the expert's where
clipping is rare, so a model that reads the return-to-go can do better than the data it copies.

  name                      episodes  steps    policy
  pendulum-random           500       100000   s = 0
  pendulum-medium           500       100000   s = MEDIUM_SKILL (0.5): normalized return ~50
  pendulum-medium-replay    200       40000    s rising linearly 0 -> 0.5 over the episodes,
                                               like the replay buffer of a training run;
                                               average normalized return 24.5
  pendulum-expert           500       100000   s = 1
  pendulum-medium-expert    1000      200000   pendulum-medium + pendulum-expert (as in D4RL)

Generation is deterministic for a seed (numpy Generators from SeedSequence([seed, tag]) and
env.reset(seed=...)) and cached as native .npz files in $DMM_CACHE_DIR/datasets
(default ~/.cache/dmm/datasets), written atomically.
"""
from __future__ import annotations

import os
import time

import gymnasium as gym
import numpy as np

from .dataset import TrajectoryDataset
from .native import load_native, save_native

ENV_ID = "Pendulum-v1"
EPISODE_LEN = 200
ACTION_SCALE = 2.0  # Pendulum's max torque: env action = dataset action * 2
# Pendulum returns lie in about [-1800, 0]; /100 gives returns-to-go in [-18, 0], the same order
# of magnitude as D4RL locomotion's rtg / 1000. (1000 was tried too: the default run scored
# 58.5 on average over seeds 0-3 against 60.3 with 100; benchmarks/RESULTS.md.)
REWARD_SCALE = 100.0
MEDIUM_SKILL = 0.5
NOISE_SCALE = 3.0  # exploration std at skill s: NOISE_SCALE (1 - s) / s (3 at MEDIUM_SKILL)
GENERATOR_VERSION = 2  # bump when generation changes: it is part of the cache file name

# Reference returns, measured once by measure_reference_returns(n_episodes=1000, seed=0): mean
# return of 1000 episodes with env.reset(seed=0..999) of the random policy (s = 0, policy rng
# seed 0; std 294.8, standard error 9.3) and the expert (s = 1; std 90.0, standard error 2.8),
# gymnasium 1.4.0. tests/test_data.py re-measures them on other seeds.
PENDULUM_RANDOM_RETURN = -1221.40
PENDULUM_EXPERT_RETURN = -146.87

_G = 10.0  # Pendulum-v1's gravity; the swing-up energy below is in its units

DATASETS = {  # name -> (tag for seeding, default episode count)
    "pendulum-random": (1, 500),
    "pendulum-medium": (2, 500),
    "pendulum-expert": (3, 500),
    "pendulum-medium-replay": (4, 200),
    "pendulum-medium-expert": (5, 1000),
}
DEFAULT_DATASET = "embedded:pendulum-medium-replay"


# ---- behaviour policies -------------------------------------------------------------------

def expert_torque(obs: np.ndarray) -> np.ndarray:
    """Energy-based swing-up, PD stabilisation near the top. obs (N, 3) -> torque (N,) in [-2, 2].

    With th_ddot = 15 sin th + 3 u, the energy E = th_dot^2 / 2 + 15 (cos th - 1) is 0 exactly at
    upright rest and dE/dt = 3 u th_dot: pushing along th_dot pumps energy in. Near the top
    (cos th > 0.85) the PD law u = -10 th - 2 th_dot makes the linearised closed loop
    th_ddot = -15 th - 6 th_dot stable.
    """
    obs = np.asarray(obs, np.float64)
    c, s, w = obs[:, 0], obs[:, 1], obs[:, 2]
    th = np.arctan2(s, c)
    energy = 0.5 * w**2 + 1.5 * _G * (c - 1.0)
    pump = -energy * np.where(w >= 0, 1.0, -1.0)
    pd = -10.0 * th - 2.0 * w
    return np.clip(np.where(c > 0.85, pd, pump), -2.0, 2.0)


class PendulumPolicy:
    """Behaviour policy of skill s (scalar or one per row): obs (N, 3) -> actions (N, 1) float32
    in [-1, 1] (dataset units; the env takes actions * ACTION_SCALE). Draws the same random
    numbers whatever the skill, so runs with different skills stay aligned."""

    action_scale = ACTION_SCALE
    env_id = ENV_ID

    def __init__(self, skill=1.0, seed: int = 0):
        self.skill = skill
        self.rng = np.random.default_rng(seed)

    def __call__(self, obs, rng: np.random.Generator | None = None, skill=None) -> np.ndarray:
        rng = self.rng if rng is None else rng
        obs = np.asarray(obs).reshape(-1, 3)
        n = len(obs)
        s = np.broadcast_to(np.asarray(self.skill if skill is None else skill, np.float64), (n,))
        noise = rng.standard_normal(n)
        rng.random(n)  # unused since version 2; drawn so the measured reference returns still hold
        uniform = rng.uniform(-2.0, 2.0, n)
        std = NOISE_SCALE * (1.0 - s) / np.maximum(s, 1e-12)
        u = np.where(s > 0.0, expert_torque(obs) + std * noise, uniform)
        u = np.clip(u, -2.0, 2.0)
        return (u / ACTION_SCALE).astype(np.float32)[:, None]


def behaviour_policy(name) -> PendulumPolicy:
    """'random' | 'medium' | 'expert' (optionally 'embedded:pendulum-...'), or a skill in [0, 1]."""
    if isinstance(name, (int, float)):
        if not 0.0 <= name <= 1.0:
            raise ValueError(f"skill must be in [0, 1], got {name}")
        return PendulumPolicy(float(name))
    key = name.split(":", 1)[-1].removeprefix("pendulum-")
    skills = {"random": 0.0, "medium": MEDIUM_SKILL, "expert": 1.0}
    if key not in skills:
        raise ValueError(f"no behaviour policy {name!r}: choose random, medium or expert "
                         "(medium-replay and medium-expert are mixtures of these)")
    return PendulumPolicy(skills[key])


# ---- rollouts -----------------------------------------------------------------------------

def rollout(skills, reset_seeds, rng: np.random.Generator, n_envs: int = 8) -> list[dict]:
    """Run one Pendulum-v1 episode per (skill, reset seed), n_envs real envs in lock step."""
    envs = [gym.make(ENV_ID) for _ in range(n_envs)]
    policy = PendulumPolicy()
    episodes = []
    for lo in range(0, len(skills), n_envs):
        chunk = range(lo, min(lo + n_envs, len(skills)))
        obs = np.stack([envs[j].reset(seed=int(reset_seeds[i]))[0] for j, i in enumerate(chunk)])
        bufs = [{"observations": [], "actions": [], "rewards": [], "terminals": []} for _ in chunk]
        live = list(range(len(chunk)))
        while live:
            act = policy(obs[live], rng, skill=np.asarray(skills)[[chunk[j] for j in live]])  # (n, 1)
            for k, j in enumerate(live):
                o2, r, term, trunc, _ = envs[j].step(act[k] * np.float32(ACTION_SCALE))
                b = bufs[j]
                b["observations"].append(obs[j].copy())  # obs[j] is overwritten next line
                obs[j] = o2
                b["actions"].append(act[k])
                b["rewards"].append(r)
                b["terminals"].append(term)
                if term or trunc:
                    b["done"] = True
            live = [j for j in live if "done" not in bufs[j]]
        for b in bufs:
            episodes.append({"observations": np.stack(b["observations"]).astype(np.float32),
                             "actions": np.stack(b["actions"]).astype(np.float32),
                             "rewards": np.asarray(b["rewards"], np.float32),
                             "terminals": np.asarray(b["terminals"], bool)})
    for env in envs:
        env.close()
    return episodes


def _seeds(seed: int, tag: int, n: int):
    reset_seeds = np.random.SeedSequence([seed, tag, 0]).generate_state(n)  # (n,) uint32
    return reset_seeds, np.random.default_rng(np.random.SeedSequence([seed, tag, 1]))


def generate_episodes(name: str, seed: int = 0, n_episodes: int | None = None,
                      cache: bool = False) -> list[dict]:
    tag, default_n = DATASETS[name]
    n = default_n if n_episodes is None else int(n_episodes)
    if name == "pendulum-medium-expert":  # exactly the medium and expert datasets, as in D4RL
        return (load_embedded("pendulum-medium", seed, n // 2, cache).episodes
                + load_embedded("pendulum-expert", seed, n - n // 2, cache).episodes)
    if name == "pendulum-medium-replay":
        skills = MEDIUM_SKILL * np.linspace(0.0, 1.0, n)
    else:
        skills = np.full(n, {"pendulum-random": 0.0, "pendulum-medium": MEDIUM_SKILL,
                             "pendulum-expert": 1.0}[name])
    reset_seeds, rng = _seeds(seed, tag, n)
    return rollout(skills, reset_seeds, rng)


def measure_reference_returns(n_episodes: int = 1000, seed: int = 0) -> tuple[float, float]:
    """(random, expert) mean return over n episodes with env.reset(seed=seed + i)."""
    resets = np.arange(seed, seed + n_episodes)
    out = []
    for skill in (0.0, 1.0):
        eps = rollout(np.full(n_episodes, skill), resets, np.random.default_rng(seed))
        out.append(float(np.mean([ep["rewards"].sum(dtype=np.float64) for ep in eps])))
    return out[0], out[1]


# ---- loading with cache -------------------------------------------------------------------

def cache_dir() -> str:
    root = os.environ.get("DMM_CACHE_DIR") or os.path.expanduser("~/.cache/dmm")
    return os.path.join(root, "datasets")


def load_embedded(name: str, seed: int = 0, n_episodes: int | None = None, cache: bool = True):
    """Load (generating and caching on first use) an embedded dataset, e.g. 'pendulum-medium'."""
    name = name.split(":", 1)[-1]
    if name not in DATASETS:
        raise ValueError(f"unknown embedded dataset {name!r}; choose one of "
                         + ", ".join(f"embedded:{k}" for k in DATASETS))
    n = DATASETS[name][1] if n_episodes is None else int(n_episodes)
    if n < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n}")
    path = os.path.join(cache_dir(), f"{name}-seed{seed}-ep{n}-gen{GENERATOR_VERSION}.npz")
    # What the code decides, not the cache: changing these needs no new generator version.
    described = dict(name=name, env_id=ENV_ID,
                     reference_returns=(PENDULUM_RANDOM_RETURN, PENDULUM_EXPERT_RETURN),
                     reward_scale=REWARD_SCALE, target_return=PENDULUM_EXPERT_RETURN,
                     max_ep_len=EPISODE_LEN, action_scale=ACTION_SCALE)
    if cache and os.path.exists(path):
        try:
            ds = load_native(path)
        except ValueError:
            ds = None  # unreadable cache (e.g. disk full on write): regenerate and overwrite it
        if ds is not None:
            for field, value in described.items():
                setattr(ds, field, value)
            return ds
    t0 = time.perf_counter()
    episodes = generate_episodes(name, seed, n, cache)
    seconds = time.perf_counter() - t0
    ds = TrajectoryDataset(
        episodes, **described,
        metadata={"source": f"embedded:{name}", "seed": seed, "n_episodes": n,
                  "generator_version": GENERATOR_VERSION, "generation_seconds": round(seconds, 3)})
    if cache:
        save_native(ds, path)
    return ds
