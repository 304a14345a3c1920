"""benchmarks/hopper_compare.py: every row's command is a valid `dmm train` call on the same data
with the same budget, and `summary` turns finished run folders into the table."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from dmm.cli import build_parser, train_config
from dmm.config import model_config, resolve_config
from dmm.data import load_dataset
from dmm.factory import build_model

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("hopper_compare", ROOT / "benchmarks" / "hopper_compare.py")
hopper_compare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hopper_compare)


def _train_config(cmd: list[str]) -> dict:
    """The configuration `dmm train` would train with."""
    return train_config(build_parser().parse_args(cmd[1:]))


@pytest.mark.parametrize("dataset", ["medium-replay", "medium"])
def test_rows_share_data_and_budget(dataset):
    jobs = hopper_compare.commands(dataset, [0, 1, 2], hopper_compare.BUDGET)
    assert len(jobs) == 3 * len(hopper_compare.ROWS)
    assert len({run_dir for *_, run_dir in jobs}) == len(jobs)  # no two runs share a folder
    configs = {(row, seed): _train_config(cmd) for row, seed, cmd, _ in jobs}
    budget = {(c["data"]["dataset"], c["train"]["steps"], c["train"]["lr"], c["train"]["warmup_steps"],
               c["train"]["lr_decay"], c["train"]["batch_size"], c["eval"]["episodes"],
               c["train"]["eval_every"]) for c in configs.values()}
    assert budget == {(f"datasets/hopper/d4rl/hopper-{dataset}-dmm-v0.hdf5", 5000, 3e-4, 500,
                       "cosine", 64, 20, 0)}
    assert {c["train"]["seed"] for c in configs.values()} == {0, 1, 2}


def test_rows_build_the_papers_models():
    jobs = hopper_compare.commands("medium-replay", [0], hopper_compare.BUDGET)
    data = load_dataset(str(ROOT / "datasets/hopper/d4rl/hopper-medium-replay-dmm-v0.hdf5"))
    models, n_params = {}, {}
    for row, _, cmd, _ in jobs:
        cfg = resolve_config(_train_config(cmd), data)
        models[row] = cfg["model"]
        n_params[row] = sum(p.numel() for p in build_model(model_config(cfg, data)).parameters())
    assert (models["dmm-v1-conv"]["mixer"], models["dmm-v1-conv"]["d_model"]) == ("conv", 128)
    assert (models["dmm-v2"]["preset"], models["dmm-v2"]["d_model"]) == ("v2", 64)
    assert models["dm"]["mixer"] == "none" and models["dm"]["d_model"] == 128
    assert models["dt"]["model"] == "dt"
    # Decision Mamba is DMM v1 without the token mixer: fewer parameters, nothing else different.
    assert n_params["dm"] < n_params["dmm-v1-conv"]
    assert {k: v for k, v in models["dm"].items() if k != "mixer"} == \
        {k: v for k, v in models["dmm-v1-conv"].items() if k != "mixer"}


def test_summary_table_from_run_folders(tmp_path, monkeypatch):
    monkeypatch.setattr(hopper_compare, "ROOT", tmp_path)
    scores = {"dmm-v1-conv": [40.0, 50.0, 60.0], "dt": [10.0, 20.0]}
    for row, per_seed in scores.items():
        for seed, score in enumerate(per_seed):
            run_dir = hopper_compare.run_dir_of("medium-replay", row, seed)
            run_dir.mkdir(parents=True)
            (run_dir / "results.json").write_text(json.dumps(
                {"final_eval": {"score_mean": score}, "elapsed_s": 100.0 + seed}))
            (run_dir.parent / f"{run_dir.name}.log").write_text("training dmm (1,234 parameters) on x\n")
    args = hopper_compare.argparse.Namespace(dataset="medium-replay", seeds=[0, 1, 2])
    hopper_compare.summary(args)
    out = tmp_path / "benchmarks" / "results" / "hopper_compare_medium-replay"
    table = out.with_suffix(".md").read_text().splitlines()
    assert len(table) == 4  # header, rule, the two rows that have results
    assert "| 3 | **50.0 ± 8.2** | 40.0 / 50.0 / 60.0 | 1,234 | 101 |" in table[2]
    assert "| 2 | **15.0 ± 5.0** | 10.0 / 20.0 |" in table[3]
    assert out.with_suffix(".png").stat().st_size > 0
