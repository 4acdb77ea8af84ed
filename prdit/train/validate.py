"""Validation loss on the val split (fixed noise per item, comparable across steps) and preview montages."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from prdit.diffusion import SamplerOptions, sample
from prdit.train.data import DeviceFeed
from prdit.train.distributed import DistEnv, all_sum
from prdit.viz import montage

log = logging.getLogger(__name__)

# loss_fn(model, x0, positions, stream) -> (scalar loss, {name: 0-dim tensor}); the diffusion time and noise
# of each sample are a function of (seed, stream, position) only: see data.draw
LossFn = Callable[[nn.Module, torch.Tensor, list[int], int], tuple[torch.Tensor, dict]]
VAL_STREAM = 1  # noise stream of validation items, distinct from the training stream (0)


@torch.no_grad()
def val_loss(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: LossFn,
    env: DistEnv,
    *,
    autocast: Callable[[], contextlib.AbstractContextManager],
) -> float:
    """Mean loss over the whole val split (all ranks' shares); nan when the split is empty."""
    was_training = model.training
    model.eval()
    loss_sum, count = torch.zeros((), dtype=torch.float64, device=env.device), 0
    for x, idx in DeviceFeed(loader, env.device):
        x = x.float()  # float16 from the loader, converted exactly on the device (as in training)
        with autocast():
            loss, _ = loss_fn(model, x, idx.tolist(), VAL_STREAM)
        loss_sum += loss.detach().double() * len(x)
        count += len(x)
    model.train(was_training)
    total = torch.stack([loss_sum, torch.tensor(float(count), dtype=torch.float64, device=env.device)])
    total = all_sum(env, total)
    return float(total[0] / total[1]) if total[1] > 0 else float("nan")


PREVIEW_SEED = 0  # preview volume i always starts from sampler seed PREVIEW_SEED + i


@torch.no_grad()
def preview(
    model: nn.Module,
    size: int,
    path: Path,
    *,
    n: int,
    options: SamplerOptions,
    device: torch.device,
    title: str,
) -> Path:
    """Sample `n` volumes from `model` with `options` and write their mid-slice montage to `path`.

    Every preview of a run is comparable with the others: volume i always starts from the same noise
    and draws the same corrector noise (seed PREVIEW_SEED + i, its own generator: independent of the
    global RNG, of `n` and of the batch), in fp32, with the same sampler settings; the montage shows the
    same axial/coronal/sagittal mid-slices in the same layout and fixed grey scale ([-1, 1]). So a run's
    previews differ only by the weights, and anatomy can be watched appearing step by step.
    """

    was_training = model.training
    model.eval()
    try:
        seeds = [PREVIEW_SEED + i for i in range(n)]
        vols = sample(model, (n, 1, size, size, size), options, seeds=seeds, device=device)
    finally:
        model.train(was_training)
    arrays = [v[0].float().cpu().numpy() for v in vols]
    return montage(arrays, path, titles=[f"{title} seed {s}" for s in seeds], vmin=-1.0, vmax=1.0)
