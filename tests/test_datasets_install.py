"""`dmm datasets install DIR` (dmm.data.install): every file verified before anything is written,
each dataset put in place whole through a staging folder, an install cut short by a kill named
(by `dmm datasets` and the loaders) with the command that repairs it, and repaired by that command.

The shipped folder here is made up: three datasets, each a D4RL-layout HDF5 file and a tarball in
the Minari store layout (install treats their contents as opaque bytes)."""
import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from dmm.cli import main
from dmm.data import load_dataset
from dmm.data.install import STAGING, install_shipped, sha256

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("hopper-a", "hopper-b", "hopper-c")


def minari_id(name):
    return f"dmmtest/hopper/{name.split('-')[1]}-v0"


def _tar_add(tar, arcname, data: bytes):
    info = tarfile.TarInfo(arcname)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def shipped(tmp_path):
    src = tmp_path / "shipped"
    (src / "d4rl").mkdir(parents=True)
    manifest = {}
    for i, name in enumerate(NAMES):
        h5 = src / "d4rl" / f"{name}-dmm-v0.hdf5"
        with h5py.File(h5, "w") as f:
            f["observations"] = np.full((30, 11), i, np.float32)
            f["actions"] = np.zeros((30, 3), np.float32)
            f["rewards"] = np.ones(30, np.float32)
            f["terminals"] = np.arange(30) == 29
            f["timeouts"] = np.zeros(30, bool)
        tgz = src / f"{name}-minari.tar.xz"
        with tarfile.open(tgz, "w:xz") as tar:
            _tar_add(tar, "dmmtest/namespace_metadata.json", b"{}")
            _tar_add(tar, f"{minari_id(name)}/data/main_data.hdf5", f"episodes of {name}".encode() * 50)
            _tar_add(tar, f"{minari_id(name)}/data/metadata.json", json.dumps({"name": name}).encode())
        manifest[name] = {"minari_id": minari_id(name), "minari_tarball": tgz.name,
                          "minari_sha256": sha256(tgz), "hdf5": f"d4rl/{h5.name}",
                          "hdf5_sha256": sha256(h5)}
    (src / "MANIFEST.json").write_text(json.dumps(manifest))
    return src


@pytest.fixture
def caches(tmp_path, monkeypatch):
    d4rl, minari = tmp_path / "d4rl", tmp_path / "minari"
    monkeypatch.setenv("D4RL_DATASET_DIR", str(d4rl))
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari))
    return d4rl, minari


def files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()} if folder.exists() else {}


def expected_files(src: Path) -> tuple[dict, dict]:
    """What a complete install puts in the D4RL cache and in the Minari store."""
    manifest = json.loads((src / "MANIFEST.json").read_text())
    d4rl, minari = {}, {}
    for m in manifest.values():
        d4rl[Path(m["hdf5"]).name] = (src / m["hdf5"]).read_bytes()
        with tarfile.open(src / m["minari_tarball"]) as tar:
            for member in tar.getmembers():
                minari[member.name] = tar.extractfile(member).read()
    return d4rl, minari


def assert_complete(src, d4rl, minari):
    want_d4rl, want_minari = expected_files(src)
    assert files(d4rl) == want_d4rl
    assert files(minari) == want_minari  # and no staging folder left
    assert not (d4rl / STAGING).exists() and not (minari / STAGING).exists()


def test_install_puts_every_dataset_in_place(shipped, caches, capsys):
    assert main(["datasets", "install", str(shipped)]) == 0
    assert capsys.readouterr().out.count("installed hopper-") == 3
    assert_complete(shipped, *caches)
    ds = load_dataset("d4rl:hopper-b-dmm-v0")
    assert ds.env_id == "Hopper-v5" and float(ds.episodes[0]["observations"][0, 0]) == 1.0
    # Installing again replaces each dataset whole, with the same result.
    assert main(["datasets", "install", str(shipped)]) == 0
    assert_complete(shipped, *caches)


@pytest.mark.parametrize("damage", ["changed", "missing"])
def test_a_damaged_third_file_installs_nothing(damage, shipped, caches, capsys):
    bad = shipped / "hopper-c-minari.tar.xz"
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
