"""Memorization audit: is each generated volume closer to a training volume than unseen real ones are?

For every generated and every held-out real volume, the nearest training volume is found in feature
space (Euclidean) and in voxel space (RMSE on [-1, 1] volumes pooled to at most 32^3, plus the SSIM to
that neighbour). Held-out real volumes show how close an honest new scan comes to the training set.
A generated volume is listed as a near-copy when its SSIM to the nearest training volume is at least
NEAR_COPY_SSIM (absolute: a structural duplicate) and, where held-out volumes exist, its voxel RMSE is
also below NEAR_COPY_RATIO times the closest held-out one (relative: closer than any unseen scan comes).
"""

from __future__ import annotations

import numpy as np

from prdit.evaluate.mmd import sq_distances
from prdit.evaluate.ms_ssim import ssim
from prdit.evaluate.volumes import Summary

NEAR_COPY_RATIO = 0.5
NEAR_COPY_SSIM = 0.9


def _nearest(query: Summary, train: Summary) -> list[dict]:
    feat_d = np.sqrt(sq_distances(query.features, train.features))
    q, t = query.thumbs.reshape(len(query.ids), -1), train.thumbs.reshape(len(train.ids), -1)
    vox_d = np.sqrt(sq_distances(q.astype(np.float64), t.astype(np.float64)) / q.shape[1])
    rows = []
    for k, case in enumerate(query.ids):
        fi, vi = int(feat_d[k].argmin()), int(vox_d[k].argmin())
        rows.append(
            {
                "id": case,
                "feature_nn": train.ids[fi],
                "feature_dist": float(feat_d[k, fi]),
                "voxel_nn": train.ids[vi],
                "voxel_rmse": float(vox_d[k, vi]),
                "voxel_ssim": ssim(query.thumbs[k], train.thumbs[vi]),
            }
        )
    return rows


def audit(generated: Summary, train: Summary, heldout: Summary) -> dict:
    """Per-volume nearest-training distances for generated and held-out sets, and the near-copies."""
    gen = _nearest(generated, train) if generated.ids and train.ids else []
    held = _nearest(heldout, train) if heldout.ids and train.ids else []
    threshold = NEAR_COPY_RATIO * min(r["voxel_rmse"] for r in held) if held else None
    for r in gen:
        r["near_copy"] = r["voxel_ssim"] >= NEAR_COPY_SSIM and (
            threshold is None or r["voxel_rmse"] < threshold
        )
    out: dict = {
        "generated": gen,
        "heldout": held,
        "near_copy_ratio": NEAR_COPY_RATIO,
        "near_copy_ssim": NEAR_COPY_SSIM,
        "threshold_voxel_rmse": threshold,
        "near_copies": [r["id"] for r in gen if r["near_copy"]],
        "median_ratio_feature": None,
        "median_ratio_voxel": None,
    }
    if not held or not gen:
        return out
    for space, key in (("feature", "feature_dist"), ("voxel", "voxel_rmse")):
        h = np.median([r[key] for r in held])
        out[f"median_ratio_{space}"] = float(np.median([r[key] for r in gen]) / h) if h > 0 else None
    return out
