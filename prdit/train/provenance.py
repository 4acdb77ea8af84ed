"""Provenance of a trained model: a hash of exactly the data it was trained and validated on."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

from prdit.io import sha256_file


def data_hash(splits: Mapping[str, Path], folder: Path) -> str:
    """sha256 over the split lists `splits` ({"train": file, "val": file}, in that order; a missing file
    counts as absent) and every file in `folder` (the processed cubes) of the cases they list.

    Format-agnostic: whatever the preprocess stage wrote for a case (NIfTI, training cache) counts.
    """
    digest = hashlib.sha256()
    cases: set[str] = set()
    for split, path in splits.items():
        if path.exists():
            text = path.read_bytes()
            digest.update(f"{split}:{hashlib.sha256(text).hexdigest()}\n".encode())
            cases.update(line.strip() for line in text.decode().splitlines() if line.strip())
    for case in sorted(cases):
        for f in sorted(folder.glob(f"{case}.*")):
            if f.is_file():
                digest.update(f"{f.name}:{sha256_file(f)}\n".encode())
    return digest.hexdigest()[:16]
