"""The training loader refuses a broken cache file before training starts, naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from prdit import paths
from prdit.data.dataset import CacheFileError, VolumeDataset
from prdit.errors import MissingInputError, PrditError


def _cache(root: Path, cases: dict[str, bytes | np.ndarray]) -> None:
    (root / "data/splits/d").mkdir(parents=True)
    (root / "data/splits/d/train.txt").write_text("".join(f"{c}\n" for c in cases))
    folder = root / "data/processed/d/8"
    folder.mkdir(parents=True)
    for case, content in cases.items():
        if isinstance(content, bytes):
            (folder / f"{case}.npy").write_bytes(content)
        else:
            np.save(folder / f"{case}.npy", content)


def _dataset(root: Path) -> VolumeDataset:
    """The train split of dataset "d" at 8^3 under `root`, laid out as the project lays it out."""
    return VolumeDataset(root / paths.processed("d", 8), root / paths.splits("d", "train"), 8, "d", "train")


def test_good_cache_loads(tmp_path):
    _cache(tmp_path, {"a": np.zeros((8, 8, 8), np.float16)})
    x = _dataset(tmp_path)[0]
    assert tuple(x.shape) == (1, 8, 8, 8)


@pytest.mark.parametrize(
    "content, words",
    [
        (b"", "unreadable training cache (EOFError"),
        (None, "unreadable training cache (ValueError"),  # truncated: header says more than the file holds
        (np.zeros((8, 8, 4), np.float16), "shape (8, 8, 4), expected (8, 8, 8)"),
    ],
)
def test_broken_cache_file_is_named_at_construction(tmp_path, content, words):
    if content is None:
        buf = tmp_path / "full.npy"
        np.save(buf, np.zeros((8, 8, 8), np.float16))
        content = buf.read_bytes()[:-100]
    _cache(tmp_path, {"a": np.zeros((8, 8, 8), np.float16), "b": content})
    with pytest.raises(CacheFileError) as info:
        _dataset(tmp_path)
    message = str(info.value)
    assert isinstance(info.value, PrditError) and "data/processed/d/8/b.npy" in message and words in message
    assert "prdit preprocess --dataset d" in message


def test_missing_split_is_a_prdit_error(tmp_path):
    with pytest.raises(MissingInputError, match="split file not found"):
        _dataset(tmp_path)
