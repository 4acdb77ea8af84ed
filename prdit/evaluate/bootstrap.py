"""Percentile bootstrap intervals for two-sample statistics (FID, MMD) on feature sets."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

log = logging.getLogger(__name__)


def bootstrap_ci(
    stat: Callable[[np.ndarray, np.ndarray], float],
    real: np.ndarray,
    fake: np.ndarray,
    n_boot: int,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float | int] | None:
    """Resample both sets with replacement `n_boot` times; return {low, high, level, n} or None.

    Replicates whose statistic is undefined (e.g. a degenerate resample) are skipped and counted out of n.
    """
    if n_boot <= 0:
        return None
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        i = rng.integers(0, len(real), len(real))
        j = rng.integers(0, len(fake), len(fake))
        try:
            values.append(stat(real[i], fake[j]))
        except ValueError:
            continue
    if len(values) < max(2, n_boot // 2):
        log.warning("bootstrap: only %d of %d replicates defined; no interval", len(values), n_boot)
        return None
    alpha = (1 - level) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return {"low": float(low), "high": float(high), "level": level, "n": len(values)}
