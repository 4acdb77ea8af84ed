"""Provenance of a trained model: a hash of exactly the data it was trained and validated on."""

from __future__ import annotations

import hashlib
from pathlib import Path

from prdit import paths
from prdit.io import sha256_file


def data_hash(dataset: str, size: int, root: Path = Path(".")) -> str:
    """sha256 over the train/val split lists and every processed file of those cases at `size`.

    Format-agnostic: whatever the preprocess stage wrote for a case (NIfTI, training cache) counts.
    """
    digest = hashlib.sha256()
    cases: set[str] = set()
    for split in ("train", "val"):
        path = root / paths.splits(dataset, split)
        if path.exists():
            text = path.read_bytes()
            digest.update(f"{split}:{hashlib.sha256(text).hexdigest()}\n".encode())
            cases.update(line.strip() for line in text.decode().splitlines() if line.strip())
    folder = root / paths.processed(dataset, size)
    for case in sorted(cases):
        for f in sorted(folder.glob(f"{case}.*")):
            if f.is_file():
                digest.update(f"{f.name}:{sha256_file(f)}\n".encode())
    return digest.hexdigest()[:16]
