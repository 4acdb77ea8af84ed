"""Fréchet distance between feature sets, in float64 without a general (non-symmetric) sqrtm.

d^2 = |mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr (S1 S2)^(1/2). With centred features A (n1 x F), B (n2 x F),
S1 S2 has the same non-zero eigenvalues as (A B^T)(A B^T)^T / ((n1-1)(n2-1)), so the trace term is the
nuclear norm of A B^T: one SVD of an n1 x n2 matrix, exact and real. With more samples than features
the symmetric form tr (S1^(1/2) S2 S1^(1/2))^(1/2) via eigh is used instead.
"""

from __future__ import annotations

import numpy as np


def _check(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected features of shape (N, F), got {x.shape}")
    if x.shape[0] < 2:
        raise ValueError(f"{name}: FID needs at least 2 feature vectors for a covariance, got {x.shape[0]}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: features contain NaN or inf")
    return x


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """tr (S1 S2)^(1/2) for symmetric PSD S1, S2 (the symmetric, always-real form)."""
    r = _sqrt_psd(np.asarray(s1, np.float64))
    w = np.linalg.eigvalsh(r @ np.asarray(s2, np.float64) @ r)
    return float(np.sqrt(np.clip(w, 0, None)).sum())


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, s1) and N(mu2, s2)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(s1, np.float64)), np.atleast_2d(np.asarray(s2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shapes do not match: mu {mu1.shape} / {mu2.shape}, sigma {s1.shape} / {s2.shape}")
    diff = mu1 - mu2
    d = diff @ diff + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt_product(s1, s2)
    return float(max(d, 0.0))


def fid(real: np.ndarray, fake: np.ndarray) -> float:
    """FID between two feature sets (N, F) and (M, F); sample covariances (ddof=1) as in the paper's code."""
    x, y = _check(real, "real"), _check(fake, "fake")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature sizes differ: real {x.shape[1]}, fake {y.shape[1]}")
    n1, n2, dim = x.shape[0], y.shape[0], x.shape[1]
    a, b = x - x.mean(0), y - y.mean(0)
    diff = x.mean(0) - y.mean(0)
    if min(n1, n2) <= dim:
        tr_cross = np.linalg.svd(a @ b.T, compute_uv=False).sum() / np.sqrt((n1 - 1) * (n2 - 1))
    else:
        tr_cross = trace_sqrt_product(a.T @ a / (n1 - 1), b.T @ b / (n2 - 1))
    d = diff @ diff + (a * a).sum() / (n1 - 1) + (b * b).sum() / (n2 - 1) - 2 * tr_cross
    return float(max(d, 0.0))
