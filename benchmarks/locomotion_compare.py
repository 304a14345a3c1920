"""The paper's four-model comparison on the project's own MuJoCo locomotion data (datasets/<task>,
made by `dmm datasets make`): DMM (preset v1, conv mixer), DMM preset v2 (dense mixer), Decision
Mamba (`--mixer none`) and the Decision Transformer, same data and training budget, several seeds.

  python -m benchmarks.locomotion_compare run --data hopper-medium-replay [--seeds 0 1 2] [--jobs 2]
  python -m benchmarks.locomotion_compare summary --data hopper-medium-replay
  python -m benchmarks.locomotion_compare table          # all datasets: rows = models
  python -m benchmarks.locomotion_compare commands --data walker2d-medium

`run` trains every row and seed (seed by seed, `--jobs` single-threaded `dmm train` processes side
by side) into runs/compare/<data>/<row>-seed<S>, then copies what the comparison needs (results.json,
metrics.csv, learning_curve.png; no checkpoints) into benchmarks/results/compare/<data>/, which is
committed: a run whose results are there is skipped, so `run` continues across sessions and
machines. `summary` writes benchmarks/results/compare_<data>.{csv,md,png}: final normalized score
(mean +- std over seeds), parameter count and wall time per run. `table` prints the summary table
over every dataset (the README's).

The budget (BUDGET below) is what a 2-core CPU machine carries: the paper's architecture (K 8,
3 layers, d_model 128, 64 for v2) and optimiser, but a short schedule. The bundled configs
(dmm/configs/<task>-<kind>.yaml) keep the paper's full schedule (100k steps, 10k warmup, 100
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

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("hopper", "halfcheetah", "walker2d")
KINDS = ("medium", "medium-replay")
DATASETS = tuple(f"{t}-{k}" for t in TASKS for k in KINDS)
# Return-to-go at evaluation, the paper's (the task configs hold the same).
TARGET_RETURN = {"hopper": 3600, "halfcheetah": 12000, "walker2d": 5000}
# Decision Transformer as reported in the literature (D4RL v2 data), for orientation only.
DT_REPORTED = {"hopper-medium": 67.6, "hopper-medium-replay": 82.7,
               "halfcheetah-medium": 42.6, "halfcheetah-medium-replay": 36.6,
               "walker2d-medium": 74.0, "walker2d-medium-replay": 66.6}

# name -> (label, dmm train arguments)
ROWS = {
    "dmm-v1-conv": ("DMM v1, conv mixer (d_model 128)",
                    ["--model", "dmm", "--mixer", "conv", "model.preset=v1"]),
    "dmm-v2": ("DMM v2, dense mixer (d_model 64)",
               ["--model", "dmm", "--mixer", "dense", "model.preset=v2", "model.d_model=64"]),
    "dm": ("Decision Mamba (--mixer none)", ["--model", "dmm", "--mixer", "none", "model.preset=v1"]),
    "dt": ("Decision Transformer (K 20)", ["--model", "dt", "--config", "dt-default",
                                           "data.reward_scale=1000"]),
}
# The 2-core CPU budget: same for every row and dataset.
BUDGET = {"steps": 5000, "warmup": 500, "eval_episodes": 20, "lr": "3e-4"}


def task_of(data: str) -> str:
    return data.split("-", 1)[0]


def data_file(data: str) -> Path:
    return ROOT / "datasets" / task_of(data) / "d4rl" / f"{data}-dmm-v0.hdf5"


def run_dir_of(data: str, row: str, seed: int) -> Path:
    return ROOT / "runs" / "compare" / data / f"{row}-seed{seed}"


def kept_dir_of(data: str, row: str, seed: int) -> Path:
    """The committed copy of a finished run (no checkpoints)."""
    return ROOT / "benchmarks" / "results" / "compare" / data / f"{row}-seed{seed}"


def commands(data: str, seeds, budget: dict) -> list[tuple[str, int, list[str], Path]]:
    out = []
    for row, (_, extra) in ROWS.items():
        for seed in seeds:
            run_dir = run_dir_of(data, row, seed)
            cfg = [] if "--config" in extra else ["--config", data]
            target = [] if "--config" not in extra else [f"eval.target_return={TARGET_RETURN[task_of(data)]}"]
            cmd = ["dmm", "train", *cfg, "--dataset", str(data_file(data).relative_to(ROOT)),
                   "--seed", str(seed), "--steps", str(budget["steps"]),
                   "--eval-episodes", str(budget["eval_episodes"]), "--eval-every", "0",
                   "--lr", str(budget["lr"]), "--no-progress", "--out", str(run_dir.relative_to(ROOT)),
                   *extra, *target, f"train.warmup_steps={budget['warmup']}",
                   "train.lr_decay=cosine", "train.threads=1"]
            out.append((row, seed, cmd, run_dir))
    return out


def keep(data: str, row: str, seed: int) -> None:
    """Copy a finished run's results, metrics, curve and log into the committed folder."""
    src, dst = run_dir_of(data, row, seed), kept_dir_of(data, row, seed)
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("metrics.csv", "learning_curve.png", "results.json"):  # results.json last
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)
    log = src.parent / f"{src.name}.log"
    if log.exists():
        shutil.copy2(log, dst / "train.log")


def _train_one(data: str, row: str, seed: int, cmd: list[str], run_dir: Path) -> None:
    if run_dir.exists():  # an interrupted run: start it again (simple and deterministic)
        shutil.rmtree(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    print(f"{time.strftime('%H:%M:%S')} {data} {row} seed {seed}: {shlex.join(cmd)}", flush=True)
    log = run_dir.parent / f"{run_dir.name}.log"
    with open(log, "w") as f:
        rc = subprocess.call([sys.executable, "-m", "dmm", *cmd[1:]], cwd=ROOT, stdout=f,
                             stderr=subprocess.STDOUT)
    if rc == 0:
        keep(data, row, seed)
    status = "done" if rc == 0 else f"failed (rc {rc}), see {log}"
    print(f"{time.strftime('%H:%M:%S')} {data} {row} seed {seed}: {status}", flush=True)


def run(args) -> None:
    budget = dict(BUDGET, steps=args.steps or BUDGET["steps"])
    todo = []
    for data in args.data:
        if not data_file(data).exists():
            sys.exit(f"locomotion_compare: {data_file(data).relative_to(ROOT)} not found; make it "
                     f"with `dmm datasets make` (README, 'MuJoCo locomotion data')")
        for row, seed, cmd, run_dir in commands(data, args.seeds, budget):
            if row not in args.rows:
                continue
            if (kept_dir_of(data, row, seed) / "results.json").exists():
                print(f"{data} {row} seed {seed}: done", flush=True)
            else:
                todo.append((data, row, seed, cmd, run_dir))
    todo.sort(key=lambda job: job[2])  # seed by seed: every row of every dataset has results early
    # Each run is one single-threaded process, so --jobs up to the core count run side by side.
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(lambda job: _train_one(*job), todo))


def _n_params(kept: Path) -> int | None:
    log = kept / "train.log"
    m = re.search(r"\(([\d,]+) parameters\)", log.read_text()) if log.exists() else None
    return int(m.group(1).replace(",", "")) if m else None


def rows_of(data: str, seeds) -> tuple[list[dict], float | None]:
    """Per model: scores over the seeds that finished; and the dataset's average normalized return."""
    rows, data_score = [], None
    for row, (label, _) in ROWS.items():
        scores, secs, params = [], [], None
        for seed in seeds:
            kept = kept_dir_of(data, row, seed)
            if not (kept / "results.json").exists():
                continue
            res = json.loads((kept / "results.json").read_text())
            scores.append(res["final_eval"]["score_mean"])
            secs.append(res["elapsed_s"])
            data_score = res.get("dataset_normalized_return", data_score)
            params = params or _n_params(kept)
        if scores:
            rows.append({"row": row, "label": label, "seeds": len(scores),
                         "scores": [round(s, 1) for s in scores],
                         "mean": float(np.mean(scores)), "std": float(np.std(scores)),
                         "params": params, "seconds_mean": float(np.mean(secs))})
    return rows, data_score


def summary(args) -> None:
    for data in args.data:
        rows, data_score = rows_of(data, args.seeds)
        out = ROOT / "benchmarks" / "results" / f"compare_{data}"
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
        print(f"{data}:\n" + "\n".join(lines))
        if rows:
            _plot(rows, data_score, data, out.with_suffix(".png"))


def _plot(rows: list[dict], data_score: float | None, data: str, path: Path) -> None:
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
    ax.set_title(f"{data} (dmm datasets make, v5), {BUDGET['steps']} steps, mean ± std over seeds",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _summary_rows(data: str) -> dict[str, dict]:
    """The rows `summary` wrote for `data` (benchmarks/results/compare_<data>.csv), by model."""
    path = ROOT / "benchmarks" / "results" / f"compare_{data}.csv"
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        return {r["row"]: r for r in csv.DictReader(f)}


def table(args) -> None:
    """Models x datasets from the summaries: mean ± std over seeds (how many), parameters; and
    the Decision Transformer as reported on D4RL."""
    cells = {data: _summary_rows(data) for data in DATASETS}
    shown = [d for d in DATASETS if cells[d]]
    lines = ["| model | " + " | ".join(shown) + " | parameters |",
             "|---|" + "---|" * len(shown) + "---|"]
    for row, (label, _) in ROWS.items():
        vals, params = [], ""
        for d in shown:
            r = cells[d].get(row)
            vals.append(f"{float(r['mean']):.1f} ± {float(r['std']):.1f} ({r['seeds']})" if r else "")
            params = params or (r["params"] if r else "")
        lines.append(f"| {label} | " + " | ".join(vals) + f" | {format(int(params), ',') if params else '?'} |")
    lines.append("| Decision Transformer as reported on D4RL v2 (full schedule) | "
                 + " | ".join(f"{DT_REPORTED[d]:.1f}" for d in shown) + " | |")
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["run", "summary", "table", "commands"])
    p.add_argument("--data", nargs="+", default=None, choices=DATASETS, metavar="DATA",
                   help=f"<task>-<kind>: {', '.join(DATASETS)} (default: all for summary / table; "
                   "required for run / commands)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=None, help=f"training steps (default {BUDGET['steps']})")
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS), help="rows to train")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs side by side (each uses one thread; at most the number of cores)")
    args = p.parse_args()
    if args.jobs < 1:
        p.error(f"--jobs must be at least 1; got {args.jobs}")
    if args.data is None:
        if args.what in ("run", "commands"):
            p.error(f"{args.what} needs --data (one or more of {', '.join(DATASETS)})")
        args.data = [d for d in DATASETS if (ROOT / "benchmarks/results/compare" / d).exists()]
    if args.what == "run":
        run(args)
    elif args.what == "summary":
        summary(args)
    elif args.what == "table":
        table(args)
    else:
        budget = dict(BUDGET, steps=args.steps or BUDGET["steps"])
        for data in args.data:
            for _, _, cmd, _ in commands(data, args.seeds, budget):
                print(shlex.join(cmd))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
