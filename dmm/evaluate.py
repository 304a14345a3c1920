"""Evaluation in Gymnasium: N episodes at once in a vector env, normalized scores.

Modes:
  window     the paper's protocol: at every step the model re-reads the last K steps,
             left padded exactly like training batches (zero states, zero returns-to-go,
             actions `action_pad`, mask False). Works for DMM and DT.
  recurrent  O(1) per step through model.recurrent_policy: the whole episode is the
             context (DMM only; a Transformer has no recurrent form).
Returns-to-go start at target_return / reward_scale and are decremented by
reward / reward_scale after every step. Observations are normalized with the training
mean/std; the env receives action * action_scale (dataset units are [-1, 1]).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import gymnasium as gym
import numpy as np
import torch

from dmm.checkpoint import load_checkpoint, resolve_checkpoint_path
from dmm.data import normalized_score
from dmm.factory import build_model
from dmm.model import DecisionMetaMamba
from dmm.runtime import select_device, set_threads

EVAL_MODES = ("window", "recurrent")


def check_env(env_id: str | None, state_dim: int | None = None, act_dim: int | None = None,
              source: str = "the data", fix: str | None = None) -> None:
    """Raise a ValueError saying what to do when env_id cannot be evaluated in, or when its
    observations / actions are not `state_dim` / `act_dim` wide (those of `source`; `fix` says
    what to do then)."""
    if env_id is None:
        raise ValueError("this dataset names no Gymnasium environment to evaluate in (e.g. "
                         "AntMaze, whose D4RL layout has no Gymnasium counterpart); pass "
                         "--eval-episodes 0 to train without evaluating")
    try:
        gym.spec(env_id)
        if state_dim is None and act_dim is None:
            return
        env = gym.make(env_id)
    except (gym.error.Error, ImportError) as e:  # unknown id, or MuJoCo not installed
        raise ValueError(f"cannot create environment {env_id!r} ({e}); install its package "
                         f"(e.g. gymnasium[mujoco]) or pass --eval-episodes 0") from e
    widths = {"observations": (state_dim, gym.spaces.flatdim(env.observation_space)),
              "actions": (act_dim, gym.spaces.flatdim(env.action_space))}
    env.close()
    for key, (have, want) in widths.items():
        if have is not None and have != want:
            raise ValueError(f"{source}: {key} are {have} wide but {env_id} has {want}; " + (
                fix or f"this is not {env_id} data: pass data recorded in {env_id}, or "
                "--eval-episodes 0 to train without evaluating"))


def make_vector_env(env_id: str, n: int):
    """SyncVectorEnv of n copies of env_id (its default time limit applies)."""
    check_env(env_id)
    return gym.vector.SyncVectorEnv([lambda: gym.make(env_id) for _ in range(n)])


def env_seeds(seed: int, n: int) -> list[int]:
    """Distinct per-env seeds; different `seed` values never overlap for n <= 10000."""
    return [seed * 10_000 + i for i in range(n)]


@torch.no_grad()
def run_episodes(model: torch.nn.Module, env_id: str, *, episodes: int, target_return: float,
                 reward_scale: float, state_mean, state_std, mode: str = "window",
                 action_pad: float = -10.0, action_scale: float = 1.0, seed: int = 0,
                 device: str | torch.device = "cpu", max_ep_len: int = 1000,
                 envs=None, on_step: Callable | None = None) -> dict:
    """Roll out `episodes` episodes in parallel; returns {"returns", "lengths"} (numpy).
    `on_step(t, obs, rtg, actions)` (tests) sees the raw observations, the returns-to-go
    fed and the model's actions."""
    if mode not in EVAL_MODES:
        raise ValueError(f"mode must be one of {EVAL_MODES}; got {mode!r}")
    if mode == "recurrent" and not isinstance(model, DecisionMetaMamba):
        raise ValueError(f"mode 'recurrent' needs a DecisionMetaMamba; {type(model).__name__} has "
                         f"no recurrent form (a Transformer re-reads its window): use --mode window")
    device = torch.device(device)
    n = int(episodes)
    own_envs = envs is None
    envs = make_vector_env(env_id, n) if own_envs else envs
    was_training = model.training
    model.eval()
    try:
        mean = torch.as_tensor(np.asarray(state_mean), dtype=torch.float32, device=device)
        std = torch.as_tensor(np.maximum(np.asarray(state_std), 1e-6), dtype=torch.float32,
                              device=device)
        obs, _ = envs.reset(seed=env_seeds(seed, n))
        limit = envs.envs[0].spec.max_episode_steps if getattr(envs, "envs", None) else None
        horizon = int(limit or max_ep_len)
        rtg = torch.full((n, 1), float(target_return) / reward_scale, device=device)  # (n, 1)
        returns, lengths = np.zeros(n), np.zeros(n, dtype=np.int64)
        active = np.ones(n, dtype=bool)
        stepper = (_WindowStepper(model, n, action_pad, device, max_ep_len) if mode == "window"
                   else _RecurrentStepper(model, n, device, max_ep_len))
        for t in range(horizon):
            s = (torch.as_tensor(obs, dtype=torch.float32, device=device) - mean) / std  # (n, S)
            act = stepper.act(s, rtg, t)                                                # (n, A)
            if on_step is not None:
                on_step(t, obs, rtg, act)
            env_act = act.float().cpu().numpy() * action_scale
            obs, reward, term, trunc, _ = envs.step(env_act)
            reward = np.where(active, reward, 0.0)
            returns += reward
            lengths += active
            rtg = rtg - torch.as_tensor(reward, dtype=torch.float32, device=device)[:, None] / reward_scale
            active &= ~(np.asarray(term) | np.asarray(trunc))
            if not active.any():
                break
        return {"returns": returns, "lengths": lengths}
    finally:
        if own_envs:
            envs.close()
        model.train(was_training)


class _WindowStepper:
    """Keeps the last K steps as left-padded (n, K, ...) tensors, rolled by one each step."""

    def __init__(self, model, n, action_pad, device, max_ep_len):
        self.model, self.max_t = model, max_ep_len - 1
        K = int(getattr(model, "context_len", None) or model.config["context_len"])
        S, A = model.state_dim, model.act_dim
        self.states = torch.zeros(n, K, S, device=device)                       # (n, K, S)
        self.actions = torch.full((n, K, A), float(action_pad), device=device)  # (n, K, A)
        self.rtg = torch.zeros(n, K, 1, device=device)                          # (n, K, 1)
        self.timesteps = torch.zeros(n, K, dtype=torch.long, device=device)     # (n, K)
        self.mask = torch.zeros(n, K, dtype=torch.bool, device=device)          # (n, K)

    def act(self, s, rtg, t):
        for buf in (self.states, self.actions, self.rtg, self.timesteps, self.mask):
            buf.copy_(torch.roll(buf, -1, dims=1))
        self.states[:, -1] = s
        self.actions[:, -1] = 0.0  # placeholder: the model is causal, a_t never reaches s_t
        self.rtg[:, -1] = rtg
        self.timesteps[:, -1] = min(t, self.max_t)
        self.mask[:, -1] = True
        act = self.model(self.states, self.actions, self.rtg, timesteps=self.timesteps,
                         attention_mask=self.mask)[:, -1]                       # (n, A)
        self.actions[:, -1] = act
        return act


class _RecurrentStepper:
    def __init__(self, model, n, device, max_ep_len):
        self.policy = model.recurrent_policy(n)
        self.device, self.max_t = device, max_ep_len - 1

    def act(self, s, rtg, t):
        ts = torch.full((s.shape[0],), min(t, self.max_t), dtype=torch.long, device=self.device)
        act = self.policy.act(s, rtg, ts)
        self.policy.observe_action(act)
        return act


# ----------------------------------------------------------------------------- scoring
def normalize(info: dict, returns: np.ndarray):
    """Normalized scores via dmm.data.normalized_score; the checkpoint's stored reference
    returns are used when the name alone is not recognised. None when neither exists."""
    try:
        return np.asarray(normalized_score(info["name"], returns), dtype=np.float64)
    except (ValueError, KeyError):
        refs = info.get("reference_returns")
        if refs is None:
            return None
        return 100.0 * (np.asarray(returns, np.float64) - refs[0]) / (refs[1] - refs[0])


def _stats(x: np.ndarray | None) -> tuple[float | None, float | None]:
    return (None, None) if x is None else (float(np.mean(x)), float(np.std(x)))


def evaluate_model(model, dataset_info: dict, *, state_mean, state_std, reward_scale: float,
                   episodes: int, target_return, mode: str = "window", action_pad: float = -10.0,
                   seeds=(0,), device="cpu") -> dict:
    """Evaluate at one or several return targets and seeds. Top-level fields describe the
    first target (mean / std over all episodes of all seeds); "targets" has every target and
    "best_target_score" the maximum over targets (the official code's reporting, labelled)."""
    targets = target_return if isinstance(target_return, (list, tuple)) else [target_return]
    seeds = list(seeds)
    per_target = []
    for target in targets:
        rets, lens, per_seed = [], [], []
        for seed in seeds:
            r = run_episodes(model, dataset_info["env_id"], episodes=episodes,
                             target_return=float(target), reward_scale=reward_scale,
                             state_mean=state_mean, state_std=state_std, mode=mode,
                             action_pad=action_pad,
                             action_scale=float(dataset_info.get("action_scale", 1.0)),
                             seed=int(seed), device=device,
                             max_ep_len=int(dataset_info.get("max_ep_len", 1000)))
            scores = normalize(dataset_info, r["returns"])
            per_seed.append({"seed": int(seed), "return_mean": float(r["returns"].mean()),
                             "score_mean": _stats(scores)[0]})
            rets.append(r["returns"])
            lens.append(r["lengths"])
        rets, lens = np.concatenate(rets), np.concatenate(lens)
        scores = normalize(dataset_info, rets)
        per_target.append({
            "target_return": float(target), "episodes": int(len(rets)),
            "return_mean": float(rets.mean()), "return_std": float(rets.std()),
            "score_mean": _stats(scores)[0], "score_std": _stats(scores)[1],
            "length_mean": float(lens.mean()), "returns": rets.tolist(),
            "scores": None if scores is None else scores.tolist(), "per_seed": per_seed})
    out = dict(per_target[0])
    out.update(mode=mode, action_pad=float(action_pad), seeds=seeds, env_id=dataset_info["env_id"],
               dataset=dataset_info["name"], targets=per_target)
    valid = [t["score_mean"] for t in per_target if t["score_mean"] is not None]
    out["best_target_score"] = max(valid) if valid else None
    return out


def load_policy(checkpoint, device="cpu"):
    """(model in eval mode, checkpoint dict) from a checkpoint file or run folder."""
    ckpt = load_checkpoint(checkpoint)
    model = build_model(ckpt["model_config"])
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt


def evaluate_checkpoint(checkpoint, *, episodes: int | None = None, mode: str | None = None,
                        target_return=None, seeds=None, action_pad: float | None = None,
                        device: str = "auto", out: str | os.PathLike | None = None) -> dict:
    """Re-evaluate a saved model; None arguments take the run's eval config. Writes the
    results JSON (default: <run>/eval-<mode>.json) and returns the results dict."""
    dev = select_device(device)
    model, ckpt = load_policy(checkpoint, dev)
    set_threads(ckpt["config"]["train"].get("threads"))
    ec = ckpt["config"]["eval"]
    info = ckpt["dataset_info"]
    check_env(info["env_id"], model.state_dim, model.act_dim, source=f"the model of {checkpoint}",
              fix="it was trained on data of another environment: evaluate it there")
    mode = mode or ec["mode"]
    res = evaluate_model(
        model, info, state_mean=ckpt["state_mean"], state_std=ckpt["state_std"],
        reward_scale=float(ckpt["reward_scale"]),
        episodes=int(episodes if episodes is not None else ec["episodes"]),
        target_return=target_return if target_return is not None else ec["target_return"],
        mode=mode, action_pad=float(action_pad if action_pad is not None else ec["action_pad"]),
        seeds=seeds if seeds is not None else [ec["seed"]], device=dev)
    res["checkpoint"] = str(resolve_checkpoint_path(checkpoint))
    res["checkpoint_step"] = int(ckpt["step"])
    path = Path(out) if out else _run_dir_of(checkpoint) / f"eval-{mode}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(res, indent=2))
    os.replace(tmp, path)
    res["results_path"] = str(path)
    return res


def _run_dir_of(checkpoint) -> Path:
    p = Path(checkpoint)
    if p.is_dir():
        return p
    return p.parent.parent if p.parent.name == "checkpoints" else p.parent
