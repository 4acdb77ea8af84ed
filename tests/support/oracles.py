"""Oracle denoisers for the sampler tests: models that return the exact posterior (eps, x0) of a known data set
(noise std STD, T timesteps)."""

from __future__ import annotations

import math

import torch

T, STD = 1000, 0.5


def angles(t: torch.Tensor, ndim: int):
    """cos and sin of the IaN angle at integer timesteps t, shaped to broadcast over ndim dimensions."""
    b = (t.double() * math.pi / 2 / T).view(-1, *([1] * (ndim - 1)))
    return torch.cos(b), torch.sin(b)


class GaussianOracle:
    """Data x0 ~ N(mu, sd^2) per voxel: E[x0 | x_t] and E[eps | x_t] in closed form."""

    def __init__(self, mu: float, sd: float):
        self.mu, self.sd = mu, sd

    def __call__(self, x, t):
        c, s = angles(t, x.ndim)
        v = c**2 * self.sd**2 + s**2 * STD**2
        d = x.double() - c * self.mu
        return torch.cat([s * STD**2 / v * d, self.mu + c * self.sd**2 / v * d], 1).float()


class MixtureOracle:
    """Data = a handful of fixed volumes, equally likely: posterior weights by Gaussian likelihood."""

    def __init__(self, volumes):
        self.v = volumes.double().flatten(1)

    def __call__(self, x, t):
        c, s = angles(t, 2)
        xf = x.double().flatten(1)
        d2 = (xf[:, None, :] - c[:, :, None] * self.v[None]).square().sum(-1)
        x0 = torch.softmax(-d2 / (2 * s**2 * STD**2), dim=1) @ self.v
        eps = (xf - c * x0) / s
        return torch.cat([eps.view_as(x), x0.view_as(x)], 1).float()
