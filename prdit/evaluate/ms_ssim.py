"""3D SSIM and multi-scale SSIM (Wang et al. 2003) in torch, for sample diversity and near-copy checks.

Settings follow the PRDiT evaluation (MONAI's MultiScaleSSIMMetric, spatial_dims=3, kernel_size=3,
Gaussian sigma 1.5, k1=0.01, k2=0.03, data_range=1 on volumes in [0, 1]): volumes in [-1, 1] are mapped to
[0, 1] first, since SSIM's luminance term is not shift invariant. The standard five scale weights are
used; when a volume is too small for five scales (32^3 with a 3-voxel window fits four), the coarsest
scales are dropped and the remaining weights renormalised; `scales_for` says how many were used.
"""

from __future__ import annotations

import itertools
import random

import numpy as np
import torch
import torch.nn.functional as F

MS_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _window(kernel_size: int, sigma: float) -> torch.Tensor:
    r = torch.arange(kernel_size, dtype=torch.float64) - (kernel_size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    return g / g.sum()


def _blur(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' Gaussian filter over the three spatial axes (shifted sums: fast on CPU)."""
    k = w.numel()
    for dim in (2, 3, 4):
        n = x.shape[dim] - k + 1
        x = sum(float(w[t]) * x.narrow(dim, t, n) for t in range(k))
    return x


def _ssim_cs(
    x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, data_range: float
) -> tuple[torch.Tensor, torch.Tensor]:
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my, exx, eyy, exy = _blur(torch.cat([x, y, x * x, y * y, x * y], dim=1), w).unbind(1)
    sxx, syy, sxy = exx - mx * mx, eyy - my * my, exy - mx * my
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    lum = (2 * mx * my + c1) / (mx * mx + my * my + c1)
    return (lum * cs).flatten(1).mean(1), cs.flatten(1).mean(1)


def _as_batch(v: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(v) if not isinstance(v, torch.Tensor) else v).float()
    while t.ndim < 5:
        t = t.unsqueeze(0)
    return (t + 1) / 2  # [-1, 1] -> [0, 1]


def scales_for(size: int, kernel_size: int = 3, max_scales: int = len(MS_WEIGHTS)) -> int:
    """How many scales fit a cube of edge `size` (each scale halves it; the window must fit)."""
    n = 0
    while n < max_scales and size // 2**n >= kernel_size:
        n += 1
    return n


def ssim(
    a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, kernel_size: int = 3, sigma: float = 1.5
) -> float:
    """Single-scale 3D SSIM of two volumes in [-1, 1]."""
    x, y = _as_batch(a), _as_batch(b)
    return float(_ssim_cs(x, y, _window(kernel_size, sigma), 1.0)[0].mean())


def ms_ssim(
    a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, kernel_size: int = 3, sigma: float = 1.5
) -> float:
    """3D MS-SSIM of two volumes [D, H, W] in [-1, 1]; 1 for identical volumes."""
    x, y = _as_batch(a), _as_batch(b)
    if x.shape != y.shape:
        raise ValueError(f"MS-SSIM needs volumes of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    n = scales_for(min(x.shape[2:]), kernel_size)
    if n == 0:
        raise ValueError(f"volume {tuple(x.shape[2:])} is smaller than the {kernel_size}-voxel SSIM window")
    weights = torch.tensor(MS_WEIGHTS[:n], dtype=torch.float32)
    weights = weights / weights.sum()
    w = _window(kernel_size, sigma)
    terms = []
    for i in range(n):
        s, cs = _ssim_cs(x, y, w, 1.0)
        terms.append(s if i == n - 1 else cs)
        if i < n - 1:
            x, y = F.avg_pool3d(x, 2), F.avg_pool3d(y, 2)
    vals = torch.stack(terms).clamp(min=0).squeeze(-1)
    return float(torch.prod(vals**weights))


def pair_indices(n: int, n_pairs: int, seed: int) -> list[tuple[int, int]]:
    """`n_pairs` distinct unordered pairs of {0..n-1} drawn with `seed` (all pairs if fewer exist)."""
    pairs = list(itertools.combinations(range(n), 2))
    if n_pairs >= len(pairs):
        return pairs
    return sorted(random.Random(seed).sample(pairs, n_pairs))


def pairwise_ms_ssim(volumes: list[np.ndarray], n_pairs: int, seed: int = 0) -> list[float]:
    """MS-SSIM over `n_pairs` random pairs of `volumes` (diversity: lower means more diverse)."""
    return [ms_ssim(volumes[i], volumes[j]) for i, j in pair_indices(len(volumes), n_pairs, seed)]
