"""All numbers of one evaluation: scores vs the training set, real-vs-real floors, intervals, diversity.

The reference set is the real training split (what the model learned). Each score against generated
volumes has a floor: the same metric for real held-out (val + test) volumes against the same training
set. Where a set is too small for a number, the number is null and `notes` says why.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from prdit.evaluate.bootstrap import bootstrap_ci
from prdit.evaluate.fid import fid
from prdit.evaluate.metrics import scaled
from prdit.evaluate.mmd import median_gamma, mmd, mmd2
from prdit.evaluate.volumes import Summary

SMALL_N = 10  # below this, intervals and FID are flagged as unreliable
MATCHED_DRAWS = 10


def _ci(ci: dict | None) -> dict | None:
    return None if ci is None else {"low": ci["low"], "high": ci["high"], "level": ci["level"], "n": ci["n"]}


def _safe(fn: Callable[[], float], notes: list[str], what: str) -> float | None:
    try:
        return fn()
    except ValueError as exc:
        notes.append(f"{what}: not computed ({exc})")
        return None


def feature_scores(
    train: Summary, heldout: Summary, generated: Summary, n_boot: int, seed: int
) -> tuple[dict, list[str]]:
    """FID and both MMD estimators vs train, their floors, bootstrap intervals; plus notes on small N."""
    notes: list[str] = []
    x = train.features
    gamma = _safe(lambda: median_gamma(x), notes, "MMD bandwidth") if len(x) else None
    out: dict = {"mmd_gamma": gamma}
    for suffix, other in (("", generated), ("_floor", heldout)):
        y = other.features
        label = "generated" if not suffix else "held-out real"
        n_min = min(len(x), len(y))
        ok = len(x) >= 2 and len(y) >= 2
        f = _safe(lambda y=y: fid(x, y), notes, f"FID ({label})") if ok else None
        if not ok:
            notes.append(
                f"FID ({label}): not computed (needs >= 2 volumes per set; train {len(x)}, {label} {len(y)})"
            )
        out[f"fid{suffix}"] = f
        m_ref = m2_ref = m_unb = None
        if gamma is not None and len(y) >= 1:
            m2_ref = mmd2(x, y, gamma, "reference")
            m_ref = float(np.sqrt(max(m2_ref, 0.0)))
            m_unb = _safe(lambda y=y: mmd2(x, y, gamma, "unbiased"), notes, f"unbiased MMD ({label})")
        out[f"mmd_reference{suffix}"], out[f"mmd2_reference{suffix}"], out[f"mmd_unbiased{suffix}"] = (
            m_ref,
            m2_ref,
            m_unb,
        )
        boot = n_boot if n_min >= 3 else 0
        if n_min < 3 and n_boot:
            notes.append(
                f"intervals ({label}): not computed (needs >= 3 volumes per set, smallest has {n_min})"
            )
        elif n_min < SMALL_N and n_boot:
            notes.append(
                f"intervals ({label}): only {n_min} volumes in the smallest set; the bootstrap interval is "
                "indicative only"
            )
        out[f"fid{suffix}_ci95"] = _ci(bootstrap_ci(fid, x, y, boot, seed)) if f is not None else None
        out.update(scaled(out, suffix))  # fid_x1e3 and its interval (prdit.evaluate.metrics)
        # Bandwidth fixed from the full training set: a resample with repeated rows would shrink the median.
        out[f"mmd_reference{suffix}_ci95"] = (
            _ci(bootstrap_ci(lambda a, b: mmd(a, b, "reference", gamma=gamma), x, y, boot, seed))
            if m_ref is not None
            else None
        )
        out[f"mmd_unbiased{suffix}_ci95"] = (
            _ci(bootstrap_ci(lambda a, b: mmd(a, b, "unbiased", gamma=gamma), x, y, boot, seed))
            if m_unb is not None
            else None
        )
    out["fid_at_floor_n"] = _matched_fid(x, generated.features, len(heldout.features), seed)
    dim = x.shape[1] if x.ndim == 2 else 2048
    if out["fid"] is not None and min(len(x), len(generated.features)) < SMALL_N:
        notes.append(
            f"FID: N = {min(len(x), len(generated.features))} volumes for {dim} features; the covariances are "
            "rank-deficient and FID is biased upwards and depends on N: read it only beside the floor "
            "(fid_floor) and fid_at_floor_n (generated subsampled to the held-out count)"
        )
    return out, notes


def _matched_fid(x: np.ndarray, y: np.ndarray, n: int, seed: int) -> float | None:
    """Mean FID of `n`-volume subsets of the generated set: the score at the floor's sample size."""
    if n < 2 or len(x) < 2 or len(y) < n:
        return None
    rng = np.random.default_rng(seed)
    if len(y) == n:
        return fid(x, y)
    return float(np.mean([fid(x, y[rng.choice(len(y), n, replace=False)]) for _ in range(MATCHED_DRAWS)]))
