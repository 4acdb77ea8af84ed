"""Predictor-corrector sampler of the IaN process (k = 1: deterministic Euler on the angle)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from prdit.diffusion.ian import NOISE_STD, TIMESTEPS
from prdit.diffusion.respace import timestep_grid
from prdit.io import atomic_path
from prdit.progress import progress

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def default_seeds(n: int) -> list[int]:
    """Per-sample seeds drawn from torch's global RNG (reproducible under torch.manual_seed)."""
    return [int(s) for s in torch.randint(0, 2**62, (n,))]


def corrector_gamma(beta_target: float, beta_jump: float) -> float:
    """Gamma = cos b_{t-1} / cos b_{t-k}: x_{t-k} * Gamma + sqrt(1 - Gamma^2) * noise lands on step t-1.

    If x_{t-k} = cos(b_{t-k}) x0 + sin(b_{t-k}) eps, the result has signal cos(b_{t-1}) and noise
    variance std^2 (Gamma^2 sin^2 b_{t-k} + 1 - Gamma^2) = std^2 sin^2 b_{t-1}.
    """
    return math.cos(beta_target) / math.cos(beta_jump)


def _device_of(model: Model) -> torch.device:
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
    return torch.device("cpu")


def _per_sample_randn(
    gens: list[torch.Generator], shape: Sequence[int], device: torch.device
) -> torch.Tensor:
    return torch.stack([torch.randn(tuple(shape), generator=g, device=device) for g in gens])


def _start(
    model: torch.nn.Module,
    shape: Sequence[int],
    seeds: Sequence[int] | None,
    device: torch.device | str | None,
    noise_std: float,
    amp_dtype: torch.dtype | None,
) -> tuple[torch.device, list[torch.Generator], torch.Tensor, contextlib.AbstractContextManager]:
    """What every grid starts from: the device, one generator per sample (its seed), x_T and the autocast."""
    b = shape[0]
    seeds = list(seeds) if seeds is not None else default_seeds(b)
    if len(seeds) != b:
        raise ValueError(f"got {len(seeds)} seeds for a batch of {b}")
    device = torch.device(device) if device is not None else _device_of(model)
    gens = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
    x = _per_sample_randn(gens, shape[1:], device).mul_(noise_std)
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
    return device, gens, x, autocast


@torch.no_grad()
def sample(
    model: Model,
    shape: Sequence[int],
    *,
    steps: int,
    k: int = 2,
    seeds: Sequence[int] | None = None,
    device: torch.device | str | None = None,
    timesteps: int = TIMESTEPS,
    noise_std: float = NOISE_STD,
    trajectory_dir: str | Path | None = None,
    save_every: int = 0,
    amp_dtype: torch.dtype | None = None,
    progress_desc: str | None = None,
    grid: str = "project",
) -> torch.Tensor:
    """Generate a batch of clean volumes in model space ([-1, 1]); `shape` is [B, C, D, H, W].

    At grid point t_i the model gives (eps_hat, x0_hat); g = sin(b) x0_hat - cos(b) eps_hat points
    along the arc towards the data. The predictor jumps k grid points, x += (b_i - b_{i+k}) g,
    the corrector rescales by Gamma = cos b_{i+1} / cos b_{i+k} and adds sqrt(1 - Gamma^2) fresh
    noise, landing on the marginal of the next grid point (near the end the jump is clamped to
    t = 0). Sample j draws all its noise from its own generator seeded with seeds[j], so it does
    not depend on the batch it is in. Only the current state is kept; with `trajectory_dir` and
    `save_every` = n, x_t and x0_hat are written there every n steps (step_XXXXX.pt).

    grid="reference" is the PRDiT reference sampler's schedule (protocol paper): the model is called at
    t = T - T // steps, ..., T // steps (noise taken as that step's state, never t = T), each step
    targets the next of these and finally 0, and the predictor jumps k of them only while it stays
    above t = 0; otherwise (the last steps) it takes the plain Euler step.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if grid == "reference":
        return _sample_reference_grid(
            model, shape, steps, k, seeds, device, timesteps, noise_std, amp_dtype, progress_desc
        )
    if grid != "project":
        raise ValueError(f"grid must be 'project' or 'reference', got {grid!r}")
    device, gens, x, autocast = _start(model, shape, seeds, device, noise_std, amp_dtype)
    grid = timestep_grid(steps, timesteps)
    betas = [t * math.pi / 2 / timesteps for t in grid]
    b, c = shape[0], shape[1]

    order = range(steps)
    if progress_desc:
        order = progress(order, desc=progress_desc, total=steps)
    for i in order:
        label = torch.full((b,), min(grid[i], timesteps - 1), device=device, dtype=torch.long)
        with autocast:
            out = model(x, label)
        eps_hat, x0_hat = out[:, :c].float(), out[:, c:].float()
        beta = betas[i]
        j = min(i + k, steps)  # jump target index on the grid (t = 0 at index `steps`)
        # x += (b_i - b_j) * (sin b_i * x0_hat - cos b_i * eps_hat)
        x.add_(x0_hat, alpha=(beta - betas[j]) * math.sin(beta)).sub_(
            eps_hat, alpha=(beta - betas[j]) * math.cos(beta)
        )
        if j > i + 1:
            gamma = corrector_gamma(betas[i + 1], betas[j])
            x.mul_(gamma).add_(
                _per_sample_randn(gens, shape[1:], device),
                alpha=noise_std * math.sqrt(max(0.0, 1 - gamma**2)),
            )
        if trajectory_dir is not None and save_every and ((i + 1) % save_every == 0 or i + 1 == steps):
            _save_step(Path(trajectory_dir), i + 1, grid[i + 1], x, x0_hat)
        del out, eps_hat, x0_hat
    return x


def _save_step(folder: Path, step: int, t: int, x: torch.Tensor, x0_hat: torch.Tensor) -> None:

    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / f"step_{step:05d}.pt") as tmp:
        torch.save({"step": step, "t": t, "x_t": x.cpu().clone(), "x0_hat": x0_hat.cpu().clone()}, tmp)


def reference_grid(steps: int, timesteps: int = TIMESTEPS) -> list[int]:
    """The reference's visited timesteps, decreasing, then its final target 0 (T // steps spacing)."""
    if not 1 <= steps <= timesteps:
        raise ValueError(f"steps must be in 1..{timesteps} (diffusion.timesteps), got {steps}")
    skip = timesteps // steps
    visited = list(range(0, timesteps, skip))[::-1]
    return [t for t in visited if t > 0] + [0]  # its call at t = 0 takes a zero step: left out


def _sample_reference_grid(
    model: Model,
    shape: Sequence[int],
    steps: int,
    k: int,
    seeds: Sequence[int] | None,
    device: torch.device | str | None,
    timesteps: int,
    noise_std: float,
    amp_dtype: torch.dtype | None,
    progress_desc: str | None,
) -> torch.Tensor:
    device, gens, x, autocast = _start(model, shape, seeds, device, noise_std, amp_dtype)
    ts = reference_grid(steps, timesteps)
    beta = [t * math.pi / 2 / timesteps for t in ts]
    b, c = shape[0], shape[1]
    order = range(len(ts) - 1)
    if progress_desc:
        from prdit.progress import progress

        order = progress(order, desc=progress_desc, total=len(ts) - 1)
    for i in order:
        t, t_next = ts[i], ts[i + 1]
        with autocast:
            out = model(x, torch.full((b,), t, device=device, dtype=torch.long))
        eps_hat, x0_hat = out[:, :c].float(), out[:, c:].float()
        t_jump = t - k * (t - t_next)
        if k > 1 and t_jump > 0:  # predictor k steps along the arc, corrector back to t_next
            b_jump = t_jump * math.pi / 2 / timesteps
            h = beta[i] - b_jump
            x.add_(x0_hat, alpha=h * math.sin(beta[i])).sub_(eps_hat, alpha=h * math.cos(beta[i]))
            gamma = corrector_gamma(beta[i + 1], b_jump)
            x.mul_(gamma).add_(
                _per_sample_randn(gens, shape[1:], device),
                alpha=noise_std * math.sqrt(max(0.0, 1 - gamma**2)),
            )
        else:  # the plain Euler step
            h = beta[i] - beta[i + 1]
            x.add_(x0_hat, alpha=h * math.sin(beta[i])).sub_(eps_hat, alpha=h * math.cos(beta[i]))
        del out, eps_hat, x0_hat
    return x
