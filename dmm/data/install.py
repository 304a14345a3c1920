"""`dmm datasets install DIR`: shipped datasets into the D4RL cache and the Minari store.

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

import hashlib
import json
import os
import shutil
import tarfile
from pathlib import Path

STAGING = ".dmm-install"
RECORD = "install.json"
MANIFEST_KEYS = ("minari_id", "minari_tarball", "minari_sha256", "hdf5", "hdf5_sha256")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
        for key, digest in (("hdf5", "hdf5_sha256"), ("minari_tarball", "minari_sha256")):
            path = Path(src) / entry[key]
            if not path.is_file():
                raise FileNotFoundError(f"{path}: listed in MANIFEST.json but missing; restore "
                                        f"it (e.g. git checkout -- {path}); nothing was installed")
            if sha256(path) != entry[digest]:
                raise ValueError(f"{path}: sha256 differs from MANIFEST.json (damaged or changed); "
                                 f"restore it (e.g. git checkout -- {path}); nothing was installed")


def install_shipped(src: Path, d4rl_dir: Path, minari_dir: Path) -> list[str]:
    """Verify every file of src/MANIFEST.json, then install its datasets one at a time (HDF5
    files into d4rl_dir, Minari datasets into the store minari_dir). Returns their names."""
    src = Path(src).resolve()
    manifest = read_manifest(src)
    verify(src, manifest)
    for name, entry in manifest.items():
        _install_one(src, name, entry, Path(d4rl_dir), Path(minari_dir))
    return list(manifest)


def _stage(root: Path, name: str, record: dict) -> Path:
    stage = root / STAGING / name  # one per cache and dataset, even when both caches are one
    if stage.exists():  # left by an interrupted install: redone from the start
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    (stage / RECORD).write_text(json.dumps(record, indent=1))
    return stage


def _install_one(src: Path, name: str, entry: dict, d4rl_dir: Path, minari_dir: Path) -> None:
    h5_name, dataset_id = Path(entry["hdf5"]).name, entry["minari_id"]
    record = {"dataset": name, "source": str(src), "hdf5": h5_name, "minari_id": dataset_id}
    d4rl_stage = _stage(d4rl_dir, f"{name}.hdf5", record)
    minari_stage = _stage(minari_dir, f"{name}.minari", record)
    shutil.copyfile(src / entry["hdf5"], d4rl_stage / h5_name)
    store = minari_stage / "store"
    with tarfile.open(src / entry["minari_tarball"], "r:xz") as tar:
        tar.extractall(store, filter="data")
    if not (store / dataset_id / "data").is_dir():
        raise ValueError(f"{src / entry['minari_tarball']}: holds no Minari dataset "
                         f"{dataset_id}; restore it (e.g. git checkout -- {src})")
    # In place: the namespace files (each an atomic replace), then the dataset folder as one
    # rename (an older copy moved aside first), then the HDF5 file.
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
    os.replace(d4rl_stage / h5_name, d4rl_dir / h5_name)
    for stage in (minari_stage, d4rl_stage):
        (stage / RECORD).unlink()  # from here on the folder is only garbage, not a pending install
        shutil.rmtree(stage)
        _remove_if_empty(stage.parent)


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def interrupted_installs(root: Path) -> list[dict]:
    """The records of the installs into the cache `root` that a kill interrupted."""
    out = []
    for record in sorted((Path(root) / STAGING).glob(f"*/{RECORD}")):
        try:
            out.append({**json.loads(record.read_text()), "staging": str(record.parent)})
        except ValueError:  # killed while writing the record: nothing was moved yet
            continue
    return out


def interrupted_install(root: Path, key: str, value: str) -> dict | None:
    """The interrupted install into `root` whose record has record[key] == value, if any."""
    return next((r for r in interrupted_installs(root) if r.get(key) == value), None)


def repair_hint(record: dict) -> str:
    return (f"its `dmm datasets install` was interrupted (partial copy in {record['staging']}); "
            f"repair it with: dmm datasets install {record['source']}")
