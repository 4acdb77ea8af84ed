"""The IaN forward process: x_t = cos(b_t) x0 + sin(b_t) eps, b_t = (pi/2) t/T, eps ~ N(0, noise_std^2)."""

from __future__ import annotations

import math
from typing import overload

import torch

TIMESTEPS = 1000
NOISE_STD = 0.5


@overload
def angle(t: float, timesteps: int = TIMESTEPS, dtype: torch.dtype = torch.float32) -> float: ...
@overload
def angle(
    t: torch.Tensor, timesteps: int = TIMESTEPS, dtype: torch.dtype = torch.float32
) -> torch.Tensor: ...
def angle(
    t: torch.Tensor | float, timesteps: int = TIMESTEPS, dtype: torch.dtype = torch.float32
) -> torch.Tensor | float:
    """b_t = (pi/2) t / T, the one home of the angle: a Python float for a number (the sampler's grid
    points), else a tensor of `dtype` shaped like t (float32 for the loss, float64 for the bridge)."""
    rate = math.pi / 2 / timesteps
    if isinstance(t, (int, float)):
        return t * rate
    return torch.as_tensor(t, dtype=dtype) * rate


def expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-sample values [B] -> [B, 1, 1, ...] broadcastable against `like`."""
    return v.to(like.device, like.dtype).view(-1, *([1] * (like.ndim - 1)))


def randn_like(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise shaped like x, from `generator` (on its own device) when given."""
    if generator is None:
        return torch.randn_like(x)
    return torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)


def q_sample(
    x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, timesteps: int = TIMESTEPS
) -> torch.Tensor:
    """Noisy volume at integer timesteps t [B]; `noise` already carries the std (0.5)."""
    beta = angle(t.to(x0.device), timesteps)
    return expand(torch.cos(beta), x0) * x0 + expand(torch.sin(beta), x0) * noise


def loss(
    model: torch.nn.Module,
    x0: torch.Tensor,
    t: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    *,
    noise: torch.Tensor | None = None,
    timesteps: int = TIMESTEPS,
    noise_std: float = NOISE_STD,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """IaN training loss: mean|x0_hat - x0|^2 + mean|eps_hat - eps|^2 at t ~ U{0..T-1}.

    t and eps (std `noise_std`) are drawn from `generator` unless given; a given `noise` is used
    as eps as it is (it must already carry the std). Returns the scalar loss (float32,
    differentiable) and detached parts {"loss_x0", "loss_eps"} (0-dim tensors: call .item() only
    when logging, to avoid a device sync every step).
    """
    b = x0.shape[0]
    if t is None:
        dev = generator.device if generator is not None else x0.device
        t = torch.randint(0, timesteps, (b,), generator=generator, device=dev)
    t = t.to(x0.device)
    if noise is None:
        eps = randn_like(x0, generator) * noise_std
    elif noise.shape != x0.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} != x0 shape {tuple(x0.shape)}")
    else:
        eps = noise.to(x0.device, x0.dtype)
    out = model(q_sample(x0, t, eps, timesteps), t)
    c = x0.shape[1]
    if out.shape != (b, 2 * c) + x0.shape[2:]:
        raise ValueError(f"model output {tuple(out.shape)} != expected {(b, 2 * c) + tuple(x0.shape[2:])}")
    out = out.float()
    loss_eps = (out[:, :c] - eps.float()).square().mean()
    loss_x0 = (out[:, c:] - x0.float()).square().mean()
    return loss_x0 + loss_eps, {"loss_x0": loss_x0.detach(), "loss_eps": loss_eps.detach()}
