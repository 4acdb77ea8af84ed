"""PNG montages of volumes (axial, coronal, sagittal mid-slices) for MLflow, reports and QC."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from prdit.io import atomic_path

MONTAGE_VOLUMES = 4  # volumes in a montage of samples or of an evaluation (real and generated rows)


def mid_slices(volume: np.ndarray) -> list[np.ndarray]:
    """Axial, coronal and sagittal mid-slices of a [z, y, x] volume, oriented head up."""
    z, y, x = (s // 2 for s in volume.shape)
    axial = volume[z]
    coronal = volume[::-1, y, :]
    sagittal = volume[::-1, :, x]
    return [axial, coronal, sagittal]


def to_grey(img: np.ndarray, vmin: float, vmax: float, cell: int) -> Image.Image:
    """A 2-D slice as a `cell` x `cell` greyscale image, `vmin` black and `vmax` white."""
    scaled = np.clip((img.astype(np.float32) - vmin) / (vmax - vmin), 0.0, 1.0)
    pil = Image.fromarray((scaled * 255).astype(np.uint8))
    return pil.resize(
        (cell, cell), Image.Resampling.NEAREST if min(img.shape) < cell else Image.Resampling.BILINEAR
    )


def montage(
    volumes: Sequence[np.ndarray],
    path: str | Path,
    titles: Sequence[str] | None = None,
    vmin: float = -1.0,
    vmax: float = 1.0,
    cell: int = 160,
) -> Path:
    """Write a PNG with one row per volume (axial | coronal | sagittal) and return its path."""
    label_h = 14
    rows = len(volumes)
    canvas = Image.new("L", (3 * cell, max(rows, 1) * (cell + label_h)), color=0)
    draw = ImageDraw.Draw(canvas)
    for r, vol in enumerate(volumes):
        top = r * (cell + label_h)
        if titles is not None:
            draw.text((2, top + 1), str(titles[r]), fill=255)
        for c, sl in enumerate(mid_slices(np.asarray(vol))):
            canvas.paste(to_grey(sl, vmin, vmax, cell), (c * cell, top + label_h))
    path = Path(path)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path
