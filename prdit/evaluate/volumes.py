"""Read real and generated volumes into the one input space every metric uses.

Choice (documented in each report): both sets enter the extractor and MS-SSIM as [D, H, W] float32 in
[-1, 1] under the preprocessing window (preprocess.window, default [-1000, 1000] HU), exactly as the
PRDiT reference evaluation feeds its 3D ResNet (volumes stored in [0, 1], mapped by 2x - 1). Real volumes
are read from data/processed (already in this space); generated ones are in HU and are clipped to the
window and scaled by the same linear map the preprocessing uses. MedicalNet itself was trained on
per-volume z-scored input; following the paper instead keeps our numbers comparable with its tables.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from prdit import hu
from prdit.evaluate.texture import STATS
from prdit.io import read_nifti

N_STATS = len(STATS)
GPU_HEADROOM = 0.25  # share of the GPU's memory a VolumeBank leaves free (extractor, MS-SSIM chunks)
THUMB_SIZE = 32  # voxel-space nearest-neighbour search runs on volumes average-pooled to at most 32^3
HIST_BINS = 64


def read_volume(path: Path, size: int, kind: str, window: Sequence[float]) -> np.ndarray:
    """A real (`kind='real'`, [-1, 1]) or generated (`kind='generated'`, HU) cube as [-1, 1] float32."""
    arr, _ = read_nifti(path)
    if arr.shape != (size, size, size):
        raise ValueError(f"{path}: expected a {size}^3 volume, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{path}: contains NaN or inf voxels")
    if kind == "generated":
        return hu.to_unit(arr, window)
    return np.clip(arr, -1.0, 1.0).astype(np.float32)


class VolumeBank(list):
    """Volumes read once per evaluation for MS-SSIM, float32 as read: on the GPU while it has room, else host.

    float32, not float16 or uint8, so every pair scores exactly as the per-pair definition (the files hold
    float32): 8 GiB for 1,000 volumes at 128^3, 64 GiB at 256^3 (a 141 GiB H200 holds them all; on a
    smaller GPU the rest stays in host memory, which the evaluate rule's mem_mb must then allow for).
    """

    def __init__(self, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def append(self, x: np.ndarray) -> None:
        t = torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32))
        if self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            if free - t.nbytes > GPU_HEADROOM * total:
                t = t.to(self.device)
        super().append(t)


def thumbnail(x: np.ndarray, size: int = THUMB_SIZE) -> np.ndarray:
    """Average-pool a cube to at most `size`^3 (the voxel space of the memorization audit)."""
    factor = max(1, x.shape[0] // size)
    if factor == 1:
        return x.astype(np.float32)
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, None]
    return F.avg_pool3d(t, factor)[0, 0].numpy()


def hu_histogram(x: np.ndarray, window: Sequence[float], bins: int = HIST_BINS) -> np.ndarray:
    """Fraction of voxels per HU bin over the window (the volume given in [-1, 1])."""
    counts, _ = np.histogram(hu.to_hu(x, window), bins=bins, range=(float(window[0]), float(window[1])))
    return counts / max(counts.sum(), 1)


def hist_edges(window: Sequence[float], bins: int = HIST_BINS) -> np.ndarray:
    return np.linspace(float(window[0]), float(window[1]), bins + 1)


def sample_paths(folder: Path) -> list[Path]:
    """Generated volumes <i>.nii.gz in numeric order (other names sort after, by name)."""

    def key(p: Path) -> tuple[int, int, str]:
        m = re.fullmatch(r"(\d+)\.nii\.gz", p.name)
        return (0, int(m.group(1)), "") if m else (1, 0, p.name)

    return sorted(folder.glob("*.nii.gz"), key=key)


@dataclass(frozen=True)
class GeneratedSet:
    """What an evaluation scores as generated, wherever it comes from (our samples or a baseline folder).

    `read` turns one of `paths` into the [-1, 1] float32 [z, y, x] cube every metric takes (read_volume
    for our samples, prdit.evaluate.baselines.read_unit for a baseline); `source` is recorded in the
    metrics ("generated": kind, name, path, values, ...) so a comparison can be traced to its inputs.
    A read error that is a prdit.errors.PrditError stops the evaluation; any other skips the file.
    """

    paths: list[Path]
    ids: list[str]
    read: Callable[[Path], np.ndarray]
    source: dict
    ignored: list[str] = field(default_factory=list)  # files in the folder that are not volumes


def samples_set(
    folder: Path,
    size: int,
    window: Sequence[float],
    num_samples: int | None = None,
    source: dict | None = None,
) -> GeneratedSet:
    """Our samples <i>.nii.gz (HU) in `folder`, the first `num_samples`, read by read_volume."""
    vols = sample_paths(folder)[:num_samples]
    return GeneratedSet(
        paths=vols,
        ids=[p.name.removesuffix(".nii.gz") for p in vols],
        read=lambda path: read_volume(path, size, "generated", window),
        source=source or {"kind": "samples", "name": None, "path": str(folder), "values": "hu"},
    )


@dataclass(frozen=True)
class EvalInputs:
    """The files one evaluation of a dataset at one size reads, already resolved by the caller (the stage
    layer, prdit.stages.evaluate, resolves them from the layout); the evaluation builds no path of its own."""

    real: Path  # the real cubes of this dataset and size: <real>/<case>.nii.gz, [-1, 1]
    splits: Mapping[str, Path]  # split name (train, val, test) -> its case list; absent or missing: empty
    feature_cache: Path  # the real-set feature cache file (prdit.evaluate.features), read and rewritten
    samples: Path  # our samples <i>.nii.gz (HU), scored when no generated set is given


@dataclass
class Summary:
    """What the metrics need of a set of volumes (full volumes are not kept in memory)."""

    ids: list[str]
    features: np.ndarray  # (N, 2048) float64
    thumbs: np.ndarray  # (N, t, t, t) float32, [-1, 1]
    hists: np.ndarray  # (N, HIST_BINS) voxel fractions
    stats: np.ndarray | None = (
        None  # (N, 3) seam/texture stats (prdit.evaluate.texture.STATS); NaN if unknown
    )

    def __post_init__(self) -> None:
        if self.stats is None:
            self.stats = np.full((len(self.ids), N_STATS), np.nan)

    def take(self, idx: Sequence[int]) -> Summary:
        idx = list(idx)
        return Summary(
            [self.ids[i] for i in idx], self.features[idx], self.thumbs[idx], self.hists[idx], self.stats[idx]
        )

    @staticmethod
    def concat(parts: Sequence[Summary]) -> Summary:
        parts = [p for p in parts if p.ids]
        if not parts:
            return Summary(
                [],
                np.zeros((0, 2048)),
                np.zeros((0, 1, 1, 1), np.float32),
                np.zeros((0, HIST_BINS)),
                np.zeros((0, N_STATS)),
            )
        return Summary(
            [i for p in parts for i in p.ids],
            np.concatenate([p.features for p in parts]),
            np.concatenate([p.thumbs for p in parts]),
            np.concatenate([p.hists for p in parts]),
            np.concatenate([p.stats for p in parts]),
        )
