"""What `dmm datasets install` leaves in a cache while it works, and how the loaders and `dmm
datasets` name an install cut short: each dataset is put together in a staging folder
(<cache>/.dmm-install/<dataset>.<hdf5|minari>/) holding a record (install.json: the dataset, its
files, the source folder) until it is in place. Also the sha256 the shipped files are checked by.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

STAGING = ".dmm-install"
RECORD = "install.json"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
