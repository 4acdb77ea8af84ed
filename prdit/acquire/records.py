"""The rows of `<raw>/<dataset>/manifest.csv`: what was downloaded, where, its checksum and status.

One row per series (TCIA), file (Zenodo) or folder (`download: none`), keyed by `series`; every client
builds its rows with `row` so the columns have one home.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from prdit.io import atomic_path

MANIFEST = "manifest.csv"
COLUMNS = ("patient", "study", "series", "path", "files", "bytes", "checksum", "status", "message")


def row(**fields: Any) -> dict[str, str]:
    """A manifest row: the given columns as text, the others empty."""
    unknown = set(fields) - set(COLUMNS)
    if unknown:
        raise KeyError(f"not manifest columns: {', '.join(sorted(unknown))}")
    return {c: str(fields[c]) if c in fields else "" for c in COLUMNS}


def read(path: Path) -> dict[str, dict[str, str]]:
    """Rows of an earlier manifest keyed by `series` (series UID or file key); {} if there is none."""
    if not path.is_file():
        return {}
    with open(path, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("series")]
    return {r["series"]: {c: r.get(c) or "" for c in COLUMNS} for r in rows}


def write(path: Path, rows: dict[str, dict[str, str]]) -> None:
    """Write the rows atomically, sorted by patient, study and key."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for key in sorted(rows, key=lambda k: (rows[k]["patient"], rows[k]["study"], k)):
            writer.writerow(rows[key])
