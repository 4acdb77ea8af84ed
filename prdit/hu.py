"""HU <-> model space [-1, 1] on the preprocessing window: the one map that real volumes (preprocess),
generated volumes (sample, evaluate), baselines and montages all go through, so they enter the
evaluation identically."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def to_unit(hu: np.ndarray, window: Sequence[float], inplace: bool = False) -> np.ndarray:
    """HU -> [-1, 1] float32: the window mapped linearly, values outside it clipped to the ends.

    `inplace` reuses a float32 `hu` as the output (preprocess's large volumes)."""
    lo, hi = float(window[0]), float(window[1])
    v = np.asarray(hu, dtype=np.float32) if inplace else np.array(hu, dtype=np.float32)
    v -= np.float32(lo)
    v *= np.float32(2.0)  # exact; then one correctly rounded division (a rounded 2 / (hi - lo) would be two)
    v /= np.float32(hi - lo)
    v -= np.float32(1.0)
    return np.clip(v, -1.0, 1.0, out=v)  # the window's ends map to -1 and 1 exactly: clipping after = before


def to_hu(x: np.ndarray, window: Sequence[float]) -> np.ndarray:
    """[-1, 1] -> HU float32 on the window (values outside [-1, 1] clipped first): the inverse of to_unit."""
    lo, hi = float(window[0]), float(window[1])
    return ((np.clip(np.asarray(x, dtype=np.float32), -1.0, 1.0) + 1.0) * 0.5 * (hi - lo) + lo).astype(
        np.float32
    )
