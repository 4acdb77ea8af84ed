"""Torch dataset over the preprocessed training cache (float16 .npy per case, memory-mapped)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from prdit.errors import PrditError


class DataFileError(PrditError, ValueError):
    """A training cache file that cannot be read or has the wrong shape: one line naming it."""


def case_ids(dataset: str, split: str, root: str | Path = ".") -> list[str]:
    """Case ids listed in data/splits/<dataset>/<split>.txt."""
    path = Path(root) / "data" / "splits" / dataset / f"{split}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: split file not found (run `prdit split --dataset {dataset}`)")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


class VolumeDataset(Dataset):
    """Items: float32 tensors [1, S, S, S] in [-1, 1]; optional random left-right flip."""

    def __init__(
        self, dataset: str, size: int, split: str, root: str | Path = ".", flip: bool = False
    ) -> None:
        self.folder = Path(root) / "data" / "processed" / dataset / str(size)
        self.cases = case_ids(dataset, split, root)
        self.size = size
        self.flip = flip
        missing = [c for c in self.cases if not (self.folder / f"{c}.npy").is_file()]
        if missing:
            raise FileNotFoundError(
                f"{self.folder}: no cache for {len(missing)} case(s) of split {split!r}, "
                f"e.g. {missing[0]}.npy (run `prdit preprocess --dataset {dataset}`)"
            )
        for case in self.cases:  # header and size only (memory-mapped): fail before any checkpoint is touched
            self._open(self.folder / f"{case}.npy")

    def _open(self, path: Path) -> np.ndarray:
        """The memory-mapped volume at `path`, or a DataFileError naming it."""
        try:
            volume = np.load(path, mmap_mode="r")
        except Exception as exc:  # noqa: BLE001 - empty, truncated or foreign: one line naming the file
            raise DataFileError(
                f"{path}: unreadable training cache ({type(exc).__name__}: {exc}); "
                "delete it and re-run `prdit preprocess`"
            ) from None
        if volume.shape != (self.size,) * 3:
            raise DataFileError(f"{path}: shape {volume.shape}, expected {(self.size,) * 3}")
        return volume

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> torch.Tensor:
        path = self.folder / f"{self.cases[index]}.npy"
        volume = self._open(path)
        x = torch.from_numpy(np.asarray(volume, dtype=np.float32))[None]
        if self.flip and torch.rand(()) < 0.5:
            x = torch.flip(x, dims=[-1])
        return x
