"""Episode container, input validation and the segment sampler used for training.

Conventions shared by every loader in dmm.data:
  * an episode is a dict of float32 arrays: observations (T, S), actions (T, A), rewards (T,),
    plus terminals (T,) bool (True only at the last step of an episode that ended in a
    terminal state; False for time-limit truncations and cut-off tails);
  * actions are stored in the units the model predicts, [-1, 1]; the environment receives
    `action * dataset.action_scale` (1 for D4RL/Minari MuJoCo, 2 for Pendulum);
  * returns-to-go are undiscounted sums of the episode's remaining rewards.
"""
from __future__ import annotations

import numpy as np
import torch

from dmm.tokens import PAD_ACTION


# ---- validation helpers -------------------------------------------------------------------

def check_array(array, *, source: str, key: str, ndim: int | tuple[int, ...], finite: bool = True):
    """Return `array` as a numpy array after checking its rank and that it holds no NaN/inf.

    `source` (a file or dataset name) and `key` go into the error so the user knows which
    file and which field to fix.
    """
    array = np.asarray(array)
    ndims = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if array.ndim not in ndims:
        want = " or ".join(f"{d}-D" for d in ndims)
        raise ValueError(
            f"{source}: key '{key}' has shape {tuple(array.shape)} ({array.ndim}-D) but must be "
            f"{want} with one row per step"
        )
    if finite and array.dtype.kind in "fc" and not np.isfinite(array).all():
        bad = np.flatnonzero(~np.isfinite(array).reshape(len(array), -1).all(axis=1))
        raise ValueError(
            f"{source}: key '{key}' contains NaN or inf (first at row {int(bad[0])}, "
            f"{len(bad)} rows affected); every value must be finite"
        )
    return array


def check_same_length(arrays: dict, *, source: str, reference: str = "observations"):
    """Raise naming the first key whose row count differs from `reference`'s."""
    n = len(arrays[reference])
    for key, value in arrays.items():
        if len(value) != n:
            raise ValueError(
                f"{source}: key '{key}' has {len(value)} rows but '{reference}' has {n}; "
                "every key must have one row per step"
            )
    return n


def split_episodes(observations, actions, rewards, terminals, timeouts, *, source: str,
                   min_tail_len: int = 10):
    """Cut flat step arrays into episodes at `terminals | timeouts`.

    Steps after the last terminal/timeout form an unfinished tail (a dataset cut in the middle of
    an episode). The tail is kept when it has at least `min_tail_len` steps: it is still real
    behaviour data, and its return-to-go is the return observed inside the dataset. Shorter tails
    are dropped because their returns-to-go are mostly missing.
    """
    arrays = {"observations": observations, "actions": actions, "rewards": rewards,
              "terminals": terminals, "timeouts": timeouts}
    n = check_same_length(arrays, source=source)
    if n == 0:
        raise ValueError(f"{source}: the dataset has 0 steps; it needs at least one episode")
    terminals = np.asarray(terminals).astype(bool)
    ends = np.flatnonzero(terminals | np.asarray(timeouts).astype(bool))  # last step of each
    bounds = [(0 if i == 0 else int(ends[i - 1]) + 1, int(e) + 1) for i, e in enumerate(ends)]
    tail_start = int(ends[-1]) + 1 if len(ends) else 0
    if n - tail_start >= max(min_tail_len, 1):
        bounds.append((tail_start, n))
    episodes = []
    for lo, hi in bounds:
        episodes.append({
            "observations": np.asarray(observations[lo:hi], dtype=np.float32),
            "actions": np.asarray(actions[lo:hi], dtype=np.float32),
            "rewards": np.asarray(rewards[lo:hi], dtype=np.float32).reshape(-1),
            "terminals": terminals[lo:hi].copy(),
        })
    if not episodes:
        raise ValueError(
            f"{source}: no episode found: {n} steps, no terminal or timeout, and the tail is "
            f"shorter than min_tail_len={min_tail_len}"
        )
    return episodes


def discounted_cumsum(rewards: np.ndarray, gamma: float = 1.0) -> np.ndarray:
    """Return-to-go: out[t] = sum_{k >= t} gamma^(k-t) * rewards[k], accumulated in float64."""
    out = np.zeros(len(rewards), dtype=np.float64)
    acc = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        acc = float(rewards[t]) + gamma * acc
        out[t] = acc
    return out


# ---- dataset ------------------------------------------------------------------------------

class TrajectoryDataset:
    """A list of episodes plus what training and evaluation need to know about them.

    Attributes: episodes, name, env_id (Gymnasium id to evaluate in, or None), state_dim,
    act_dim, reference_returns ((random, expert) or None), reward_scale (suggested divisor
    of returns-to-go), target_return (suggested evaluation target), max_ep_len,
    action_scale (env action = dataset action * action_scale), metadata (free-form dict).
    """

    def __init__(self, episodes, name: str, env_id: str | None = None,
                 reference_returns: tuple[float, float] | None = None, reward_scale: float = 1.0,
                 target_return: float | None = None, max_ep_len: int | None = None,
                 action_scale: float = 1.0, metadata: dict | None = None):
        if len(episodes) == 0:
            raise ValueError(f"{name}: the dataset has no episodes")
        self.episodes = [self._check_episode(ep, name, i) for i, ep in enumerate(episodes)]
        self.name = name
        self.env_id = env_id
        self.state_dim = int(self.episodes[0]["observations"].shape[1])
        self.act_dim = int(self.episodes[0]["actions"].shape[1])
        for i, ep in enumerate(self.episodes):
            if ep["observations"].shape[1] != self.state_dim or ep["actions"].shape[1] != self.act_dim:
                raise ValueError(
                    f"{name}: episode {i} has state/action dims {ep['observations'].shape[1]}/"
                    f"{ep['actions'].shape[1]} but episode 0 has {self.state_dim}/{self.act_dim}"
                )
        if reference_returns is not None:
            random_ret, expert_ret = (float(r) for r in reference_returns)
            if not expert_ret > random_ret:
                raise ValueError(f"{name}: reference_returns {reference_returns} must be "
                                 "(random, expert) with expert > random")
            reference_returns = (random_ret, expert_ret)
        self.reference_returns = reference_returns
        if not reward_scale > 0:
            raise ValueError(f"{name}: reward_scale must be > 0, got {reward_scale}")
        self.reward_scale = float(reward_scale)
        self.target_return = (float(target_return) if target_return is not None
                              else float(self.episode_returns().max()))
        longest = max(len(ep["rewards"]) for ep in self.episodes)
        self.max_ep_len = int(max_ep_len) if max_ep_len is not None else longest
        self.action_scale = float(action_scale)
        self.metadata = dict(metadata or {})

    @staticmethod
    def _check_episode(ep, name, i):
        src = f"{name} episode {i}"
        obs = check_array(ep["observations"], source=src, key="observations", ndim=2)
        act = check_array(ep["actions"], source=src, key="actions", ndim=2)
        rew = check_array(ep["rewards"], source=src, key="rewards", ndim=(1, 2)).reshape(len(ep["rewards"]), -1)
        if rew.shape[1] != 1:
            raise ValueError(f"{src}: key 'rewards' must hold one scalar per step, got shape {rew.shape}")
        term = np.zeros(len(obs), bool) if ep.get("terminals") is None else np.asarray(ep["terminals"], bool).reshape(-1)
        check_same_length({"observations": obs, "actions": act, "rewards": rew, "terminals": term}, source=src)
        if len(obs) == 0:
            raise ValueError(f"{src}: empty episode; every episode needs at least one step")
        return {"observations": obs.astype(np.float32, copy=False),
                "actions": act.astype(np.float32, copy=False),
                "rewards": rew[:, 0].astype(np.float32, copy=False),
                "terminals": term}

    def __len__(self) -> int:
        return len(self.episodes)

    @property
    def num_steps(self) -> int:
        return int(sum(len(ep["rewards"]) for ep in self.episodes))

    def episode_returns(self) -> np.ndarray:
        return np.array([ep["rewards"].sum(dtype=np.float64) for ep in self.episodes])

    def state_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-dimension mean and std of all observations (float32; std not clamped)."""
        obs = np.concatenate([ep["observations"] for ep in self.episodes]).astype(np.float64)
        return obs.mean(0).astype(np.float32), obs.std(0).astype(np.float32)

    def flat(self) -> dict:
        """Flat step arrays in the D4RL layout (terminals, and timeouts at non-terminal ends)."""
        timeouts = []
        for ep in self.episodes:
            t = np.zeros(len(ep["rewards"]), bool)
            t[-1] = not ep["terminals"][-1]
            timeouts.append(t)
        return {
            "observations": np.concatenate([ep["observations"] for ep in self.episodes]),
            "actions": np.concatenate([ep["actions"] for ep in self.episodes]),
            "rewards": np.concatenate([ep["rewards"] for ep in self.episodes]),
            "terminals": np.concatenate([ep["terminals"] for ep in self.episodes]),
            "timeouts": np.concatenate(timeouts),
        }

    def summary(self) -> dict:
        rets = self.episode_returns()
        lens = np.array([len(ep["rewards"]) for ep in self.episodes])
        return {"name": self.name, "env_id": self.env_id, "episodes": len(self),
                "steps": self.num_steps, "return_mean": float(rets.mean()),
                "return_std": float(rets.std()), "return_min": float(rets.min()),
                "return_max": float(rets.max()), "episode_len_max": int(lens.max()),
                "state_dim": self.state_dim, "act_dim": self.act_dim}

    def __repr__(self) -> str:
        s = self.summary()
        return (f"TrajectoryDataset({s['name']!r}, env_id={s['env_id']!r}, episodes={s['episodes']}, "
                f"steps={s['steps']}, return mean {s['return_mean']:.1f} "
                f"[{s['return_min']:.1f}, {s['return_max']:.1f}])")


# ---- sampler ------------------------------------------------------------------------------

class SegmentSampler:
    """Random K-step windows of episodes, in the layout DecisionMetaMamba.forward takes.

    A window starts at a uniformly random step of an episode picked with probability
    proportional to its length (CORL). Windows that run past the episode end are LEFT-padded
    to K (original Decision Transformer): padded steps carry zero states, zero returns-to-go,
    actions PAD_ACTION, timestep 0 and mask False.
    """

    def __init__(self, dataset: TrajectoryDataset, context_len: int, reward_scale: float | None = None,
                 state_mean=None, state_std=None, seed: int = 0, max_ep_len: int | None = None):
        if context_len < 1:
            raise ValueError(f"context_len must be >= 1, got {context_len}")
        self.context_len = int(context_len)
        self.reward_scale = float(dataset.reward_scale if reward_scale is None else reward_scale)
        if not self.reward_scale > 0:
            raise ValueError(f"reward_scale must be > 0, got {self.reward_scale}")
        mean, std = dataset.state_stats()
        mean = np.asarray(mean if state_mean is None else state_mean, np.float32).reshape(-1)
        std = np.asarray(std if state_std is None else state_std, np.float32).reshape(-1)
        if mean.shape != (dataset.state_dim,) or std.shape != (dataset.state_dim,):
            raise ValueError(f"state_mean/state_std must have shape ({dataset.state_dim},), got "
                             f"{mean.shape} and {std.shape}")
        self.state_mean, self.state_std = mean, np.maximum(std, 1e-6)  # constant dims stay finite
        self.max_ep_len = int(dataset.max_ep_len if max_ep_len is None else max_ep_len)

        eps = dataset.episodes
        lengths = np.array([len(ep["rewards"]) for ep in eps], dtype=np.int64)
        # Everything is precomputed on flat step arrays so that sample() is pure gathering.
        obs = np.concatenate([ep["observations"] for ep in eps])                # (N, S)
        self._states = torch.from_numpy((obs - self.state_mean) / self.state_std)  # (N, S)
        self._actions = torch.from_numpy(np.concatenate([ep["actions"] for ep in eps]))  # (N, A)
        rtg = np.concatenate([discounted_cumsum(ep["rewards"]) for ep in eps])  # (N,) float64
        self._rtg = torch.from_numpy((rtg / self.reward_scale).astype(np.float32))  # (N,)
        self._lengths = torch.from_numpy(lengths)                               # (E,)
        self._offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)[:-1]]))  # (E,)
        self._probs = torch.from_numpy(lengths / lengths.sum())                 # (E,) float64
        self.generator = torch.Generator().manual_seed(int(seed))

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> dict:
        g = self.generator if generator is None else generator
        ep = torch.multinomial(self._probs, batch_size, replacement=True, generator=g)  # (B,)
        length = self._lengths[ep]                                                # (B,)
        start = (torch.rand(batch_size, generator=g, dtype=torch.float64) * length).long()
        return self.segments(ep, torch.minimum(start, length - 1))

    def segments(self, episode_index, start) -> dict:
        """The windows starting at step `start` (B,) of episodes `episode_index` (B,)."""
        ep = torch.as_tensor(episode_index, dtype=torch.long)                     # (B,)
        start = torch.as_tensor(start, dtype=torch.long)                          # (B,)
        length = self._lengths[ep]                                                # (B,)
        if bool(((start < 0) | (start >= length)).any()):
            raise IndexError("segments: every start must lie inside its episode")
        batch_size, K = len(ep), self.context_len
        n_valid = torch.clamp(length - start, max=K)                              # (B,)
        pos = torch.arange(K).expand(batch_size, K)                               # (B, K)
        n_pad = (K - n_valid).unsqueeze(1)                                        # (B, 1)
        mask = pos >= n_pad                                                       # (B, K)
        t = (start.unsqueeze(1) + pos - n_pad).clamp(min=0)                       # (B, K) local step
        idx = torch.where(mask, self._offsets[ep].unsqueeze(1) + t, 0)             # (B, K) flat index
        states = torch.where(mask.unsqueeze(-1), self._states[idx], 0.0)          # (B, K, S)
        actions = torch.where(mask.unsqueeze(-1), self._actions[idx], PAD_ACTION)  # (B, K, A)
        rtg = torch.where(mask, self._rtg[idx], 0.0).unsqueeze(-1)               # (B, K, 1)
        timesteps = torch.where(mask, t.clamp(max=self.max_ep_len - 1), 0)         # (B, K)
        return {"states": states, "actions": actions, "returns_to_go": rtg,
                "timesteps": timesteps, "mask": mask}
