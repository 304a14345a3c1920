"""CSV output shared by the benchmark scripts."""
import csv
from pathlib import Path


def write_rows(rows: list[dict], path) -> None:
    """Write dict rows (one column per key of the first row) to path, creating its folder."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {path}")
