"""Evaluation throughput: environment steps/s of `dmm eval`'s window mode (re-run the last K
steps every step, the paper's protocol) vs recurrent mode (one token at a time, O(1) per step),
for a batch of environments stepped together. DT (window only) for reference.

Models are untrained (speed does not depend on the weights). Default env Pendulum-v1 (cheap,
so model cost dominates); pass --env Hopper-v5 for the paper's setting.

    python -m benchmarks.rollout_speed [--env Pendulum-v1] [--envs 10] [--steps 200]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

import dmm_kernels
from benchmarks.csv_out import write_rows
from dmm import build_model
from dmm.evaluate import run_episodes

CASES = [  # label, model config, mode
    ("dmm-conv K8", {"model": "dmm", "mixer": "conv", "d_model": 128, "context_len": 8}, "window"),
    ("dmm-conv", {"model": "dmm", "mixer": "conv", "d_model": 128, "context_len": 8}, "recurrent"),
    ("dmm-conv K20", {"model": "dmm", "mixer": "conv", "d_model": 128, "context_len": 20}, "window"),
    ("dt K20", {"model": "dt", "d_model": 128, "context_len": 20, "n_heads": 1}, "window"),
]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="Pendulum-v1")
    p.add_argument("--envs", type=int, default=10, help="environments stepped together")
    p.add_argument("--steps", type=int, default=200, help="steps per episode (time limit)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "rollout_speed.csv"))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    probe = gym.make(args.env)
    S, A = probe.observation_space.shape[0], probe.action_space.shape[0]
    scale = float(np.max(probe.action_space.high))
    probe.close()
    rows = []
    print(f"{args.env}, {args.envs} envs x {args.steps} steps on {args.device}; compiled kernels "
          f"{dmm_kernels.HAS_EXTENSION}; CPU threads {torch.get_num_threads()}")
    print(f"{'model':<14} {'mode':<10} {'env steps/s':>12} {'ms/step':>9}")
    for label, cfg, mode in CASES:
        torch.manual_seed(0)
        model = build_model({**cfg, "state_dim": S, "act_dim": A, "n_layers": 3}).to(args.device).eval()
        envs = gym.vector.SyncVectorEnv(
            [lambda: gym.make(args.env, max_episode_steps=args.steps) for _ in range(args.envs)])
        t0 = time.perf_counter()
        res = run_episodes(model, args.env, episodes=args.envs, target_return=0.0, reward_scale=1.0,
                           state_mean=np.zeros(S), state_std=np.ones(S), mode=mode,
                           action_scale=scale, device=args.device, envs=envs)
        dt = time.perf_counter() - t0
        envs.close()
        n_steps = int(res["lengths"].sum())
        rows.append({"env": args.env, "envs": args.envs, "model": label, "mode": mode,
                     "device": args.device, "env_steps": n_steps,
                     "env_steps_per_s": round(n_steps / dt, 1),
                     "ms_per_vector_step": round(dt / max(res["lengths"].max(), 1) * 1e3, 3),
                     "compiled_kernels": dmm_kernels.HAS_EXTENSION})
        print(f"{label:<14} {mode:<10} {n_steps / dt:>12.0f} {rows[-1]['ms_per_vector_step']:>9.2f}")
    write_rows(rows, args.out)


if __name__ == "__main__":
    main()
