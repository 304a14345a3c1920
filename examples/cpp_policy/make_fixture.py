"""Fixtures of check.sh: a tiny trained run, exported twice (recurrent with the plain torch ops,
window with the dmm ops), a fixed sequence of steps (two episodes of random observations and
rewards), and the actions Python's runner (dmm.exported.ExportedPolicy) gives on them, which the
C++ Policy must reproduce.  Usage: python make_fixture.py OUT_DIR"""
import sys
from pathlib import Path

import numpy as np

from dmm.cli import main
from dmm.exported import ExportedPolicy

PACKAGES = {"recurrent-reference": ("recurrent", "reference"), "window-dmm": ("window", "dmm")}
EPISODES, STEPS = 2, 40


def write_rows(path: Path, rows) -> None:
    path.write_text("".join(" ".join(repr(float(v)) for v in row) + "\n" for row in rows))


def make(out: Path) -> None:
    run = out / "run"
    tiny = ["model.d_model=16", "model.n_layers=2", "model.context_len=4", "model.window=3",
            "train.batch_size=16", "train.threads=1", "--no-progress"]
    if main(["train", "--steps", "5", "--out", str(run), "--eval-episodes", "0", *tiny]) != 0:
        raise SystemExit("make_fixture: training the tiny run failed")
    rng = np.random.default_rng(0)
    steps = []  # reset flag, reward earned by the previous action, observation
    for _ in range(EPISODES):
        for t in range(STEPS):
            steps.append([float(t == 0), float(np.float32(rng.normal() * 5)),
                          *rng.normal(size=3).astype(np.float32)])
    write_rows(out / "steps.txt", steps)
    for name, (mode, ops) in PACKAGES.items():
        package = out / f"{name}.pt2"
        if main(["export", str(run), "--out", str(package), "--mode", mode, "--ops", ops]) != 0:
            raise SystemExit(f"make_fixture: exporting {name} failed")
        policy, actions = ExportedPolicy(package), []
        for reset, reward, *obs in steps:
            if reset:
                policy.reset()
            actions.append(policy.act(np.array([obs], np.float32), np.array([reward]))[0])
        write_rows(out / f"{name}.expected.txt", actions)


if __name__ == "__main__":
    make(Path(sys.argv[1]))
