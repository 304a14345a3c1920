"""`dmm datasets install DIR`: shipped datasets into the D4RL cache and the Minari store.

A shipped dataset is one D4RL-layout HDF5 file made by `dmm datasets make`, listed in
DIR/MANIFEST.json ({name: {"hdf5": path in DIR, "hdf5_sha256", "minari_id", ...}}; other keys
are information, ignored here). The HDF5 file is copied into the D4RL cache and its Minari
dataset is made from it (dmm.data.to_minari: the file's steps, plus the last observation of each
episode from a replay), so the repository holds each dataset once.

Every file of DIR/MANIFEST.json is checked (present, sha256) before anything is written. Then
each dataset is installed on its own: its files are put together in a staging folder inside
each cache (`<cache>/.dmm-install/<dataset>.<hdf5|minari>/`: the same file system, so the
renames that put them in place are atomic; hidden, so minari does not list it), then renamed
into place, the Minari dataset folder as a whole. A dataset is therefore either installed completely or not
replaced at all. A kill leaves the staging folder with its record (install.json: the dataset,
its files, the source folder); `interrupted_install` finds it, so the loaders and `dmm datasets`
can name it with the command that repairs it, and the next install redoes it.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from dmm.optional import require

from . import to_minari
from .staging import (RECORD, STAGING, interrupted_install, interrupted_installs,  # noqa: F401
                      repair_hint, sha256)  # (the command line reads these through this module)

MANIFEST_KEYS = ("minari_id", "hdf5", "hdf5_sha256")  # what install reads; other keys: information


def read_manifest(src: Path) -> dict:
    path = Path(src) / "MANIFEST.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; `dmm datasets install` takes a folder "
                                "holding MANIFEST.json, e.g. datasets/hopper")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); restore it, e.g. git checkout -- {path}")
    for name, entry in manifest.items():
        missing = [k for k in MANIFEST_KEYS if k not in entry]
        if missing:
            raise ValueError(f"{path}: entry {name!r} lacks {', '.join(missing)}; restore it, "
                             f"e.g. git checkout -- {path}")
    return manifest


def verify(src: Path, manifest: dict) -> None:
    """Every file the manifest lists is there with its sha256; raises naming the first that is
    not (nothing has been written yet)."""
    for entry in manifest.values():
        path = Path(src) / entry["hdf5"]
        if not path.is_file():
            raise FileNotFoundError(f"{path}: listed in MANIFEST.json but missing; restore "
                                    f"it (e.g. git checkout -- {path}); nothing was installed")
        if sha256(path) != entry["hdf5_sha256"]:
            raise ValueError(f"{path}: sha256 differs from MANIFEST.json (damaged or changed); "
                             f"restore it (e.g. git checkout -- {path}); nothing was installed")


def install_shipped(src: Path, d4rl_dir: Path, minari_dir: Path, minari: bool = True) -> list[str]:
    """Verify every file of src/MANIFEST.json, then install its datasets one at a time (HDF5
    files into d4rl_dir, their Minari datasets made into the store minari_dir unless `minari` is
    False). Returns their names."""
    src = Path(src).resolve()
    manifest = read_manifest(src)
    verify(src, manifest)
    if minari:
        require(["mujoco", "minari"], "making the Minari datasets of the shipped HDF5 files",
                " (or install the HDF5 files only: --no-minari)")
    for name, entry in manifest.items():
        _install_one(src, name, entry, Path(d4rl_dir), Path(minari_dir) if minari else None)
    return list(manifest)


def _stage(root: Path, name: str, record: dict) -> Path:
    stage = root / STAGING / name  # one per cache and dataset, even when both caches are one
    if stage.exists():  # left by an interrupted install: redone from the start
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    (stage / RECORD).write_text(json.dumps(record, indent=1))
    return stage


def _install_one(src: Path, name: str, entry: dict, d4rl_dir: Path, minari_dir: Path | None
                 ) -> None:
    h5_name, dataset_id = Path(entry["hdf5"]).name, entry["minari_id"]
    record = {"dataset": name, "source": str(src), "hdf5": h5_name, "minari_id": dataset_id}
    d4rl_stage = _stage(d4rl_dir, f"{name}.hdf5", record)
    stages = [d4rl_stage]
    try:
        shutil.copyfile(src / entry["hdf5"], d4rl_stage / h5_name)
        if minari_dir is not None:
            stages.append(_stage(minari_dir, f"{name}.minari", record))
            to_minari.make_minari(d4rl_stage / h5_name, dataset_id, stages[1] / "store",
                                  source=str(src / entry["hdf5"]))
    except Exception:  # an error (not a kill): nothing half-made is left to repair
        for stage in stages:
            shutil.rmtree(stage)
            _remove_if_empty(stage.parent)
        raise
    if minari_dir is not None:
        _move_minari_into_place(stages[1], dataset_id, minari_dir)
    os.replace(d4rl_stage / h5_name, d4rl_dir / h5_name)
    for stage in stages:
        (stage / RECORD).unlink()  # from here on the folder is only garbage, not a pending install
        shutil.rmtree(stage)
        _remove_if_empty(stage.parent)


def _move_minari_into_place(minari_stage: Path, dataset_id: str, minari_dir: Path) -> None:
    """The namespace files (each an atomic replace), then the dataset folder as one rename (an
    older copy moved aside first); the HDF5 file follows."""
    store = minari_stage / "store"
    for f in sorted(store.rglob("*")):
        if f.is_file() and (store / dataset_id) not in f.parents:
            dest = minari_dir / f.relative_to(store)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(f, dest)
    target = minari_dir / dataset_id
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        os.replace(target, minari_stage / "previous")
    os.replace(store / dataset_id, target)


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass
