"""FID, MMD and MS-SSIM against closed forms and brute-force references."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

import prdit.evaluate as ev
from prdit.evaluate.bootstrap import bootstrap_ci
from prdit.evaluate.fid import frechet_distance
from prdit.evaluate.mmd import median_gamma
from prdit.evaluate.ms_ssim import pair_indices, scales_for, ssim


def _sqrtm_fid(x: np.ndarray, y: np.ndarray) -> float:
    """The textbook formula with scipy's general sqrtm (what the paper's code does)."""
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("n,d", [(8, 2048), (40, 16), (5, 3)])
def test_fid_of_a_set_with_itself_is_zero(n, d):
    x = np.random.default_rng(0).normal(size=(n, d)) * 3 + 1
    assert ev.fid(x, x) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_matches_gaussian_closed_form():
    # Commuting (diagonal) covariances: d^2 = |mu1-mu2|^2 + sum (sqrt(a) - sqrt(b))^2.
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, -1.0, 2.0])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)
    # A rotated pair (non-commuting): compare with the scalar identity tr sqrt(S1 S2) via scipy.
    rng = np.random.default_rng(1)
    m1, m2 = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = m1 @ m1.T, m2 @ m2.T
    ref = np.trace(s1) + np.trace(s2) - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(np.zeros(5), s1, np.zeros(5), s2) == pytest.approx(ref, rel=1e-9)


def test_fid_of_samples_equals_closed_form_of_their_moments_and_the_population_value():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(20000, 3)) * np.sqrt([1.0, 4.0, 0.25])
    y = rng.normal(size=(20000, 3)) * np.sqrt([9.0, 1.0, 0.25]) + [1.0, -2.0, 0.0]
    f = ev.fid(x, y)
    assert f == pytest.approx(
        frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)), rel=1e-9
    )
    population = 1 + 4 + (1 - 3) ** 2 + (2 - 1) ** 2
    assert f == pytest.approx(population, rel=0.03)


@pytest.mark.parametrize("n,m,d", [(8, 6, 150), (30, 25, 12)])
def test_fid_matches_scipy_sqrtm_on_both_code_paths(n, m, d):
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(n, d)), rng.normal(size=(m, d)) * 1.5 + 0.3
    assert ev.fid(x, y) == pytest.approx(_sqrtm_fid(x, y), rel=1e-6)


def test_fid_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 2"):
        ev.fid(np.zeros((1, 4)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="feature sizes differ"):
        ev.fid(np.zeros((3, 4)), np.zeros((3, 5)))
    with pytest.raises(ValueError, match="NaN"):
        ev.fid(np.full((3, 4), np.nan), np.zeros((3, 4)))


def _brute_mmd(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """O(n^2) loops; gamma from torch.median exactly as the PRDiT reference script computes it."""
    xt = torch.from_numpy(x)
    d = (xt.unsqueeze(1) - xt.unsqueeze(0)).pow(2).sum(-1).view(-1)
    gamma = 1.0 / (2.0 * d.median().item())
    k = lambda u, v: np.exp(-gamma * sum((a - b) ** 2 for a, b in zip(u, v)))  # noqa: E731
    n, m = len(x), len(y)
    kxx = [[k(x[i], x[j]) for j in range(n)] for i in range(n)]
    kyy = [[k(y[i], y[j]) for j in range(m)] for i in range(m)]
    kxy = [[k(x[i], y[j]) for j in range(m)] for i in range(n)]
    ref = sum(map(sum, kxx)) / n**2 + sum(map(sum, kyy)) / m**2 - 2 * sum(map(sum, kxy)) / (n * m)
    unb = (
        sum(kxx[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        + sum(kyy[i][j] for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
        - 2 * sum(map(sum, kxy)) / (n * m)
    )
    return gamma, float(np.sqrt(max(ref, 0))), unb


@pytest.mark.parametrize("n,m", [(6, 5), (7, 9), (4, 4)])
def test_mmd_equals_brute_force_reference(n, m):
    rng = np.random.default_rng(n * 10 + m)
    x, y = rng.normal(size=(n, 5)), rng.normal(size=(m, 5)) + 0.4
    gamma, ref, unb = _brute_mmd(x, y)
    assert median_gamma(x) == pytest.approx(gamma, rel=1e-9)
    assert ev.mmd(x, y) == pytest.approx(ref, rel=1e-9)
    assert ev.mmd(x, y, estimator="reference") == pytest.approx(ref, rel=1e-9)
    assert ev.mmd(x, y, estimator="unbiased") == pytest.approx(unb, rel=1e-9, abs=1e-12)


def test_mmd_of_identical_sets_and_bad_estimator():
    x = np.random.default_rng(0).normal(size=(6, 4))
    assert ev.mmd(x, x) == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="unknown MMD estimator"):
        ev.mmd(x, x, estimator="biased")
    with pytest.raises(ValueError, match="bandwidth undefined"):
        ev.mmd(x[:2], x)  # 2 vectors: the lower median of 4 squared distances is a zero diagonal entry


def test_ms_ssim_identical_is_one_and_lower_for_different_volumes():
    rng = np.random.default_rng(0)
    a = np.tanh(rng.normal(size=(32, 32, 32))).astype(np.float32)
    b = np.tanh(rng.normal(size=(32, 32, 32))).astype(np.float32)
    assert ev.ms_ssim(a, a) == pytest.approx(1.0, abs=1e-6)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-6)
    v = ev.ms_ssim(a, b)
    assert 0 <= v < 0.5
    assert ev.ms_ssim(b, a) == pytest.approx(v, rel=1e-9)
    assert ev.ms_ssim(a, np.clip(a + 0.05, -1, 1)) > v
    assert scales_for(32) == 4 and scales_for(64) == 5 and scales_for(128) == 5
    with pytest.raises(ValueError, match="one shape"):
        ev.ms_ssim(a, a[:16])


def test_pairs_and_bootstrap_are_deterministic():
    assert pair_indices(4, 100, 0) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert pair_indices(10, 5, 3) == pair_indices(10, 5, 3) and len(pair_indices(10, 5, 3)) == 5
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 6)), rng.normal(size=(10, 6)) + 1
    a = bootstrap_ci(ev.fid, x, y, 50, seed=1)
    assert a == bootstrap_ci(ev.fid, x, y, 50, seed=1)
    assert a["low"] < ev.fid(x, y) < a["high"] * 1.5 and a["n"] == 50
    assert bootstrap_ci(ev.fid, x, y, 0) is None


def test_ssim_matches_scikit_image_with_the_same_window():
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(5)
    a = np.tanh(rng.normal(size=(24, 24, 24)))
    b = np.clip(a + 0.3 * rng.normal(size=a.shape), -1, 1)
    ref = structural_similarity(
        (a + 1) / 2,
        (b + 1) / 2,
        data_range=1.0,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )  # 11-tap window (truncate 3.5)
    assert ssim(a, b, kernel_size=11) == pytest.approx(ref, rel=1e-4)


def test_memorization_audit_flags_copies_relative_to_held_out_and_by_ssim_alone():
    from prdit.evaluate.memorization import audit
    from prdit.evaluate.volumes import Summary

    rng = np.random.default_rng(0)
    vols = np.tanh(rng.normal(size=(6, 16, 16, 16)) * 2).astype(np.float32)
    feats = rng.normal(size=(6, 8))
    hists = np.zeros((6, 4))
    train = Summary(["t0", "t1", "t2"], feats[:3], vols[:3], hists[:3])
    held = Summary(["h0"], feats[3:4], vols[3:4], hists[3:4])
    copy = np.clip(vols[1] + 0.01 * rng.normal(size=vols[1].shape), -1, 1)[None]
    gen = Summary(
        ["g0", "g1"], np.stack([feats[1] + 1e-3, feats[4]]), np.concatenate([copy, vols[4:5]]), hists[:2]
    )
    out = audit(gen, train, held)
    assert out["near_copies"] == ["g0"]
    assert out["generated"][0]["voxel_nn"] == "t1" and out["generated"][0]["feature_nn"] == "t1"
    assert out["median_ratio_voxel"] is not None
    alone = audit(gen, train, Summary.concat([]))
    assert alone["near_copies"] == ["g0"] and alone["threshold_voxel_rmse"] is None
