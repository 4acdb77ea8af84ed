"""Torch dataset over the preprocessed training cache (float16 .npy per case, memory-mapped)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from prdit.errors import MissingInputError, PrditError


class CacheFileError(PrditError, ValueError):
    """A training cache file is empty, truncated or of the wrong shape; the message names it."""


def case_ids(split_file: str | Path, dataset: str) -> list[str]:
    """Case ids listed in `split_file` (data/splits/<dataset>/<split>.txt); `dataset` names it in errors."""
    path = Path(split_file)
    if not path.is_file():
        raise MissingInputError(f"{path}: split file not found (run `prdit split --dataset {dataset}`)")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


class VolumeDataset(Dataset):
    """Items: float16 tensors [1, S, S, S] in [-1, 1], as cached.

    float16 halves the loader's host and pinned memory and the host-to-GPU copy; the training step
    converts on the device (prdit.train.data.HOST_DTYPE), exactly: every float16 is a float32.
    The cases are those `split_file` lists, each `folder`/<case>.npy; `dataset` and `split` name them in errors.
    """

    def __init__(
        self, folder: str | Path, split_file: str | Path, size: int, dataset: str, split: str
    ) -> None:
        self.folder = Path(folder)
        self.cases = case_ids(split_file, dataset)
        self.dataset = dataset
        self.size = size
        missing = [c for c in self.cases if not (self.folder / f"{c}.npy").is_file()]
        if missing:
            raise MissingInputError(
                f"{self.folder}: no cache for {len(missing)} case(s) of split {split!r}, "
                f"e.g. {missing[0]}.npy (run `prdit preprocess --dataset {dataset}`)"
            )
        for case in self.cases:  # headers only (memory-mapped): a broken file fails here, before training
            self._open(self.folder / f"{case}.npy")

    def _open(self, path: Path) -> np.ndarray:
        """The memory-mapped cache of one case; CacheFileError naming the file if unusable."""
        try:
            volume = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise CacheFileError(
                f"{path}: unreadable training cache ({type(exc).__name__}: {exc}); "
                f"delete it and run `prdit preprocess --dataset {self.dataset}`"
            ) from None
        if volume.shape != (self.size,) * 3:
            raise CacheFileError(
                f"{path}: shape {volume.shape}, expected {(self.size,) * 3}; "
                f"delete it and run `prdit preprocess --dataset {self.dataset}`"
            )
        return volume

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> torch.Tensor:
        volume = self._open(self.folder / f"{self.cases[index]}.npy")
        # a writable copy, not a view of the read-only map
        return torch.from_numpy(np.array(volume, dtype=np.float16))[None]
