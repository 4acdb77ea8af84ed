"""Fixed synthetic CT volumes for the paper-protocol tests (the reference recipe was run on exactly these)."""

from __future__ import annotations

import numpy as np

# LIDC-like NIfTI: nibabel (x, y, z) shape and voxel sizes; resampled to 1 mm it is 260 x 262 x 262 mm,
# so the centre crop has odd and even offsets
LIDC_SHAPE_XYZ = (137, 131, 105)
LIDC_SPACING_XYZ = (1.9, 2.0, 2.5)
RAD_SHAPE_ZYX = (261, 258, 257)  # RAD-ChestCT-like .npz `ct` array at the native 0.8 mm


def chest_zyx(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """int16 HU [z, y, x]: air, a noisy soft-tissue body, two lungs, bright bone spots (above the quantile)."""
    rng = np.random.default_rng(seed)
    z, y, x = (np.linspace(-1, 1, n)[:, None, None] for n in shape)
    y, x = y.reshape(1, -1, 1), x.reshape(1, 1, -1)
    hu = np.full(shape, -1000.0)
    body = (x / 0.85) ** 2 + (y / 0.7) ** 2 < 1
    hu[np.broadcast_to(body, shape)] = 40.0
    for cx in (-0.4, 0.4):
        lung = ((x - cx) / 0.3) ** 2 + (y / 0.45) ** 2 + (z / 0.8) ** 2 < 1
        hu[lung] = -850.0
    hu += rng.normal(0.0, 30.0, shape)
    spots = rng.random(shape) < 0.002
    hu[spots] = rng.uniform(1200.0, 2500.0, int(spots.sum()))
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)


def lidc_zyx() -> np.ndarray:
    return chest_zyx(LIDC_SHAPE_XYZ[::-1], seed=16)


def rad_zyx() -> np.ndarray:
    return np.clip(chest_zyx(RAD_SHAPE_ZYX, seed=17), -1000, 1000).astype(np.int16)


def probe_indices(size: int, n: int = 1000) -> np.ndarray:
    """Fixed voxel indices (n, 3) at which the fixture records values."""
    return np.random.default_rng(size).integers(0, size, (n, 3))
