"""`dmm datasets install DIR` (dmm.data.install): every file verified before anything is written,
each dataset put in place whole through a staging folder (its Minari dataset made from its HDF5
file), an install cut short by a kill named (by `dmm datasets` and the loaders) with the command
that repairs it, and repaired by that command.

The shipped folder here is made like `dmm datasets make` makes one, small: three random-action
Hopper datasets of three episodes (each reset with the seed the recipe uses), written by its
write_hdf5 with its metadata, listed in MANIFEST.json."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

pytest.importorskip("mujoco", reason="needs gymnasium[mujoco]")
pytest.importorskip("minari", reason="needs minari")

import gymnasium as gym  # noqa: E402

from dmm.cli import main  # noqa: E402
from dmm.data import generate as g  # noqa: E402
from dmm.data import load_dataset  # noqa: E402
from dmm.data.install import STAGING, install_shipped, sha256  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("hopper-a", "hopper-b", "hopper-c")
EPISODES = 3


def minari_id(name):
    return f"dmmtest/hopper/{name.split('-')[1]}-v0"


def random_rollouts(seed: int) -> tuple[dict, list]:
    """EPISODES episodes of uniform random actions, reset as the recipe's "random" kind is:
    D4RL arrays and, per episode, the observation after its last action."""
    env = gym.make("Hopper-v5")
    rng = np.random.default_rng(seed)
    keys = ("observations", "actions", "rewards", "terminals", "timeouts")
    buf, last = {k: [] for k in keys}, []
    for i in range(EPISODES):
        obs, _ = env.reset(seed=g.episode_seed(seed, g.RESET_STREAMS["random"], i))
        done = False
        while not done:
            act = rng.uniform(-1, 1, 3).astype(np.float32)
            nxt, r, term, trunc, _ = env.step(act)
            for k, v in zip(keys, (obs, act, r, term, trunc and not term)):
                buf[k].append(v)
            obs, done = nxt, term or trunc
        last.append(np.float32(obs))
    arrays = {k: np.asarray(v, np.float32) for k, v in buf.items()}
    arrays["terminals"], arrays["timeouts"] = arrays["terminals"] > 0, arrays["timeouts"] > 0
    return arrays, last


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """The shipped folder (read-only for the tests: each copies it) and each dataset's last
    observations."""
    src = tmp_path_factory.mktemp("made") / "shipped"
    manifest, lasts = {}, {}
    for i, name in enumerate(NAMES):
        arrays, lasts[name] = random_rollouts(seed=i)
        h5 = src / "d4rl" / f"{name}-dmm-v0.hdf5"
        meta = {"env_id": "Hopper-v5", "seed": i, "recipe_version": g.RECIPE_VERSION,
                "kind": "random", "behaviour": {"policy": "uniform random actions",
                                                **g._summary(arrays, "Hopper-v5")}}
        g.write_hdf5(h5, arrays, meta, next_observations=False)
        manifest[name] = {"minari_id": minari_id(name), "hdf5": f"d4rl/{h5.name}",
                          "hdf5_sha256": sha256(h5), "episodes": EPISODES}
    (src / "MANIFEST.json").write_text(json.dumps(manifest))
    return src, lasts


@pytest.fixture
def shipped(made, tmp_path):
    import shutil
    return Path(shutil.copytree(made[0], tmp_path / "shipped"))


@pytest.fixture
def caches(tmp_path, monkeypatch):
    d4rl, minari = tmp_path / "d4rl", tmp_path / "minari"
    monkeypatch.setenv("D4RL_DATASET_DIR", str(d4rl))
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari))
    return d4rl, minari


def files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()} if folder.exists() else {}


def assert_complete(src, d4rl, minari, lasts=None):
    """The HDF5 files copied; each Minari dataset holds the file's steps plus, per episode, the
    observation after its last action; no staging folder left."""
    import minari as minari_pkg

    manifest = json.loads((src / "MANIFEST.json").read_text())
    assert files(d4rl) == {Path(m["hdf5"]).name: (src / m["hdf5"]).read_bytes()
                           for m in manifest.values()}
    for name, m in manifest.items():
        h5 = load_dataset(str(d4rl / Path(m["hdf5"]).name))
        mi = load_dataset(f"minari:{m['minari_id']}")
        assert len(h5.episodes) == len(mi.episodes) == EPISODES
        for a, b in zip(h5.episodes, mi.episodes):
            for key in ("observations", "actions", "rewards", "terminals"):
                np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        if lasts is not None:
            data = minari_pkg.load_dataset(m["minari_id"])
            got = [np.asarray(ep.observations)[-1] for ep in data.iterate_episodes()]
            np.testing.assert_array_equal(np.stack(got), np.stack(lasts[name]))
            assert data.env_spec.id == "Hopper-v5"
    assert not (d4rl / STAGING).exists() and not (minari / STAGING).exists()


def test_install_puts_every_dataset_in_place(shipped, made, caches, capsys):
    assert main(["datasets", "install", str(shipped)]) == 0
    assert capsys.readouterr().out.count("installed hopper-") == 3
    assert_complete(shipped, *caches, lasts=made[1])
    ds = load_dataset("d4rl:hopper-b-dmm-v0")
    assert ds.env_id == "Hopper-v5" and len(ds.episodes) == EPISODES
    # Installing again replaces each dataset whole, with the same result.
    assert main(["datasets", "install", str(shipped)]) == 0
    assert_complete(shipped, *caches)


@pytest.mark.parametrize("damage", ["changed", "missing"])
def test_a_damaged_third_file_installs_nothing(damage, shipped, caches, capsys):
    bad = shipped / "d4rl" / "hopper-c-dmm-v0.hdf5"
    if damage == "changed":
        bad.write_bytes(bad.read_bytes()[:-10] + b"0123456789")
    else:
        bad.unlink()
    assert main(["datasets", "install", str(shipped)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("dmm datasets install: error: ")
    what = "sha256 differs from MANIFEST.json" if damage == "changed" else "listed in MANIFEST.json but missing"
    assert f"{bad}: {what}" in err
    assert "git checkout" in err and "nothing was installed" in err
    d4rl, minari = caches
    assert not d4rl.exists() and not minari.exists()


def test_folder_without_manifest(tmp_path, caches, capsys):
    assert main(["datasets", "install", str(tmp_path / "nowhere")]) == 2
    assert "MANIFEST.json: no such file" in capsys.readouterr().err
    assert not caches[0].exists() and not caches[1].exists()


KILL = """
import os, sys
from pathlib import Path
from dmm.data import install
target, before = Path(sys.argv[4]), sys.argv[5] == "before"
replace = os.replace
def killing_replace(src, dst):
    if Path(dst) == target and before:
        os._exit(9)
    replace(src, dst)
    if Path(dst) == target:
        os._exit(9)
os.replace = killing_replace
install.install_shipped(*map(Path, sys.argv[1:4]))
"""


def install_killed(src, d4rl, minari, target, before):
    """An install killed (no clean-up runs, as with SIGKILL) just before or just after the
    rename onto `target`."""
    args = [str(src), str(d4rl), str(minari), str(target), "before" if before else "after"]
    out = subprocess.run([sys.executable, "-c", KILL, *args], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert out.returncode == 9, out.stderr


@pytest.mark.parametrize("where,before", [("minari", True), ("d4rl", True), ("d4rl", False)])
def test_a_killed_install_is_named_and_repaired(where, before, shipped, caches, capsys):
    d4rl, minari = caches
    target = minari / minari_id("hopper-b") if where == "minari" else d4rl / "hopper-b-dmm-v0.hdf5"
    install_killed(shipped, d4rl, minari, target, before)
    # hopper-a is complete; hopper-c not started; hopper-b is not half there in either cache.
    assert (d4rl / "hopper-a-dmm-v0.hdf5").exists() and (minari / minari_id("hopper-a")).is_dir()
    assert not (minari / minari_id("hopper-c")).exists()
    assert (minari / minari_id("hopper-b")).exists() == (where == "d4rl")
    assert (d4rl / "hopper-b-dmm-v0.hdf5").exists() == (not before)

    repair = re.escape(f"repair it with: dmm datasets install {shipped}")
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert f"interrupted install of hopper-b: its `dmm datasets install` was interrupted" in out
    assert re.search(repair, out)
    if before:  # the HDF5 file is not there yet
        with pytest.raises(FileNotFoundError, match=repair):
            load_dataset("d4rl:hopper-b-dmm-v0")
    if where == "minari":
        pytest.importorskip("minari")
        with pytest.raises(ValueError, match=repair):
            load_dataset(f"minari:{minari_id('hopper-b')}")

    assert main(["datasets", "install", str(shipped)]) == 0
    assert_complete(shipped, d4rl, minari)
    capsys.readouterr()
    assert main(["datasets"]) == 0
    assert "interrupted" not in capsys.readouterr().out


def test_reinstall_killed_after_the_old_copy_moved_aside(shipped, caches, capsys):
    d4rl, minari = caches
    install_shipped(shipped, d4rl, minari)
    target = minari / STAGING / "hopper-b.minari" / "previous"  # the old copy's resting place
    install_killed(shipped, d4rl, minari, target, before=False)
    assert not (minari / minari_id("hopper-b")).exists()
    assert main(["datasets"]) == 0
    assert "interrupted install of hopper-b" in capsys.readouterr().out
    install_shipped(shipped, d4rl, minari)
    assert_complete(shipped, d4rl, minari)


def test_a_half_there_minari_dataset_says_what_to_do(caches):
    """A dataset folder without its data files (e.g. an older install killed while unpacking)."""
    pytest.importorskip("minari")
    d4rl, minari = caches
    (minari / "dmmtest" / "hopper" / "half-v0" / "data").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"minari:dmmtest/hopper/half-v0: the dataset in .*half-v0 "
                       r"is incomplete or damaged .*delete that folder and install or make it again"):
        load_dataset("minari:dmmtest/hopper/half-v0")


def test_no_minari_installs_the_hdf5_files_only(shipped, caches, capsys):
    d4rl, minari = caches
    assert main(["datasets", "install", str(shipped), "--no-minari"]) == 0
    assert sorted(files(d4rl)) == [f"{n}-dmm-v0.hdf5" for n in NAMES]
    assert not minari.exists()


def test_a_file_that_does_not_replay_installs_nothing_of_it(shipped, caches):
    """Actions changed (and the manifest's sha256 with them): the replay no longer reproduces
    the file's observations, so its Minari dataset cannot be made; no staging is left behind."""
    d4rl, minari = caches
    h5 = shipped / "d4rl" / "hopper-b-dmm-v0.hdf5"
    with h5py.File(h5, "r+") as f:
        f["actions"][1] = -f["actions"][1]
    manifest = json.loads((shipped / "MANIFEST.json").read_text())
    manifest["hopper-b"]["hdf5_sha256"] = sha256(h5)
    (shipped / "MANIFEST.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=re.escape(f"{h5}: episode 0 does not replay (step 1: ")):
        install_shipped(shipped, d4rl, minari)
    assert (d4rl / "hopper-a-dmm-v0.hdf5").exists() and not (d4rl / "hopper-b-dmm-v0.hdf5").exists()
    assert not (d4rl / STAGING).exists() and not (minari / STAGING).exists()
