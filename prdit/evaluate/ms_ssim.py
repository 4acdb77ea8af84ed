"""3D SSIM and multi-scale SSIM (Wang et al. 2003) in torch, for sample diversity and near-copy checks.

Settings follow the PRDiT evaluation (MONAI's MultiScaleSSIMMetric, spatial_dims=3, kernel_size=3,
Gaussian sigma 1.5, k1=0.01, k2=0.03, data_range=1 on volumes in [0, 1]): volumes in [-1, 1] are mapped to
[0, 1] first, since SSIM's luminance term is not shift invariant. The standard five scale weights are
used; when a volume is too small for five scales (32^3 with a 3-voxel window fits four), the coarsest
scales are dropped and the remaining weights renormalised; `scales_for` says how many were used.

`ms_ssim` (one pair) is the reference definition; `ms_ssim_batch` computes many pairs in one pass with the
same arithmetic, and `pairwise_values` runs all pairs of an evaluation through it in memory-bounded chunks
on the GPU when there is one (the paper protocol's 499,500 pairs of 1,000 volumes).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

MS_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
# Peak working set of one pair in ms_ssim_batch, in float32 volumes of the input size: the pair and its
# [0, 1] copies (6), the five stacked moments with a blur pass's accumulator, product and previous output
# (20), the variance, contrast and luminance maps (6). Chunks are sized from it.
PAIR_VOLUMES = 32
# Bytes per chunk on the CPU, about a last-level cache: larger CPU chunks only add memory traffic.
CPU_BUDGET = 64 << 20
GPU_SHARE = 0.5  # of the GPU memory free at the start of a chunked run


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


def _blur_conv(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The same separable filter as three conv3d passes (the same multiply-adds; what FlopCounterMode counts)."""
    b, c, k = x.shape[0], x.shape[1], w.numel()
    x = x.reshape(b * c, 1, *x.shape[2:])
    wf = w.to(device=x.device, dtype=x.dtype)
    for shape in ((k, 1, 1), (1, k, 1), (1, 1, k)):
        x = F.conv3d(x, wf.view(1, 1, *shape))
    return x.reshape(b, c, *x.shape[2:])


BLURS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"shift": _blur, "conv": _blur_conv}


def _ssim_cs(
    x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, data_range: float, blur: Callable = _blur
) -> tuple[torch.Tensor, torch.Tensor]:
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my, exx, eyy, exy = blur(torch.cat([x, y, x * x, y * y, x * y], dim=1), w).unbind(1)
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


def ms_ssim_batch(
    a: torch.Tensor, b: torch.Tensor, kernel_size: int = 3, sigma: float = 1.5, blur: str = "shift"
) -> torch.Tensor:
    """MS-SSIM of each pair (a[k], b[k]) of [B, D, H, W] volumes in [-1, 1], on their device: [B] float32.

    The arithmetic of `ms_ssim`, element for element, with the pairs stacked along the batch axis: only the
    order of the per-pair voxel means can differ. `blur='conv'` runs the same multiply-adds as conv3d
    passes (what FlopCounterMode counts, see pair_flops); its different summation order is amplified by
    the variances' cancellation (E[x^2] - E[x]^2), so evaluation keeps the default shifted sums.
    """
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(
            f"MS-SSIM batch needs two [B, D, H, W] of one shape, got {tuple(a.shape)}, {tuple(b.shape)}"
        )
    n = scales_for(min(a.shape[1:]), kernel_size)
    if n == 0:
        raise ValueError(f"volume {tuple(a.shape[1:])} is smaller than the {kernel_size}-voxel SSIM window")
    blur_fn = BLURS[blur]
    x, y = ((a.float() + 1) / 2)[:, None], ((b.float() + 1) / 2)[:, None]
    weights = torch.tensor(MS_WEIGHTS[:n], dtype=torch.float32)
    weights = (weights / weights.sum()).to(a.device)
    w = _window(kernel_size, sigma)
    terms = []
    for i in range(n):
        s, cs = _ssim_cs(x, y, w, 1.0, blur_fn)
        terms.append(s if i == n - 1 else cs)
        if i < n - 1:
            x, y = F.avg_pool3d(x, 2), F.avg_pool3d(y, 2)
    vals = torch.stack(terms).clamp(min=0)  # [scales, B]
    return torch.prod(vals ** weights[:, None], dim=0)


def pair_flops(size: int, kernel_size: int = 3) -> int:
    """FLOPs of one MS-SSIM pair of `size`^3 volumes as torch's FlopCounterMode counts them (conv blur path).

    FlopCounterMode counts convolutions and matrix products only, so the blur runs as conv3d here (the
    shifted sums do the same multiply-adds): the Gaussian filtering, 5 moment maps x 3 passes x
    2 x kernel_size FLOPs per output voxel at every scale. The element-wise SSIM arithmetic (some 30
    operations per voxel, memory-bound) is not in it. Counted on the meta device: nothing is computed.
    """
    from torch.utils.flop_counter import FlopCounterMode

    a = torch.empty((1, size, size, size), device="meta")
    with FlopCounterMode(display=False) as counter:
        ms_ssim_batch(a, a, kernel_size, blur="conv")
    return int(counter.get_total_flops())


def pairs_per_chunk(shape: Sequence[int], device: torch.device | str) -> int:
    """How many pairs of `shape` volumes one ms_ssim_batch call may hold on `device` (CPU_BUDGET or GPU_SHARE)."""
    device = torch.device(device)
    per_pair = PAIR_VOLUMES * 4 * int(np.prod(shape))
    budget = GPU_SHARE * torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else CPU_BUDGET
    return max(1, int(budget // per_pair))


def pairwise_values(
    volumes: Sequence[np.ndarray | torch.Tensor] | dict[int, np.ndarray | torch.Tensor],
    pairs: Sequence[tuple[int, int]],
    device: torch.device | str | None = None,
    chunk: int | None = None,
) -> np.ndarray:
    """MS-SSIM (float64 of the float32 results) of each pair (i, j) of `volumes`, in chunks of `chunk` pairs.

    Volumes are held by the caller (read once, on the GPU when it had room, else in host memory); each chunk
    gathers its pairs onto `device` (default: CUDA if available) and runs one ms_ssim_batch.
    """
    if not pairs:
        return np.zeros(0)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    chunk = chunk or pairs_per_chunk(tuple(volumes[pairs[0][0]].shape), device)

    def stack(idx: Sequence[int]) -> torch.Tensor:
        return torch.stack([torch.as_tensor(volumes[i]).to(device) for i in idx])

    out = []
    for start in range(0, len(pairs), chunk):
        part = pairs[start : start + chunk]
        with torch.no_grad():
            vals = ms_ssim_batch(stack([i for i, _ in part]), stack([j for _, j in part]))
        out.append(vals.double().cpu().numpy())
    return np.concatenate(out)


def pair_indices(n: int, n_pairs: int, seed: int) -> list[tuple[int, int]]:
    """`n_pairs` distinct unordered pairs of {0..n-1} drawn with `seed` (all pairs if fewer exist)."""
    pairs = list(itertools.combinations(range(n), 2))
    if n_pairs >= len(pairs):
        return pairs
    return sorted(random.Random(seed).sample(pairs, n_pairs))
