"""The PRDiT paper code's preprocessing, recipe for recipe (`preprocess.mode: reference`).

Facts from the reference implementation (github Fredy-Zhang/PRDiT), written afresh here:

LIDC-IDRI (scripts/preproc_lidc_idri.py, datasets/lidc.py), on the stored voxel array:
  1. cubic-spline resampling (scipy `zoom`, order 3, mode 'nearest', no anti-aliasing) by the factors
     spacing / 1 mm, so the output has round(n * spacing) voxels per axis;
  2. a centre crop to 256^3 at the integer offset (n - 256) // 2; a case under 256 voxels (mm) on any
     axis cannot be cropped and is skipped;
  3. HU below -1000 set to -1000, then a clip to [-1000, the cropped cube's 0.999 quantile];
  4. min-max to [0, 1] per volume; smaller sizes by 2x average pooling (AvgPool3d); then 2x - 1.
RAD-ChestCT (scripts/preproc_rad_chestct.py, datasets/rad_chest.py): HU clipped to [-1000, 1000], a
centre crop to 256^3 at the native 0.8 mm (a volume under 256 voxels on any axis is skipped), a clip at
the cube's 0.995 quantile, min-max to [0, 1], smaller sizes by 2x average pooling. The range it ends in is
`preprocess.reference_range` (see docs/reproducing.md: the reference loader as run leaves RAD in [0, 1]).

Every axis is treated alike, so working on our [z, y, x] arrays gives the reference's (x, y, z) result
transposed.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from prdit.errors import PrditError

CROP = 256  # voxels per side of the reference cube
LIDC_SPACING_MM = 1.0
LIDC_FLOOR_HU = -1000.0
LIDC_QUANTILE = 0.999
RAD_WINDOW = (-1000.0, 1000.0)
RAD_QUANTILE = 0.995


LIDC = "lidc"
RAD_CHESTCT = "rad-chestct"
AUTO_RECIPE = {"dicom": LIDC, "nifti": LIDC, "npz": RAD_CHESTCT}  # `recipe: auto`: by format, as before


def recipe_of(source) -> str:
    """The recipe of a dataset (sources.<name>.recipe, a config.Source): the dataset decides, the file
    format only under `recipe: auto` (npz: RAD-ChestCT, DICOM / NIfTI: LIDC-IDRI)."""
    chosen = getattr(source, "recipe", "auto") or "auto"
    return AUTO_RECIPE[source.format] if chosen == "auto" else chosen


class ReferenceSkip(PrditError, ValueError):
    """The reference recipe skips this case (e.g. it is smaller than the 256^3 crop)."""


def zoom_shape(shape: tuple[int, ...], spacing_zyx: tuple[float, ...]) -> tuple[int, ...]:
    """Shape scipy's `zoom` gives for factors spacing / 1 mm (Python's round, as scipy uses)."""
    return tuple(int(round(n * (s / LIDC_SPACING_MM))) for n, s in zip(shape, spacing_zyx))


def check_croppable(shape: tuple[int, ...], what: str, unit: str) -> None:
    """Raise ReferenceSkip if any axis is shorter than the 256-voxel crop."""
    short = [(ax, n) for ax, n in zip("zyx", shape) if n < CROP]
    if short:
        ax, n = short[0]
        raise ReferenceSkip(
            f"reference recipe skips cases under {CROP} {unit} on any axis: {what} {ax} is {n} {unit}"
        )


def centre_crop(volume: np.ndarray, size: int = CROP) -> np.ndarray:
    """The size^3 centre of a volume at integer offsets (n - size) // 2 (the volume must be large enough)."""
    starts = [(n - size) // 2 for n in volume.shape]
    return volume[tuple(slice(s, s + size) for s in starts)]


def min_max(hu: np.ndarray) -> np.ndarray:
    """Per-volume min-max to [0, 1] (float64, as the reference computes it)."""
    lo, hi = float(hu.min()), float(hu.max())
    if hi <= lo:
        raise ReferenceSkip(f"constant volume after the reference clipping (value {lo})")
    return (hu - lo) / (hi - lo)


def lidc_unit_cube(hu_zyx: np.ndarray, spacing_zyx: tuple[float, float, float]) -> np.ndarray:
    """The reference LIDC cube in [0, 1] (float64, 256^3 at ~1 mm) from a HU [z, y, x] volume."""
    check_croppable(zoom_shape(hu_zyx.shape, spacing_zyx), "resampled to 1 mm, axis", "mm")
    factors = [s / LIDC_SPACING_MM for s in spacing_zyx]
    resampled = ndimage.zoom(np.asarray(hu_zyx, np.float64), factors, order=3, mode="nearest")
    cube = np.array(centre_crop(resampled), dtype=np.float64)
    del resampled
    cube[cube < LIDC_FLOOR_HU] = LIDC_FLOOR_HU
    cube = np.clip(cube, LIDC_FLOOR_HU, np.quantile(cube, LIDC_QUANTILE))
    return min_max(cube)


def rad_unit_cube(hu_zyx: np.ndarray) -> np.ndarray:
    """The reference RAD-ChestCT cube in [0, 1] (float64, 256^3 at the native spacing)."""
    check_croppable(hu_zyx.shape, "native axis", "voxels")
    cube = np.clip(np.asarray(centre_crop(hu_zyx), np.float32), *RAD_WINDOW)
    cube = np.clip(cube, RAD_WINDOW[0], np.quantile(cube, RAD_QUANTILE))
    return min_max(cube.astype(np.float64))


def pooled(unit: np.ndarray, sizes: list[int], out_range: tuple[float, float]) -> dict[int, np.ndarray]:
    """{size: float32 cube}: 2^k average pools of the 256^3 [0, 1] cube, mapped affinely onto out_range."""
    lo, hi = out_range
    out: dict[int, np.ndarray] = {}
    v = unit
    for size in sorted(sizes, reverse=True):
        factor = CROP // size
        if factor * size != CROP or factor & (factor - 1):
            raise ValueError(f"reference mode needs sizes that divide {CROP} by a power of two, got {size}")
        while v.shape[0] > size:
            v = avg_pool2(v)
        out[size] = (v * (hi - lo) + lo).astype(np.float32)
    return out


def avg_pool2(volume: np.ndarray) -> np.ndarray:
    """2x average pooling (AvgPool3d(2)) of a [z, y, x] volume with even sides, in its float dtype.

    The one home of this pooling: the reference's smaller sizes and preprocess's base size from highres
    (AvgPool3d(4) equals two of these). x * 0.125 is exactly x / 8, so both callers' results are unchanged."""
    v = volume[0::2] + volume[1::2]
    v = v[:, 0::2] + v[:, 1::2]
    v = v[:, :, 0::2] + v[:, :, 1::2]
    v *= v.dtype.type(0.125)
    return v
