"""`dmm export`: the AOTInductor package equals the eager policy, step by step, in both modes and
with both op choices; its JSON and package metadata; bad input. AOTInductor compiles take tens of
seconds, so this module compiles two tiny packages once: recurrent with the plain torch ops and
window with the dmm ops (the reference ops where the extension is not built)."""
import json

import numpy as np
import pytest
import torch

import dmm_kernels
from dmm import export
from dmm.cli import main
from dmm.exported import ExportedPolicy, read_metadata
from dmm.evaluate import load_policy

TINY = ["model.d_model=16", "model.n_layers=2", "model.context_len=4", "model.window=3",
        "train.batch_size=16", "train.threads=1", "--no-progress"]
WINDOW_OPS = "dmm" if dmm_kernels.HAS_EXTENSION else "reference"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "run"
    assert main(["train", "--steps", "5", "--out", str(out), "--eval-episodes", "0", "--seed", "3",
                 "eval.action_pad=-5.0", *TINY]) == 0
    return out


@pytest.fixture(scope="module")
def packages(run):
    torch.set_num_threads(1)
    rec = run / "rec.pt2"
    win = run / "win.pt2"
    assert main(["export", str(run), "--out", str(rec), "--mode", "recurrent", "--ops",
                 "reference"]) == 0
    assert main(["export", str(run), "--out", str(win), "--mode", "window", "--ops",
                 WINDOW_OPS]) == 0
    return {"recurrent": rec, "window": win}


@pytest.mark.parametrize("mode", ["recurrent", "window"])
def test_replay_matches_eager(packages, mode, capsys):
    """--check: the package drives Pendulum; the eager stepper of `dmm eval` sees the same
    observations and returns-to-go: actions agree at every step, so the scores are the same."""
    assert main(["export", str(packages[mode]), "--check", "2", "--seed", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    diff = float(lines[-1].rsplit(" ", 1)[1])
    assert diff < 2e-5, lines
    exported, eager = (line.split(":", 1)[1] for line in lines[-3:-1])
    assert exported == eager and f"{mode} mode" in exported


@pytest.mark.parametrize("mode", ["recurrent", "window"])
def test_dynamic_batch_and_reset(packages, run, mode):
    """Batch 1 and 5 (the package was traced at 2); reset() restarts from the same caches."""
    model, ckpt = load_policy(run)
    for batch in (1, 5):
        policy = ExportedPolicy(packages[mode], batch=batch)
        obs = np.random.default_rng(0).normal(size=(6, batch, 3)).astype(np.float32)
        first = [policy.act(o, reward=np.full(batch, -1.5)) for o in obs]
        assert any(c.abs().sum() > 0 for c in policy.caches)  # updated in place
        policy.reset()
        again = [policy.act(o, reward=np.full(batch, -1.5)) for o in obs]
        assert first[0].shape == (batch, 1)
        np.testing.assert_array_equal(np.stack(first), np.stack(again))
        assert np.abs(np.stack(first)).max() <= policy.action_scale


def test_metadata(packages, run):
    _, ckpt = load_policy(run)
    rec, win = (read_metadata(packages[m]) for m in ("recurrent", "window"))
    assert rec["mode"] == "recurrent" and rec["ops"] == "reference" and not rec["needs_dmm_ops"]
    assert win["ops"] == WINDOW_OPS and win["needs_dmm_ops"] == (WINDOW_OPS == "dmm")
    np.testing.assert_allclose(rec["state_mean"], ckpt["state_mean"].ravel(), rtol=0, atol=0)
    assert rec["reward_scale"] == ckpt["reward_scale"] and rec["torch"] == torch.__version__
    assert rec["cpu_isa"] is not None
    assert rec["target_return"] == ckpt["config"]["eval"]["target_return"]
    assert rec["action_high"] == [rec["action_scale"]] and rec["action_low"] == [-rec["action_scale"]]
    # The caches in call order: per layer mixer window then SSM state; window: the K buffers.
    assert [c["name"] for c in rec["caches"]] == ["layer0.mixer1_cache", "layer0.ssm_state",
                                                  "layer1.mixer1_cache", "layer1.ssm_state"]
    assert rec["caches"][0]["shape"] == ["batch", 2, 16]       # W - 1 = 2 tokens of d_model
    assert rec["caches"][1]["shape"] == ["batch", 32, 16]      # (E, N)
    assert [(c["name"], c["shape"], c["init"]) for c in win["caches"]] == [
        ("states", ["batch", 4, 3], 0.0), ("actions", ["batch", 4, 1], -5.0),
        ("rtg", ["batch", 4, 1], 0.0), ("timesteps", ["batch", 4], 0)]
    # The package carries the same, for a C++ runner (AOTIModelPackageLoader::get_metadata).
    flat = torch._inductor.aoti_load_package(str(packages["window"])).get_metadata()
    assert flat["dmm.mode"] == "window" and flat["dmm.n_caches"] == "4"
    assert flat["dmm.cache.1"] == "actions float32 -5.0 4 1"
    assert [float(x) for x in flat["dmm.state_std"].split()] == win["state_std"]


def test_auto_keeps_the_faster(run, monkeypatch, tmp_path):
    """--ops auto compiles both and keeps the one with the smaller measured time (compile and
    timing replaced here: the real ones are above and in benchmarks/policy_latency.py)."""
    if not dmm_kernels.HAS_EXTENSION:
        pytest.skip("auto has one candidate without the compiled ops")
    made = []

    def fake_compile(module, specs, ops, out, metadata=None):
        assert metadata["dmm.ops"] == ops
        out.write_text(ops)
        made.append(ops)
        return out

    for faster in ("reference", "dmm"):
        times = {"reference": 50.0, "dmm": 80.0} if faster == "reference" else {"reference": 90.0, "dmm": 70.0}
        monkeypatch.setattr(export, "compile_package", fake_compile)
        monkeypatch.setattr(export, "time_package", lambda path, *a: times[path.read_text()])
        monkeypatch.setattr(export, "package_cpu_isa", lambda path: "AVX2")
        out = tmp_path / f"p-{faster}.pt2"
        meta = export.export_policy(run, out, mode="recurrent", ops="auto", log=lambda *a: None)
        assert out.read_text() == faster and meta["ops"] == faster
        assert meta["latency_us_batch1"] == times
        assert json.loads(out.with_suffix(".json").read_text())["ops"] == faster
        assert sorted(p.name for p in tmp_path.glob(f"p-{faster}*")) == [f"p-{faster}.json",
                                                                          f"p-{faster}.pt2"]
    assert made == ["reference", "dmm"] * 2


def test_bad_input(run, tmp_path, capsys):
    def error(argv):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("dmm export: error: ") and "\n" not in err, err
        return err

    assert "does not exist" in error(["export", str(tmp_path / "nope")])
    assert "has no checkpoints/last.pt" in error(["export", str(tmp_path)])
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert "cannot read as a checkpoint" in error(["export", str(bad)])
    assert "must end in .pt2" in error(["export", str(run), "--out", str(tmp_path / "p.onnx")])
    assert "--check 0" in error(["export", str(run), "--check", "0"])
    pkg = tmp_path / "x.pt2"
    pkg.write_bytes(b"")
    assert "pass --check N" in error(["export", str(pkg)])
    assert "x.json" in error(["export", str(pkg), "--check", "1"])
    with pytest.raises(SystemExit) as e:
        main(["export", str(run), "--mode", "sideways"])
    assert e.value.code == 2 and "invalid choice: 'sideways'" in capsys.readouterr().err


def test_recurrent_needs_a_metamamba(tmp_path, capsys):
    out = tmp_path / "dt"
    assert main(["train", "--model", "dt", "--steps", "2", "--out", str(out), "--eval-episodes",
                 "0", "model.n_layers=1", "model.d_model=16", "--no-progress"]) == 0
    assert main(["export", str(out), "--mode", "recurrent"]) == 2
    assert "has no recurrent form: use --mode window" in capsys.readouterr().err


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["export", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--out", "--mode", "--ops", "--check", "recurrent", "window"):
        assert flag in text
