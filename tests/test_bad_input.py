"""Bad input to the command line: one line `dmm <command>: error: ...` naming the value, what was
expected and the fix, exit status 2, and nothing written or lost. One test per input."""
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from dmm.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.d_model=16", "model.n_layers=1", "train.batch_size=8", "train.threads=1",
        "--no-progress"]


def tree(folder: Path) -> dict:
    """Every file under `folder` with its bytes: what a failed command must leave as it was."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def one_error_line(err: str, command: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"dmm {command}: error: "), err
    return lines[0]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty current folder and dataset caches, so any file a command writes shows up in
    tree() (the embedded data's cache stays the shared one: generating it takes a while)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path / "d4rl"))
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    return tmp_path


def run_dmm(args, tmp_path, prelude="", **env_changes):
    """`dmm ARGS` in a fresh interpreter (environment switches are read at import)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DMM_KERNELS_BACKEND", "TRITON_INTERPRET")}
    env.update(PYTHONPATH=str(ROOT), DMM_CACHE_DIR=str(tmp_path / "cache"),
               D4RL_DATASET_DIR=str(tmp_path / "d4rl"),
               MINARI_DATASETS_PATH=str(tmp_path / "minari"), **env_changes)
    code = prelude + f"import sys\nfrom dmm.cli import main\nsys.exit(main({list(args)!r}))\n"
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)


# ---- environment switches -----------------------------------------------------------------------

def test_unknown_backend_switch_leaves_help_and_datasets_working(tmp_path):
    for args in (["--help"], ["datasets"], ["info"]):
        out = run_dmm(args, tmp_path, DMM_KERNELS_BACKEND="bogus")
        assert out.returncode == 0 and not out.stderr, (args, out.stderr)
    assert "DMM_KERNELS_BACKEND='bogus' is not a backend" in out.stdout  # dmm info says why
    out = run_dmm(["train", "--out", "run"], tmp_path, DMM_KERNELS_BACKEND="bogus")
    assert out.returncode == 2
    line = one_error_line(out.stderr, "train")
    assert ("DMM_KERNELS_BACKEND='bogus' is not a backend: expected one of cuda, triton, "
            "reference; unset it for the automatic choice") in line
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


NO_CUDA_KERNELS = (  # as if the build had no CUDA kernels (made without a toolkit)
    "import torch\n"
    "has_kernel = torch._C._dispatch_has_kernel_for_dispatch_key\n"
    "torch._C._dispatch_has_kernel_for_dispatch_key = "
    "lambda op, key: key != 'CUDA' and has_kernel(op, key)\n")


def test_forced_cuda_on_a_build_without_cuda_kernels(tmp_path):
    import dmm_kernels
    if not dmm_kernels.EXTENSION_LOADED:
        pytest.skip("compiled ops not built")
    out = run_dmm(["eval", "nowhere"], tmp_path, prelude=NO_CUDA_KERNELS,
                  DMM_KERNELS_BACKEND="cuda")
    assert out.returncode == 2
    line = one_error_line(out.stderr, "eval")
    assert "DMM_KERNELS_BACKEND=cuda: this build of dmm_kernels has no CUDA kernels" in line
    assert "unset it to use the Triton kernels" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ---- optional packages --------------------------------------------------------------------------

def test_minari_dataset_without_minari(workdir, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "minari", None)  # import minari fails, as when not installed
    assert main(["train", "--dataset", "minari:dmm/hopper/medium-v0", "--out", "run"]) == 2
    line = one_error_line(capsys.readouterr().err, "train")
    assert "reading 'minari:' datasets needs minari, which is not installed: pip install 'minari'" in line
    assert tree(workdir) == {}


def test_datasets_make_without_stable_baselines3(workdir, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "stable_baselines3", None)
    assert main(["datasets", "make", "Hopper-v5", "--out", "out"]) == 2
    line = one_error_line(capsys.readouterr().err, "datasets make")
    assert "needs stable_baselines3, which is not installed: pip install 'stable-baselines3'" in line
    assert "pip install '.[datasets]'" in line
    assert tree(workdir) == {}


# ---- dmm datasets make: the env first -----------------------------------------------------------

@pytest.mark.parametrize("env", ["NotAnEnv-v0", "Pendulum-v1", "Hopper-v4"])
def test_datasets_make_refuses_unsupported_envs(env, workdir, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "stable_baselines3", None)  # the env is checked before it
    assert main(["datasets", "make", env]) == 2
    line = one_error_line(capsys.readouterr().err, "datasets make")
    assert (f"'{env}' is not an env `dmm datasets make` supports; choose one of Hopper-v5, "
            "HalfCheetah-v5, Walker2d-v5") in line
    assert tree(workdir) == {}


def test_datasets_make_pack_without_out(workdir, capsys):
    assert main(["datasets", "make", "Hopper-v5", "--pack"]) == 2
    assert "--pack needs --out" in one_error_line(capsys.readouterr().err, "datasets make")
    assert tree(workdir) == {}


# ---- dataset shapes -----------------------------------------------------------------------------

def write_hopper_file(path, state_dim, act_dim, n=120):
    rng = np.random.default_rng(0)
    timeouts = np.zeros(n, bool)
    timeouts[59::60] = True
    with h5py.File(path, "w") as f:
        f["observations"] = rng.standard_normal((n, state_dim)).astype(np.float32)
        f["actions"] = rng.uniform(-1, 1, (n, act_dim)).astype(np.float32)
        f["rewards"] = rng.standard_normal(n).astype(np.float32)
        f["terminals"] = np.zeros(n, bool)
        f["timeouts"] = timeouts
    return path


@pytest.mark.parametrize("state_dim,act_dim,key,have,want", [
    (5, 3, "observations", 5, 11), (11, 2, "actions", 2, 3)])
def test_dataset_width_against_the_env(state_dim, act_dim, key, have, want, workdir, capsys):
    pytest.importorskip("mujoco", reason="needs gymnasium[mujoco]")
    data = write_hopper_file(workdir / "hopper-medium-v2.hdf5", state_dim, act_dim)
    before = tree(workdir)
    assert main(["train", "--dataset", str(data), "--out", "run", *TINY]) == 2
    line = one_error_line(capsys.readouterr().err, "train")
    assert (f"hopper-medium-v2: {key} are {have} wide but Hopper-v5 has {want}; this is not "
            "Hopper-v5 data: pass data recorded in Hopper-v5, or --eval-episodes 0") in line
    assert tree(workdir) == before


def test_dataset_width_against_the_config(workdir, capsys):
    assert main(["train", "--out", "run", "model.state_dim=4", *TINY]) == 2
    line = one_error_line(capsys.readouterr().err, "train")
    assert ("pendulum-medium-replay: observations are 3 wide but the config's model section has "
            "state_dim 4; train on data of that width, or leave model.state_dim out") in line
    assert not (workdir / "run").exists()


def test_dataset_width_against_the_resumed_model(workdir, capsys, monkeypatch):
    """The data file changed width since the run started: refused before the first step."""
    data = write_hopper_file(workdir / "toy.hdf5", 5, 2)
    assert main(["train", "--dataset", str(data), "--out", "run", "--steps", "2",
                 "--eval-episodes", "0", *TINY]) == 0
    capsys.readouterr()
    write_hopper_file(data, 6, 2)
    before = tree(workdir)
    assert main(["train", "--resume", "run", "--steps", "4", "--no-progress"]) == 2
    line = one_error_line(capsys.readouterr().err, "train")
    assert "toy: observations are 6 wide but the model of run has state_dim 5" in line
    assert tree(workdir) == before


# ---- checkpoints --------------------------------------------------------------------------------

@pytest.fixture
def finished_run(workdir, capsys):
    assert main(["train", "--out", "run", "--steps", "2", "--eval-episodes", "0", *TINY]) == 0
    capsys.readouterr()
    return workdir / "run"


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_resume_from_a_damaged_checkpoint(damage, finished_run, workdir, capsys):
    ckpt = finished_run / "checkpoints" / "last.pt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"")
    before = tree(workdir)
    assert main(["train", "--resume", str(finished_run), "--steps", "4", "--no-progress"]) == 2
    line = one_error_line(capsys.readouterr().err, "train")
    what = "cannot read as a checkpoint" if damage == "truncated" else "empty file, not a checkpoint"
    assert f"{ckpt}: {what}" in line
    assert "start a new run (dmm train without --resume)" in line
    assert tree(workdir) == before


def test_resume_with_fewer_steps_than_done(finished_run, workdir, capsys):
    before = tree(workdir)
    assert main(["train", "--resume", str(finished_run), "--steps", "1", "--no-progress"]) == 2
    line = one_error_line(capsys.readouterr().err, "train")
    assert "--steps 1 is below the 2 steps" in line and "give more steps" in line
    assert tree(workdir) == before


# ---- values ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,message", [
    (["--steps", "0"], "train.steps = 0: expected an integer >= 1"),
    (["train.log_every=0"], "train.log_every = 0: expected an integer >= 1"),
    (["--lr", "-1"], "train.lr = -1.0: expected a number > 0"),
    (["--device", "gpu"], "--device 'gpu': expected auto, cpu, cuda or cuda:N"),
])
def test_out_of_range_values(args, message, workdir, capsys):
    assert main(["train", "--out", "run", *args, *TINY]) == 2
    assert message in one_error_line(capsys.readouterr().err, "train")
    assert tree(workdir) == {}


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is there")
def test_cuda_device_without_a_gpu(workdir, capsys):
    assert main(["train", "--out", "run", "--device", "cuda", *TINY]) == 2
    line = one_error_line(capsys.readouterr().err, "train")
    assert "--device cuda was requested but torch sees no CUDA GPU" in line and "--device cpu" in line
    assert tree(workdir) == {}
