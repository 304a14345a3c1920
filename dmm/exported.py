"""Running a policy exported by `dmm export` (dmm/export.py) from Python, and `dmm export --check`.

ExportedPolicy is the runner the C++ example (examples/cpp_policy) mirrors: it owns the caches,
normalizes observations, keeps the return-to-go and scales actions, from the package's JSON.
check_exported replays evaluation episodes through the package and through the eager model.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

import dmm_kernels
from dmm.evaluate import (_RecurrentStepper, _WindowStepper, env_seeds, load_policy,
                          make_vector_env, normalize, run_episodes)
from dmm.export import EXPORT_FORMAT, zero_caches


def read_metadata(package) -> dict:
    """The JSON beside `package` (policy.pt2 -> policy.json), checked."""
    package = Path(package)
    if not package.is_file():
        raise FileNotFoundError(f"exported policy {package} does not exist; make it with "
                                "`dmm export RUN --out FILE.pt2`")
    path = package.with_suffix(".json")
    if not path.is_file():
        raise FileNotFoundError(f"{path} (written beside the package by `dmm export`) is missing; "
                                "export the policy again")
    try:
        meta = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); export the policy again") from e
    if meta.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{path}: export format {meta.get('format')!r}, this dmm reads "
                         f"{EXPORT_FORMAT}; export the policy again with this dmm")
    if meta["torch"].split("+")[0] != torch.__version__.split("+")[0]:
        raise ValueError(f"{package} was compiled with torch {meta['torch']} but torch "
                         f"{torch.__version__} is installed; export it again with this torch")
    return meta


class ExportedPolicy:
    """policy = ExportedPolicy("policy.pt2", batch=n); policy.reset(); then per step
    action = policy.act(observation (n, S), reward (n,)), the reward being the one the last
    action earned (ignored on the first step after reset). Actions come in environment units."""

    def __init__(self, package, batch: int = 1):
        self.meta = meta = read_metadata(package)
        if meta["needs_dmm_ops"]:  # the package calls torch.ops.dmm.*
            if not dmm_kernels.HAS_EXTENSION:
                raise ValueError(f"{package} calls the dmm ops, but they are not loaded "
                                 f"({dmm_kernels.EXTENSION_ERROR}); reinstall with `pip install .`")
        self.runner = torch._inductor.aoti_load_package(str(package))
        self.batch = int(batch)
        self.caches = zero_caches(meta["caches"], self.batch)
        self.mean = torch.tensor(meta["state_mean"], dtype=torch.float32)    # (S,)
        self.std = torch.tensor(meta["state_std"], dtype=torch.float32)      # (S,)
        self.reward_scale = float(meta["reward_scale"])
        self.action_scale = float(meta["action_scale"])
        self.reset()

    def reset(self, target_return: float | None = None) -> None:
        """New episodes in every row, aiming at target_return (default: the run's)."""
        target = self.meta["target_return"] if target_return is None else target_return
        if target is None:
            raise ValueError("this run has no default target return; pass reset(target_return=R)")
        for cache, spec in zip(self.caches, self.meta["caches"]):
            cache.fill_(spec["init"])
        self.rtg = torch.full((self.batch, 1), float(target) / self.reward_scale)  # (B, 1)
        self.t = 0

    @torch.no_grad()
    def act(self, observation, reward=None) -> np.ndarray:
        if self.t > 0 and reward is not None:
            reward = torch.as_tensor(np.asarray(reward), dtype=torch.float32).reshape(self.batch)
            self.rtg = self.rtg - reward[:, None] / self.reward_scale
        s = (torch.as_tensor(np.asarray(observation), dtype=torch.float32)
             .reshape(self.batch, -1) - self.mean) / self.std                # (B, S)
        timestep = torch.full((self.batch,), self.t, dtype=torch.long)       # (B,)
        action = self.runner(s, self.rtg, timestep, *self.caches)            # (B, A)
        if isinstance(action, (list, tuple)):
            action = action[0]
        self.t += 1
        self.last_action = action
        return action.numpy() * self.action_scale


def check_exported(package, episodes: int, seed: int = 0, log=print) -> dict:
    """`dmm export --check N`: N episodes through the package, and the same N (same seeds)
    through the eager model of its checkpoint in the same mode; also the eager model on the
    package's own observations, step by step (the largest action difference)."""
    if episodes < 1:
        raise ValueError(f"--check {episodes}: replay at least 1 episode")
    meta = read_metadata(package)
    if meta["env_id"] is None:
        raise ValueError(f"{package}: its run names no environment to replay episodes in")
    model, ckpt = load_policy(meta["checkpoint"], "cpu")
    info, mode, n = ckpt["dataset_info"], meta["mode"], int(episodes)
    policy = ExportedPolicy(package, batch=n)
    eager = (_WindowStepper(model, n, float(ckpt["config"]["eval"]["action_pad"]), "cpu",
                            meta["max_ep_len"]) if mode == "window"
             else _RecurrentStepper(model, n, "cpu", meta["max_ep_len"]))
    # The eager side's inputs made as `dmm eval` makes them, not taken from the runner, so that the
    # runner's bookkeeping (normalization, returns-to-go) is checked too.
    mean = torch.as_tensor(np.asarray(ckpt["state_mean"]), dtype=torch.float32)
    std = torch.as_tensor(np.maximum(np.asarray(ckpt["state_std"]), 1e-6), dtype=torch.float32)
    rtg = torch.full((n, 1), float(meta["target_return"]) / meta["reward_scale"])  # (n, 1)
    envs = make_vector_env(meta["env_id"], n)
    try:
        obs, _ = envs.reset(seed=env_seeds(seed, n))
        horizon = int(envs.envs[0].spec.max_episode_steps or meta["max_ep_len"])
        returns, active, reward, worst = np.zeros(n), np.ones(n, dtype=bool), None, 0.0
        with torch.no_grad():
            for t in range(horizon):
                action = policy.act(obs, reward)                             # (n, A) env units
                s = (torch.as_tensor(obs, dtype=torch.float32) - mean) / std
                ref = eager.act(s, rtg, t)                                   # (n, A) in [-1, 1]
                diff = (ref - policy.last_action).abs().amax(dim=1).numpy()  # (n,)
                worst = max(worst, float(diff[active].max()))
                obs, reward, term, trunc, _ = envs.step(action)
                reward = np.where(active, reward, 0.0)
                returns += reward
                rtg = rtg - torch.as_tensor(reward, dtype=torch.float32)[:, None] / meta["reward_scale"]
                active &= ~(np.asarray(term) | np.asarray(trunc))
                if not active.any():
                    break
    finally:
        envs.close()
    target = meta["target_return"]
    eager_run = run_episodes(model, meta["env_id"], episodes=n, target_return=target,
                             reward_scale=meta["reward_scale"], state_mean=ckpt["state_mean"],
                             state_std=ckpt["state_std"], mode=mode,
                             action_pad=float(ckpt["config"]["eval"]["action_pad"]),
                             action_scale=meta["action_scale"], seed=seed,
                             max_ep_len=meta["max_ep_len"])
    result = {"mode": mode, "ops": meta["ops"], "episodes": n, "seed": seed,
              "max_action_difference": worst}
    for name, rets in (("exported", returns), ("eager", eager_run["returns"])):
        scores = normalize(info, rets)
        result[name] = {"return_mean": float(rets.mean()), "return_std": float(rets.std()),
                        "score_mean": None if scores is None else float(scores.mean()),
                        "score_std": None if scores is None else float(scores.std())}
    _log_check(result, f"exported ({Path(package).name}, {meta['ops']} ops)", log)
    return result


def _log_check(result: dict, exported_label: str, log) -> None:
    """check_exported's result as lines: both scores, then the largest action difference."""
    for name, label in (("exported", exported_label), ("eager", "eager (dmm eval)")):
        r = result[name]
        score = ("n/a" if r["score_mean"] is None
                 else f"{r['score_mean']:.1f} ± {r['score_std']:.1f}")
        log(f"{label}: normalized score {score}, return {r['return_mean']:.1f} ± "
            f"{r['return_std']:.1f} over {result['episodes']} episodes ({result['mode']} mode, "
            f"seed {result['seed']})")
    log(f"largest action difference, exported vs eager on the same observations: "
        f"{result['max_action_difference']:.2e}")
