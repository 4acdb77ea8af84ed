"""Tiling and texture diagnostics of volumes in model space ([-1, 1]): seam ratio and texture.

Seam ratio: the model predicts each stride^3 cell of the output from one patch token, and un-patchifies
the cells side by side starting at voxel 0 (prdit/model/patches.py: unpatchify; the reflection padding
is on the input tokens only). A tiled output therefore steps between voxels stride*k - 1 and stride*k.
The ratio is the mean absolute first difference across those boundaries over the mean elsewhere,
pooled over all three axes: 1.0 means no visible tiling. For an edge that is a multiple of the stride
the boundary set is unchanged by flipping or permuting axes, so the on-disk orientation does not matter.

Texture: the mean absolute second difference (x[i+1] - 2 x[i] + x[i-1]), pooled over the three axes.
Its ratio generated / real is above 1 for noisy samples and below 1 for over-smoothed ones.

Per volume, `volume_stats` gives (boundary step, other step, texture); a set's seam ratio is the mean
boundary step over the mean other step of its volumes (for volumes of one shape, the pooled ratio).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from prdit.model.arch import STRIDE  # the token grid the seams are measured on: the models' own

STATS = ("seam_boundary_step", "seam_other_step", "texture")


def _as_volume(vol: np.ndarray) -> np.ndarray:
    v = np.asarray(vol, dtype=np.float32)
    if v.ndim != 3:
        raise ValueError(f"expected a [D, H, W] volume, got shape {v.shape}")
    return v


def step_means(vol: np.ndarray, stride: int = STRIDE) -> tuple[float, float]:
    """(mean |step| across token boundaries, mean |step| elsewhere), pooled over the three axes."""
    v = _as_volume(vol)
    if stride < 2:
        raise ValueError(f"stride must be >= 2, got {stride}")
    if min(v.shape) <= stride:
        raise ValueError(f"volume {v.shape} has no token boundary at stride {stride} on every axis")
    b_sum = o_sum = 0.0
    b_n = o_n = 0
    for axis in range(3):
        d = np.abs(np.diff(np.moveaxis(v, axis, 0), axis=0))  # d[i] = x[i+1] - x[i]
        seam = np.zeros(d.shape[0], bool)
        seam[stride - 1 :: stride] = True  # the step from voxel stride*k - 1 to voxel stride*k
        b, o = d[seam], d[~seam]
        b_sum += float(b.sum(dtype=np.float64))
        o_sum += float(o.sum(dtype=np.float64))
        b_n, o_n = b_n + b.size, o_n + o.size
    return b_sum / b_n, o_sum / o_n


def texture(vol: np.ndarray) -> float:
    """Mean |second difference| of a volume, pooled over the three axes."""
    v = _as_volume(vol)
    if min(v.shape) < 3:
        raise ValueError(f"volume {v.shape} is too small for a second difference")
    total, n = 0.0, 0
    for axis in range(3):
        d2 = np.abs(np.diff(v, n=2, axis=axis))
        total += float(d2.sum(dtype=np.float64))
        n += d2.size
    return total / n


def volume_stats(vol: np.ndarray, stride: int = STRIDE) -> np.ndarray:
    """(boundary step, other step, texture) of one volume as float64 (see STATS)."""
    b, o = step_means(vol, stride)
    return np.array([b, o, texture(vol)], dtype=np.float64)


def seam_ratio_of(stats: np.ndarray) -> float | None:
    """Seam ratio of a set from its per-volume stats (N, 3); None for an empty or perfectly flat set."""
    s = np.asarray(stats, np.float64).reshape(-1, len(STATS))
    s = s[np.isfinite(s).all(1)]
    if not len(s) or not s[:, 1].mean() > 0:
        return None
    return float(s[:, 0].mean() / s[:, 1].mean())


def texture_of(stats: np.ndarray) -> float | None:
    """Mean texture of a set from its per-volume stats (N, 3); None when empty."""
    s = np.asarray(stats, np.float64).reshape(-1, len(STATS))
    s = s[np.isfinite(s).all(1)]
    return float(s[:, 2].mean()) if len(s) else None


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or not b > 0 else float(a / b)


def stats_of(volumes: Iterable[np.ndarray], stride: int = STRIDE) -> np.ndarray:
    """Per-volume stats (N, 3) of any volumes in model space."""
    rows = [volume_stats(v, stride) for v in volumes]
    return np.stack(rows) if rows else np.zeros((0, len(STATS)))


def diagnostics(volumes: Iterable[np.ndarray], stride: int = STRIDE) -> dict[str, float | int | None]:
    """Seam ratio and texture of a list of volumes in model space ([-1, 1])."""
    s = stats_of(volumes, stride)
    return {"seam_ratio": seam_ratio_of(s), "texture": texture_of(s), "n": len(s), "stride": stride}


def compare(
    generated: Sequence[np.ndarray] | np.ndarray,
    real: Sequence[np.ndarray] | np.ndarray,
    heldout: Sequence[np.ndarray] | np.ndarray | None = None,
    stride: int = STRIDE,
    precomputed: bool = False,
) -> dict[str, float | int | None]:
    """The metrics-file keys: generated against real (the FID reference set), held-out real as the floor.

    With `precomputed`, the three arguments are per-volume stats arrays (N, 3) rather than volumes.
    seam_ratio / seam_ratio_real / seam_ratio_heldout: each set's own seam ratio; texture_generated /
    texture_real / texture_heldout: mean |second difference|; texture_ratio = generated / real and
    texture_ratio_floor = held-out / real (the real-vs-real floor, as for FID).
    """
    conv = (
        (lambda x: np.asarray(x, np.float64).reshape(-1, len(STATS)))
        if precomputed
        else (lambda x: stats_of(x, stride))
    )
    g, r = conv(generated), conv(real)
    h = conv(heldout) if heldout is not None else np.zeros((0, len(STATS)))
    tg, tr, th = texture_of(g), texture_of(r), texture_of(h)
    return {
        "seam_ratio": seam_ratio_of(g),
        "seam_ratio_real": seam_ratio_of(r),
        "seam_ratio_heldout": seam_ratio_of(h),
        "seam_stride": stride,
        "texture_generated": tg,
        "texture_real": tr,
        "texture_heldout": th,
        "texture_ratio": ratio(tg, tr),
        "texture_ratio_floor": ratio(th, tr),
    }
