"""Maximum mean discrepancy with an RBF kernel whose bandwidth comes from the real features.

`reference` reproduces the PRDiT paper's evaluation exactly, so numbers compare with the paper:
gamma = 1 / (2 * median of all N^2 squared distances among the real features, zero diagonal included,
lower middle value for an even count as torch.median takes it); K(u, v) = exp(-gamma |u - v|^2);
MMD^2 = mean K_xx + mean K_yy - 2 mean K_xy over all entries (a V-statistic, biased upwards);
reported as sqrt(max(MMD^2, 0)). `unbiased` is the U-statistic of MMD^2 (diagonals left out) with the
same bandwidth; it is returned as MMD^2 itself and may be slightly negative.
"""

from __future__ import annotations

import numpy as np

ESTIMATORS = ("reference", "unbiased")


def _as_features(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"{name}: expected features of shape (N, F) with N >= 1, got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: features contain NaN or inf")
    return x


def sq_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pairwise squared Euclidean distances (N, M), float64, never negative."""
    d = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.T
    return np.clip(d, 0, None)


def median_gamma(real: np.ndarray) -> float:
    """The reference bandwidth 1 / (2 * lower median of all N^2 squared distances among `real`)."""
    x = _as_features(real, "real")
    d = sq_distances(x, x)
    np.fill_diagonal(d, 0.0)
    flat = np.sort(d, axis=None)
    med = flat[(flat.size - 1) // 2]
    if not med > 0:
        raise ValueError(
            f"MMD bandwidth undefined: the median squared distance among {x.shape[0]} real feature "
            "vectors is 0 (needs at least 3 distinct vectors)"
        )
    return float(1.0 / (2.0 * med))


def mmd2(real: np.ndarray, fake: np.ndarray, gamma: float, estimator: str = "reference") -> float:
    """MMD^2 at a given bandwidth: the V-statistic (`reference`) or the U-statistic (`unbiased`)."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown MMD estimator {estimator!r}; expected one of {', '.join(ESTIMATORS)}")
    x, y = _as_features(real, "real"), _as_features(fake, "fake")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature sizes differ: real {x.shape[1]}, fake {y.shape[1]}")
    kxx, kyy = np.exp(-gamma * sq_distances(x, x)), np.exp(-gamma * sq_distances(y, y))
    kxy = np.exp(-gamma * sq_distances(x, y))
    if estimator == "reference":
        return float(kxx.mean() + kyy.mean() - 2 * kxy.mean())
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2:
        raise ValueError(f"the unbiased MMD needs at least 2 vectors per set, got {n} real and {m} fake")
    off = lambda k, s: (k.sum() - np.trace(k)) / (s * (s - 1))  # noqa: E731
    return float(off(kxx, n) + off(kyy, m) - 2 * kxy.mean())


def mmd(
    real: np.ndarray, fake: np.ndarray, estimator: str = "reference", gamma: float | None = None
) -> float:
    """`reference`: sqrt(max(MMD^2, 0)) as in the paper; `unbiased`: the U-statistic MMD^2 (signed)."""
    g = median_gamma(real) if gamma is None else gamma
    value = mmd2(real, fake, g, estimator)
    return float(np.sqrt(max(value, 0.0))) if estimator == "reference" else value
