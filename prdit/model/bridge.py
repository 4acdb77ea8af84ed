"""Resolution bridge: a 2S-voxel noisy volume at angle b seen as an S-voxel one at the backbone's own level.

2x average pooling keeps the signal coefficient cos b and divides the noise std by sqrt(8), so the
pooled volume has the noise-to-signal ratio tan b / sqrt(8). With tan b' = tan b / sqrt(8) and a
rescale by cos b' / cos b it lies exactly on the backbone's marginal at angle b'. The backbone is
then called with the nearest integer timestep to b' (it only ever saw integer timesteps; the
rounding moves the angle by at most pi / (4 T), far below the spacing of any sampler grid).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from prdit.diffusion.ian import angle


def bridge_angle(beta: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """b' with tan b' = tan b / sqrt(factor^3) (exact at b = pi/2 as well)."""
    return torch.atan2(torch.sin(beta), torch.cos(beta) * math.sqrt(factor**3))


def bridge(
    x_t: torch.Tensor, t: torch.Tensor, timesteps: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pool and rescale x_t [B, C, 2S, 2S, 2S] at timesteps t -> (x_low, t_low nearest int, exact b')."""
    beta = angle(t, timesteps, dtype=torch.float64)
    beta_low = bridge_angle(beta)
    scale = (torch.cos(beta_low) / torch.cos(beta).clamp_min(1e-12)).to(x_t.dtype)
    x_low = F.avg_pool3d(x_t, 2) * scale.view(-1, 1, 1, 1, 1)
    t_low = torch.round(beta_low * (2 * timesteps / math.pi)).clamp_(0, timesteps - 1).long()
    return x_low, t_low, beta_low


def lift(v: torch.Tensor, refinements: int = 2) -> torch.Tensor:
    """Smooth 2x upsampling whose 2x average pool gives `v` back exactly (up to float rounding).

    Plain trilinear upsampling blurs: its pooled version is a smoothed v, so a 2S trajectory pulled
    towards up(x0-hat) would be pulled towards a blurred backbone estimate at every step. Two
    back-projection refinements (u += up(v - pool(u))) remove most of that blur smoothly; a final
    nearest-neighbour correction removes the rest, so pool(lift(v)) = v and the pooled trajectory
    sees the backbone's own estimate.
    """

    def up(a: torch.Tensor) -> torch.Tensor:
        return F.interpolate(a, scale_factor=2, mode="trilinear", align_corners=False)

    u = up(v)
    for _ in range(refinements):
        u = u + up(v - F.avg_pool3d(u, 2))
    return u + F.interpolate(v - F.avg_pool3d(u, 2), scale_factor=2, mode="nearest")
