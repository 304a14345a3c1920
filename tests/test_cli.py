"""Command line: help texts, a tiny end-to-end train + eval, info, datasets, errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dmm.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.d_model=16", "model.n_layers=1", "train.batch_size=16", "train.threads=1",
        "train.log_every=5", "--no-progress"]


@pytest.mark.parametrize("cmd", [[], ["train"], ["eval"], ["compare"], ["datasets"], ["info"]])
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main(cmd + ["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "usage: dmm" in text
    if cmd == ["train"]:
        for flag in ("--dataset", "--resume", "--model", "--mixer", "section.key=value", "examples"):
            assert flag in text


def test_python_m_dmm_help():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "dmm", "--help"], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    for cmd in ("train", "eval", "compare", "datasets", "info"):
        assert cmd in out.stdout


def test_train_then_eval_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--steps", "20", "--out", str(out), "--eval-episodes", "2", "--seed", "3",
               *TINY])
    assert rc == 0
    text = capsys.readouterr().out
    assert "final normalized score" in text and "dataset average normalized return" in text
    results = json.loads((out / "results.json").read_text())
    assert results["step"] == 20 and results["final_eval"]["episodes"] == 2
    for name in ("config.yaml", "metrics.csv", "learning_curve.png", "checkpoints/last.pt"):
        assert (out / name).exists(), name

    rc = main(["eval", str(out), "--episodes", "2", "--mode", "recurrent", "--seeds", "0", "1",
               "--target-return", "-300", "-150"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "target -300" in text and "max over targets" in text
    res = json.loads((out / "eval-recurrent.json").read_text())
    assert res["episodes"] == 4 and res["seeds"] == [0, 1] and res["checkpoint_step"] == 20

    # --resume extends the run
    assert main(["train", "--resume", str(out), "--steps", "25", "--eval-episodes", "0",
                 "--no-progress"]) == 0
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=False)["step"] == 25


def test_dt_model_and_errors(tmp_path, capsys):
    assert main(["train", "--model", "dt", "--mixer", "line"]) == 2
    assert "--mixer applies to DMM only" in capsys.readouterr().err
    assert main(["train", "train.nope=1"]) == 2
    assert "no key 'nope'" in capsys.readouterr().err
    assert main(["train", "--config", "no-such-config"]) == 2
    assert "bundled configs" in capsys.readouterr().err
    rc = main(["train", "--model", "dt", "--steps", "3", "--out", str(tmp_path / "dt"),
               "--eval-episodes", "0", *TINY])
    assert rc == 0
    assert "training dt" in capsys.readouterr().out
    assert main(["eval", str(tmp_path / "dt"), "--mode", "recurrent", "--episodes", "1"]) == 2
    assert "use --mode window" in capsys.readouterr().err


def test_info_and_datasets(capsys):
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert "compiled dmm_kernels extension" in text and "CUDA available" in text
    assert main(["datasets"]) == 0
    text = capsys.readouterr().out
    assert "pendulum-medium-replay" in text and "D4RL cache" in text and "Minari cache" in text


def test_ctrl_c_saves_a_checkpoint_and_resume_continues(tmp_path):
    import signal
    import time
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "dmm", "train", "--steps", "100000", "--out",
                             str(out), "--eval-episodes", "0", *TINY, "train.checkpoint_every=100000"],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 120
    while not (out / "metrics.csv").exists() or (out / "metrics.csv").stat().st_size < 200:
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "--resume" in stdout
    step = torch.load(out / "checkpoints" / "last.pt", weights_only=False)["step"]
    assert 0 < step < 100000
    assert main(["train", "--resume", str(out), "--steps", str(step + 2), "--no-progress"]) == 0
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=False)["step"] == step + 2


def test_compare_trains_both_models(tmp_path, capsys):
    rc = main(["compare", "--steps", "3", "--eval-episodes", "1", "--out", str(tmp_path), *TINY])
    assert rc == 0
    text = capsys.readouterr().out
    assert "dmm " in text and "dt " in text and "dataset average normalized return" in text
    res = json.loads((tmp_path / "compare.json").read_text())
    assert set(res) == {"dmm", "dt"} and res["dt"]["final_eval"]["episodes"] == 1
    assert (tmp_path / "dmm" / "checkpoints" / "last.pt").exists()
    assert (tmp_path / "dt" / "checkpoints" / "last.pt").exists()
