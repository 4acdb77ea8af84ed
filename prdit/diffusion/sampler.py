"""Predictor-corrector sampler of the IaN process (k = 1: deterministic Euler on the angle).

One loop over a precomputed plan of (t, t_next, t_jump) per model call, for the project's grid and the
reference's; the noise of sample j comes from its own generator (NVlabs/edm generate.py is the model).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from prdit.diffusion.ian import NOISE_STD, TIMESTEPS, angle
from prdit.diffusion.respace import timestep_grid
from prdit.io import atomic_path
from prdit.progress import progress

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Step = tuple[int, int, int]  # (t, t_next, t_jump): model call at t, predictor to t_jump, land on t_next
GRIDS = ("project", "reference")


def default_seeds(n: int) -> list[int]:
    """Per-sample seeds drawn from torch's global RNG (reproducible under torch.manual_seed)."""
    return [int(s) for s in torch.randint(0, 2**62, (n,))]


def corrector_gamma(beta_target: float, beta_jump: float) -> float:
    """Gamma = cos b_{t-1} / cos b_{t-k}: x_{t-k} * Gamma + sqrt(1 - Gamma^2) * noise lands on step t-1.

    If x_{t-k} = cos(b_{t-k}) x0 + sin(b_{t-k}) eps, the result has signal cos(b_{t-1}) and noise
    variance std^2 (Gamma^2 sin^2 b_{t-k} + 1 - Gamma^2) = std^2 sin^2 b_{t-1}.
    """
    return math.cos(beta_target) / math.cos(beta_jump)


class StackedRandomGenerator:
    """One torch.Generator per sample seed; randn stacks one draw per sample (edm's StackedRandomGenerator),
    so a sample's noise depends on its seed only, never on the batch it is in."""

    def __init__(self, device: torch.device | str, seeds: Sequence[int]) -> None:
        self.device = torch.device(device)
        self.generators = [torch.Generator(device=self.device).manual_seed(int(s)) for s in seeds]

    def randn(self, size: Sequence[int]) -> torch.Tensor:
        """Standard normal [B, ...]: row j from generator j (size[0] must be the number of seeds)."""
        if size[0] != len(self.generators):
            raise ValueError(f"asked for {size[0]} draws from {len(self.generators)} generators")
        return torch.stack(
            [torch.randn(tuple(size[1:]), generator=g, device=self.device) for g in self.generators]
        )


def reference_grid(steps: int, timesteps: int = TIMESTEPS) -> list[int]:
    """The reference's visited timesteps, decreasing, then its final target 0 (T // steps spacing)."""
    if not 1 <= steps <= timesteps:
        raise ValueError(f"steps must be in 1..{timesteps} (diffusion.timesteps), got {steps}")
    skip = timesteps // steps
    visited = list(range(0, timesteps, skip))[::-1]
    return [t for t in visited if t > 0] + [0]  # its call at t = 0 takes a zero step: left out


def step_plan(steps: int, k: int, grid: str = "project", timesteps: int = TIMESTEPS) -> list[Step]:
    """The (t, t_next, t_jump) of every model call; t_jump < t_next means a corrector step follows.

    project: the grid of timestep_grid (T .. 0, steps + 1 points); the predictor jumps k grid points,
    clamped to t = 0. reference (the PRDiT reference sampler, protocol paper): model calls at
    T - T // steps, ..., T // steps (never t = T), then 0; it jumps k of them only while that stays above
    t = 0, otherwise (the last steps) takes the plain Euler step to t_next.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if grid == "project":
        ts = timestep_grid(steps, timesteps)
        return [(ts[i], ts[i + 1], ts[min(i + k, steps)]) for i in range(steps)]
    if grid == "reference":
        ts = reference_grid(steps, timesteps)
        plan = []
        for t, t_next in zip(ts[:-1], ts[1:]):
            t_jump = t - k * (t - t_next)
            plan.append((t, t_next, t_jump if k > 1 and t_jump > 0 else t_next))
        return plan
    raise ValueError(f"grid must be 'project' or 'reference', got {grid!r}")


def _device_of(model: Model) -> torch.device:
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
    return torch.device("cpu")


@dataclass(frozen=True)
class SamplerOptions:
    """How the sampler walks from noise to data, each option's meaning here (NVlabs/edm's sampler kwargs)."""

    steps: int  # model calls on the project grid (steps + 1 points, T .. 0); reference: see reference_grid
    k: int = 2  # the predictor jumps k grid points; past t_next a corrector lands back on it (1: plain Euler)
    grid: str = "project"  # the timestep grid: "project" or "reference" (step_plan)
    timesteps: int = TIMESTEPS  # T of the diffusion process (diffusion.timesteps)
    noise_std: float = (
        NOISE_STD  # std of the noise at t = T and scale of the corrector's (diffusion.noise_std)
    )
    amp_dtype: torch.dtype | None = None  # autocast dtype of the model call; None: no autocast

    def plan(self) -> list[Step]:
        """The (t, t_next, t_jump) of every model call (step_plan of these options)."""
        return step_plan(self.steps, self.k, self.grid, self.timesteps)


@dataclass(frozen=True)
class Trajectory:
    """Write x_t and x0_hat to `folder` (step_XXXXX.pt) every `every` model calls and after the last."""

    folder: str | Path
    every: int

    def due(self, call: int, calls: int) -> bool:
        """Whether the state after model call `call` (1-based) of `calls` is written."""
        return bool(self.every) and (call % self.every == 0 or call == calls)


@torch.no_grad()
def sample(
    model: Model,
    shape: Sequence[int],
    options: SamplerOptions,
    *,
    seeds: Sequence[int] | None = None,
    device: torch.device | str | None = None,
    trajectory: Trajectory | None = None,
    progress_desc: str | None = None,
) -> torch.Tensor:
    """Generate a batch of clean volumes in model space ([-1, 1]); `shape` is [B, C, D, H, W].

    At t the model gives (eps_hat, x0_hat); d = sin(b) x0_hat - cos(b) eps_hat points along the arc
    towards the data. The predictor moves to t_jump, x += (b - b_jump) d; when it jumped past t_next the
    corrector rescales by Gamma = cos b_next / cos b_jump and adds sqrt(1 - Gamma^2) fresh noise, landing
    on the marginal of t_next (step_plan says which t, t_next, t_jump each grid visits). Sample j draws
    all its noise from its own generator seeded with seeds[j]. Only the current state is kept; with a
    `trajectory`, x_t and x0_hat are written as it says.
    """
    plan = options.plan()
    timesteps, noise_std, amp_dtype = options.timesteps, options.noise_std, options.amp_dtype
    b, c = shape[0], shape[1]
    seeds = list(seeds) if seeds is not None else default_seeds(b)
    if len(seeds) != b:
        raise ValueError(f"got {len(seeds)} seeds for a batch of {b}")
    device = torch.device(device) if device is not None else _device_of(model)
    rnd = StackedRandomGenerator(device, seeds)
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
    calls = enumerate(plan)
    if progress_desc:
        calls = progress(calls, desc=progress_desc, total=len(plan))

    x_next = rnd.randn(shape).mul_(noise_std)  # x_T (the reference: its first grid point's state)
    for i, (t_cur, t_next, t_jump) in calls:
        x_cur = x_next
        b_cur, b_next, b_jump = angle(t_cur, timesteps), angle(t_next, timesteps), angle(t_jump, timesteps)
        t_batch = torch.full((b,), min(t_cur, timesteps - 1), device=device, dtype=torch.long)
        with autocast:
            out = model(x_cur, t_batch)
        eps_hat, x0_hat = out[:, :c].float(), out[:, c:].float()

        # predictor: Euler along the arc to t_jump (in place: one state in memory, x_cur is gone after it)
        h = b_cur - b_jump
        x_jump = x_cur.add_(x0_hat, alpha=h * math.sin(b_cur)).sub_(eps_hat, alpha=h * math.cos(b_cur))
        x_next = x_jump
        if t_jump < t_next:  # corrector: from t_jump back up to t_next's marginal with fresh noise
            gamma = corrector_gamma(b_next, b_jump)
            x_next = x_jump.mul_(gamma).add_(
                rnd.randn(shape), alpha=noise_std * math.sqrt(max(0.0, 1 - gamma**2))
            )
        if trajectory is not None and trajectory.due(i + 1, len(plan)):
            _save_step(Path(trajectory.folder), i + 1, t_next, x_next, x0_hat)
        del out, eps_hat, x0_hat
    return x_next


def _save_step(folder: Path, step: int, t: int, x: torch.Tensor, x0_hat: torch.Tensor) -> None:
    """Write x_t and x0_hat after model call `step` (at timestep t) as step_XXXXX.pt, atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / f"step_{step:05d}.pt") as tmp:
        torch.save({"step": step, "t": t, "x_t": x.cpu().clone(), "x0_hat": x0_hat.cpu().clone()}, tmp)
