"""The paper's comparison on the project's own Hopper data (datasets/hopper, `dmm datasets make`):
DMM (preset v1, conv mixer), DMM preset v2 (dense mixer), Decision Mamba (`--mixer none`) and the
Decision Transformer, same data and training budget, several seeds each.

  python benchmarks/hopper_compare.py run [--dataset medium-replay] [--seeds 0 1 2] [--steps N] [--jobs 2]
  python benchmarks/hopper_compare.py summary [--dataset medium-replay]

`run` trains every row and seed (seed by seed, `--jobs` single-threaded `dmm train` processes
side by side), each into runs/hopper-compare/<dataset>/<row>-seed<S>; a run whose results.json
exists is skipped, so an interrupted `run` continues. `summary` writes benchmarks/results/
hopper_compare_<dataset>.{csv,md,png}: final normalized score (mean +- std over seeds), parameter
count and wall time per run (training and the final evaluation) per row. `commands` prints the
one `dmm train` command per row and seed.

The budget (BUDGET below) is what a 2-core CPU machine carries: the paper's architecture
(K 8, 3 layers, d_model 128, 64 for v2) and optimiser, but a short schedule. The bundled configs
(dmm/configs/hopper-*.yaml) keep the paper's full schedule (100k steps, 10k warmup, 100
evaluation episodes) for GPU users: drop the budget overrides to get it.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "datasets" / "hopper" / "d4rl"

# name -> (label, dmm train arguments)
ROWS = {
    "dmm-v1-conv": ("DMM v1, conv mixer (d_model 128)",
                    ["--model", "dmm", "--mixer", "conv", "model.preset=v1"]),
    "dmm-v2": ("DMM v2, dense mixer (d_model 64)",
               ["--model", "dmm", "--mixer", "dense", "model.preset=v2", "model.d_model=64"]),
    "dm": ("Decision Mamba (--mixer none)", ["--model", "dmm", "--mixer", "none", "model.preset=v1"]),
    "dt": ("Decision Transformer (K 20)", ["--model", "dt", "--config", "dt-default",
                                           "data.reward_scale=1000", "eval.target_return=3600"]),
}
# The 2-core CPU budget: same for every row.
BUDGET = {"steps": 5000, "warmup": 500, "eval_episodes": 20, "lr": "3e-4"}


def run_dir_of(dataset: str, row: str, seed: int) -> Path:
    return ROOT / "runs" / "hopper-compare" / dataset / f"{row}-seed{seed}"


def commands(dataset: str, seeds, budget: dict) -> list[tuple[str, int, list[str], Path]]:
    data = DATA / f"hopper-{dataset}-dmm-v0.hdf5"
    out = []
    for row, (_, extra) in ROWS.items():
        for seed in seeds:
            run_dir = run_dir_of(dataset, row, seed)
            cfg = [] if "--config" in extra else ["--config", f"hopper-{dataset}"]
            cmd = ["dmm", "train", *cfg, "--dataset", str(data.relative_to(ROOT)),
                   "--seed", str(seed), "--steps", str(budget["steps"]),
                   "--eval-episodes", str(budget["eval_episodes"]), "--eval-every", "0",
                   "--lr", str(budget["lr"]), "--no-progress", "--out", str(run_dir.relative_to(ROOT)),
                   *extra, f"train.warmup_steps={budget['warmup']}", "train.lr_decay=cosine",
                   "train.threads=1"]
            out.append((row, seed, cmd, run_dir))
    return out


def _train_one(row: str, seed: int, cmd: list[str], run_dir: Path) -> None:
    if run_dir.exists():  # an interrupted run: start it again (simple and deterministic)
        shutil.rmtree(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    print(f"{time.strftime('%H:%M:%S')} {row} seed {seed}: {shlex.join(cmd)}", flush=True)
    log = run_dir.parent / f"{run_dir.name}.log"
    with open(log, "w") as f:
        rc = subprocess.call([sys.executable, "-m", "dmm", *cmd[1:]], cwd=ROOT, stdout=f,
                             stderr=subprocess.STDOUT)
    status = "done" if rc == 0 else f"failed (rc {rc}), see {log}"
    print(f"{time.strftime('%H:%M:%S')} {row} seed {seed}: {status}", flush=True)


def run(args) -> None:
    budget = dict(BUDGET, steps=args.steps or BUDGET["steps"])
    todo = []
    for row, seed, cmd, run_dir in commands(args.dataset, args.seeds, budget):
        if row not in args.rows:
            continue
        if (run_dir / "results.json").exists():
            print(f"{row} seed {seed}: done", flush=True)
        else:
            todo.append((row, seed, cmd, run_dir))
    todo.sort(key=lambda job: job[1])  # seed by seed: every row has results early
    # Each run is one single-threaded process, so --jobs up to the core count run side by side.
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(lambda job: _train_one(*job), todo))


def _n_params(run_dir: Path) -> int | None:
    """Parameter count: the training log's line, else the checkpoint's tensors."""
    log = run_dir.parent / f"{run_dir.name}.log"
    m = re.search(r"\(([\d,]+) parameters\)", log.read_text()) if log.exists() else None
    if m:
        return int(m.group(1).replace(",", ""))
    ckpt = run_dir / "checkpoints" / "last.pt"
    if ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)["model"]
        return int(sum(v.numel() for v in state.values()))
    return None


def summary(args) -> None:
    rows, data_score = [], None
    for row, (label, _) in ROWS.items():
        scores, secs, params = [], [], None
        for seed in args.seeds:
            run_dir = run_dir_of(args.dataset, row, seed)
            res_path = run_dir / "results.json"
            if not res_path.exists():
                continue
            res = json.loads(res_path.read_text())
            scores.append(res["final_eval"]["score_mean"])
            secs.append(res["elapsed_s"])
            data_score = res.get("dataset_normalized_return", data_score)
            params = params or _n_params(run_dir)
        if scores:
            rows.append({"row": row, "label": label, "seeds": len(scores),
                         "scores": [round(s, 1) for s in scores],
                         "mean": float(np.mean(scores)), "std": float(np.std(scores)),
                         "params": params, "seconds_mean": float(np.mean(secs))})
    out = ROOT / "benchmarks" / "results" / f"hopper_compare_{args.dataset}"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["row"])
        w.writeheader()
        w.writerows(rows)
    lines = ["| model | seeds | final normalized score (mean ± std over seeds) | per seed | "
             "parameters | wall time per run (s, mean; training + final evaluation) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['seeds']} | **{r['mean']:.1f} ± {r['std']:.1f}** | "
                     f"{' / '.join(f'{s:.1f}' for s in r['scores'])} | "
                     f"{format(r['params'], ',') if r['params'] else '?'} | "
                     f"{r['seconds_mean']:.0f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if rows:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.5))
        for i, r in enumerate(rows):
            ax.bar(i, r["mean"], yerr=r["std"], capsize=4, color="C%d" % i, alpha=0.7)
            ax.plot([i] * len(r["scores"]), r["scores"], "k.", ms=6)
        ax.set_xticks(range(len(rows)), [r["label"].split(" (")[0] for r in rows], fontsize=8)
        if data_score is not None:
            ax.axhline(data_score, color="k", ls="--", lw=1, label=f"dataset average ({data_score:.1f})")
            ax.legend(fontsize=8, loc="upper right")
        ax.set_ylabel("normalized score (D4RL refs)")
        ax.set_title(f"Hopper-v5 {args.dataset} (dmm datasets make), {BUDGET['steps']} steps, "
                     "mean ± std over seeds", fontsize=10)
        fig.tight_layout()
        fig.savefig(out.with_suffix(".png"), dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["run", "summary", "commands"])
    p.add_argument("--dataset", default="medium-replay", choices=["medium-replay", "medium"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=None, help=f"training steps (default {BUDGET['steps']})")
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS), help="rows to train")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs side by side (each uses one thread; at most the number of cores)")
    args = p.parse_args()
    if args.jobs < 1:
        p.error(f"--jobs must be at least 1; got {args.jobs}")
    if args.what == "run":
        run(args)
    elif args.what == "summary":
        summary(args)
    else:
        budget = dict(BUDGET, steps=args.steps or BUDGET["steps"])
        for _, _, cmd, _ in commands(args.dataset, args.seeds, budget):
            print(shlex.join(cmd))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
