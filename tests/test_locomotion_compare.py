"""benchmarks/locomotion_compare.py: every row's command is a valid `dmm train` call on the same data
with the same budget, and `summary` / `table` turn finished runs into the tables."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import locomotion_compare as compare
from dmm.cli import build_parser, train_config
from dmm.config import model_config, resolve_config
from dmm.data import load_dataset
from dmm.factory import build_model

ROOT = Path(__file__).resolve().parents[1]


def _train_config(cmd: list[str]) -> dict:
    """The configuration `dmm train` would train with."""
    return train_config(build_parser().parse_args(cmd[1:]))


@pytest.mark.parametrize("data", compare.DATASETS)
def test_rows_share_data_and_budget(data):
    jobs = compare.commands(data, [0, 1, 2], compare.BUDGET)
    assert len(jobs) == 3 * len(compare.ROWS)
    assert len({run_dir for *_, run_dir in jobs}) == len(jobs)  # no two runs share a folder
    configs = {(row, seed): _train_config(cmd) for row, seed, cmd, _ in jobs}
    budget = {(c["data"]["dataset"], c["train"]["steps"], c["train"]["lr"], c["train"]["warmup_steps"],
               c["train"]["lr_decay"], c["train"]["batch_size"], c["eval"]["episodes"],
               c["train"]["eval_every"], c["eval"]["target_return"]) for c in configs.values()}
    task = data.split("-")[0]
    assert budget == {(f"datasets/{task}/d4rl/{data}-dmm-v0.hdf5", 5000, 3e-4, 500, "cosine", 64, 20,
                       0, {"hopper": 3600, "halfcheetah": 12000, "walker2d": 5000}[task])}
    assert {c["train"]["seed"] for c in configs.values()} == {0, 1, 2}


def test_rows_build_the_papers_models():
    jobs = compare.commands("hopper-medium-replay", [0], compare.BUDGET)
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


def _finish_runs(root: Path, data: str, scores: dict) -> None:
    """Fake finished `dmm train` runs, kept the way `run` keeps them."""
    for row, per_seed in scores.items():
        for seed, score in enumerate(per_seed):
            run_dir = compare.run_dir_of(data, row, seed)
            run_dir.mkdir(parents=True)
            (run_dir / "results.json").write_text(json.dumps(
                {"final_eval": {"score_mean": score}, "elapsed_s": 100.0 + seed,
                 "dataset_normalized_return": 12.5}))
            (run_dir.parent / f"{run_dir.name}.log").write_text("training dmm (1,234 parameters) on x\n")
            compare.keep(data, row, seed)
            assert (compare.kept_dir_of(data, row, seed) / "results.json").exists()


def test_summary_and_table_from_kept_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(compare, "ROOT", tmp_path)
    _finish_runs(tmp_path, "walker2d-medium", {"dmm-v1-conv": [40.0, 50.0, 60.0], "dt": [10.0, 20.0]})
    compare.summary(compare.argparse.Namespace(data=["walker2d-medium"], seeds=[0, 1, 2]))
    out = tmp_path / "benchmarks" / "results" / "compare_walker2d-medium"
    table = out.with_suffix(".md").read_text().splitlines()
    assert len(table) == 4  # header, rule, the two rows that have results
    assert "| 3 | **50.0 ± 8.2** | 40.0 / 50.0 / 60.0 | 1,234 | 101 |" in table[2]
    assert "| 2 | **15.0 ± 5.0** | 10.0 / 20.0 |" in table[3]
    assert out.with_suffix(".png").stat().st_size > 0
    capsys.readouterr()
    compare.table(compare.argparse.Namespace(seeds=[0, 1, 2]))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| model | walker2d-medium | parameters |"
    assert lines[2].endswith("| 50.0 ± 8.2 (3) | 1,234 |")
    assert lines[-1].endswith("| 74.0 | |")  # the Decision Transformer as reported on D4RL


def test_run_skips_kept_results_and_refuses_missing_data(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(compare, "ROOT", tmp_path)
    args = compare.argparse.Namespace(data=["walker2d-medium"], seeds=[0], steps=None,
                                      rows=["dt"], jobs=1)
    with pytest.raises(SystemExit, match="walker2d-medium-dmm-v0.hdf5 not found"):
        compare.run(args)
    compare.data_file("walker2d-medium").parent.mkdir(parents=True)
    compare.data_file("walker2d-medium").write_bytes(b"")
    _finish_runs(tmp_path, "walker2d-medium", {"dt": [10.0]})
    monkeypatch.setattr(compare, "_train_one", lambda *a: pytest.fail("trained a kept run again"))
    compare.run(args)
    assert "walker2d-medium dt seed 0: done" in capsys.readouterr().out
