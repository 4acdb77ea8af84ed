"""Seam ratio and texture diagnostics (prdit.evaluate.texture) on synthetic volumes with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prdit.evaluate.texture import STRIDE, compare, diagnostics, stats_of, step_means, texture, volume_stats
from prdit.model.patches import unpatchify
from prdit.model.registry import STRIDE as MODEL_STRIDE

S = 32


def _grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.meshgrid(*(np.arange(S, dtype=np.float64),) * 3, indexing="ij")


def _smooth(seed: int = 0, size: int = S) -> np.ndarray:
    """A band-limited random field (a few low-frequency waves): no preferred boundaries."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.arange(size, dtype=np.float64),) * 3, indexing="ij")
    v = np.zeros_like(z)
    for _ in range(6):
        k = rng.uniform(0.05, 0.3, 3)
        v += np.sin(k[0] * z + k[1] * y + k[2] * x + rng.uniform(0, 2 * np.pi))
    return (v / 6).astype(np.float32)


def test_stride_is_the_models_token_stride() -> None:
    assert STRIDE == MODEL_STRIDE == 8


def test_step_at_every_token_boundary_gives_the_hand_computed_ratio() -> None:
    z, y, x = _grid()
    a, c = 0.01, 0.02
    # A ramp of slope a on each axis plus a jump c wherever a new 8-voxel cell starts (voxels 8, 16, 24).
    vol = a * (z + y + x) + c * ((z // 8) + (y // 8) + (x // 8))
    b, o = step_means(vol)
    assert b == pytest.approx(a + c, rel=1e-5) and o == pytest.approx(a, rel=1e-5)
    assert diagnostics([vol])["seam_ratio"] == pytest.approx((a + c) / a, rel=1e-5)  # 3.0
    # Only along one axis: the two flat axes add zero steps to both means in the same proportion.
    only_z = a * z + c * (z // 8)
    assert diagnostics([only_z])["seam_ratio"] == pytest.approx(1 + c / a, rel=1e-5)


def test_the_boundary_grid_starts_at_voxel_zero_like_unpatchify() -> None:
    z, y, x = _grid()
    a, c = 0.01, 0.02
    shifted = a * z + c * ((z + 4) // 8)  # jumps at voxels 4, 12, 20, 28: between the model's boundaries
    # seams see only the ramp; 4 of the 28 other steps per line carry the jump
    assert diagnostics([shifted])["seam_ratio"] == pytest.approx(a / (a + 4 * c / 28), rel=1e-5)
    # cells un-patchified from per-token constants step exactly where the metric looks
    grid = S // STRIDE
    rng = torch.Generator().manual_seed(0)
    tokens = torch.randn(1, grid**3, 1, generator=rng).expand(1, grid**3, STRIDE**3).contiguous()
    cells = unpatchify(tokens, 1, STRIDE, grid)[0, 0].numpy()
    tiled = _smooth() + 0.1 * cells
    assert diagnostics([tiled])["seam_ratio"] > 1.5
    assert diagnostics([np.roll(tiled, 4, axis=(0, 1, 2))])["seam_ratio"] < 1  # the same tiling, off the grid
    b, o = step_means(cells)
    assert b > 0 and o == 0.0  # a cell is constant inside: every step is on a boundary
    shifted_cells = np.roll(cells, 4, axis=(0, 1, 2))
    assert step_means(shifted_cells)[0] == 0.0  # rolled off the grid: no step on a boundary


def test_smooth_and_white_noise_volumes_have_no_seams() -> None:
    assert diagnostics([_smooth(s) for s in range(3)])["seam_ratio"] == pytest.approx(1.0, abs=0.05)
    noise = np.random.default_rng(0).normal(size=(3, S, S, S)).astype(np.float32)
    assert diagnostics(list(noise))["seam_ratio"] == pytest.approx(1.0, abs=0.02)


def test_texture_exact_value_and_noise_vs_smooth() -> None:
    z, _, _ = _grid()
    q = 0.003
    # second difference 2q along z, 0 along y and x: pooled over equal counts per axis, 2q / 3
    assert texture(q * z**2) == pytest.approx(2 * q / 3, rel=1e-5)
    assert texture(0.5 * z + 0.1) == pytest.approx(0.0, abs=1e-6)  # linear: no texture
    smooth = [_smooth(s) for s in range(3)]
    noisy = [
        v + np.random.default_rng(s).normal(0, 0.1, v.shape).astype(np.float32) for s, v in enumerate(smooth)
    ]
    out = compare(noisy, smooth, heldout=[_smooth(9)])
    assert out["texture_ratio"] > 5  # white noise: much rougher than the smooth field
    assert out["texture_ratio"] == pytest.approx(out["texture_generated"] / out["texture_real"])
    assert out["texture_ratio_floor"] == pytest.approx(1.0, abs=0.3)
    smoother = compare(smooth, noisy)  # over-smoothing: generated smoother than real
    assert (
        smoother["texture_ratio"] == pytest.approx(1 / out["texture_ratio"])
        and smoother["texture_ratio"] < 0.2
    )
    assert smoother["texture_ratio_floor"] is None  # no held-out set given


def test_compare_on_precomputed_stats_matches_volumes_and_handles_empty_sets() -> None:
    gen, real = [_smooth(1), _smooth(2)], [_smooth(3), _smooth(4), _smooth(5)]
    direct = compare(gen, real, heldout=[_smooth(6)])
    pre = compare(stats_of(gen), stats_of(real), stats_of([_smooth(6)]), precomputed=True)
    assert direct == pytest.approx(pre)
    assert set(direct) == {
        "seam_ratio",
        "seam_ratio_real",
        "seam_ratio_heldout",
        "seam_stride",
        "texture_generated",
        "texture_real",
        "texture_heldout",
        "texture_ratio",
        "texture_ratio_floor",
    }
    empty = compare(np.zeros((0, 3)), stats_of(real), np.full((2, 3), np.nan), precomputed=True)
    assert (
        empty["seam_ratio"] is None and empty["texture_ratio"] is None and empty["seam_ratio_heldout"] is None
    )
    assert empty["seam_ratio_real"] == pytest.approx(direct["seam_ratio_real"])
    assert volume_stats(real[0]).shape == (3,)


def test_too_small_or_wrong_shape_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no token boundary"):
        step_means(np.zeros((8, 8, 8)))
    with pytest.raises(ValueError, match=r"\[D, H, W\]"):
        texture(np.zeros((4, 4)))
