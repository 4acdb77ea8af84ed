"""Stage 3: a frozen S^3 PRDiT reused at (2S)^3 through the bridge, plus a trainable residual branch.

The model starts exactly at its backbone: with the branch at its (zero-headed) initialisation,
x0-hat is the upsampled backbone x0-hat and eps-hat is what x_t and that x0-hat imply under the IaN
relation x_t = cos b x0 + sin b eps, so an untrained branch already samples at the upsampled S^3
quality and training only adds detail. The branch's two heads are residuals on top of that pair.

Two details make "the upsampled backbone x0-hat" carry the backbone's quality:
- the backbone's two heads are first made consistent at its own level (`consistent_x0`): a trained
  network's eps head and x0 head disagree, and sampling with eps implied by the x0 head alone is
  visibly worse than the backbone's own sampler; projecting the pair onto x = cos b x0 + sin b eps
  leaves the sampler's direction sin b x0 - cos b eps unchanged, so the 2S model inherits exactly the
  backbone's sampling dynamics;
- the upsampling is `bridge.lift` (pool(lift(v)) = v), not plain trilinear, whose blur would be
  applied again at every sampler step.

Numerical safety near t = 0: eps = (x_t - cos b x0) / sin b divides by sin b, which is 0 at t = 0 and
turns any x0-hat error into a cot b times larger eps error. Below sin b = EPS_GUARD_SIN the division is
replaced by a multiplication with sin b / EPS_GUARD_SIN^2: continuous at the threshold, exactly 0 at
t = 0 (where eps is independent of x_t, so 0 is its best estimate), and never amplifying an error by
more than 1 / EPS_GUARD_SIN. The threshold lies below t = 13 of T = 1000; samplers with fewer than
about 75 steps never evaluate the model there.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from prdit.diffusion.ian import angle
from prdit.model.arch import Arch, unwrap
from prdit.model.bridge import bridge, lift
from prdit.model.dit import GlobalDiT
from prdit.model.embed import TimestepEmbedder
from prdit.model.local import LocalDenoiser
from prdit.model.patches import extract_patches, unpatchify

EPS_GUARD_SIN = 0.02  # below this sin(b), eps-hat is shrunk towards 0 instead of divided by sin(b)


def implied_eps(x_t: torch.Tensor, x0_hat: torch.Tensor, t: torch.Tensor, timesteps: int) -> torch.Tensor:
    """eps with x_t = cos b x0_hat + sin b eps, guarded as sin b -> 0 (see the module docstring)."""
    beta = angle(t, timesteps, dtype=torch.float64)
    sin, cos = torch.sin(beta), torch.cos(beta)
    scale = sin / torch.clamp(sin.square(), min=EPS_GUARD_SIN**2)  # 1 / sin b above the threshold
    shape = (-1,) + (1,) * (x_t.ndim - 1)
    cos, scale = cos.to(x_t.dtype).view(shape), scale.to(x_t.dtype).view(shape)
    return (x_t - cos * x0_hat) * scale


def consistent_x0(x: torch.Tensor, out: torch.Tensor, t: torch.Tensor, timesteps: int) -> torch.Tensor:
    """x0 of the pair nearest to the network's (eps-hat, x0-hat) that satisfies x = cos b x0 + sin b eps.

    With r = x - cos b x0-hat - sin b eps-hat, the pair (x0-hat + cos b r, eps-hat + sin b r) is that
    projection; its sampler direction sin b x0 - cos b eps equals the network's own.
    """
    c = x.shape[1]
    beta = angle(t, timesteps, dtype=torch.float64)
    shape = (-1,) + (1,) * (x.ndim - 1)
    cos, sin = torch.cos(beta).to(x.dtype).view(shape), torch.sin(beta).to(x.dtype).view(shape)
    eps_hat, x0_hat = out[:, :c].to(x.dtype), out[:, c:].to(x.dtype)
    return x0_hat + cos * (x - cos * x0_hat - sin * eps_hat)


class ResidualBranch(nn.Module):
    """Local MLP path + global DiT path on patch tokens of [x_t, prior] -> (eps, x0 - prior) per voxel.

    Built from the highres model's `Arch`; its tokens stack x_t and the prior, 2 * in_channels channels.
    """

    def __init__(self, input_size: int, arch: Arch):
        super().__init__()
        self.pad, self.grid = arch.pad(input_size), arch.grid(input_size)
        self.patch, self.stride, self.out_channels = arch.patch, arch.stride, 2 * arch.in_channels
        token_dim = 2 * arch.patch_dim  # noisy volume and prior, stacked as channels
        hidden = arch.hidden_size
        self.t_embed = TimestepEmbedder(hidden, hidden, hidden if arch.depth else None)
        self.local = LocalDenoiser(arch, token_dim=token_dim, cond_dim=hidden)
        self.dit = GlobalDiT(arch, token_dim=token_dim, grid=self.grid) if arch.depth else None
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.local.zero_init()
        if self.dit is not None:
            self.dit.zero_init()

    def forward(self, x_t: torch.Tensor, prior: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tokens = extract_patches(
            torch.cat([x_t, prior.to(x_t.dtype)], dim=1), self.patch, self.stride, self.pad
        )
        temb = self.t_embed(t)
        out = self.local(tokens, self.t_embed.local_head(temb))
        if self.dit is not None:
            out = out + self.dit(tokens, self.t_embed.global_head(temb))
        return unpatchify(out, self.out_channels, self.stride, self.grid)


class HighResPRDiT(nn.Module):
    """model(x_t, t) at 2S: x0-hat = up(backbone x0-hat at b') + branch residual,
    eps-hat = implied_eps(x_t, x0-hat) + branch eps residual.

    Only the branch has trainable parameters; the backbone runs under no_grad. Zero-initialised
    branch heads make the pair start as the one the upsampled backbone implies.
    """

    def __init__(
        self,
        input_size: int,
        arch: Arch,
        *,
        backbone: nn.Module,
        timesteps: int = 1000,
        upsample: str = "lift",
    ):
        super().__init__()
        backbone = unwrap(backbone)
        if not hasattr(backbone, "input_size") or 2 * backbone.input_size != input_size:
            raise ValueError(
                f"highres input_size {input_size} must be twice the backbone's "
                f"({getattr(backbone, 'input_size', '?')})"
            )
        if arch.in_channels != backbone.in_channels:
            raise ValueError(
                f"highres in_channels {arch.in_channels} differs from the backbone's ({backbone.in_channels})"
            )
        self.backbone = backbone.requires_grad_(False)
        self.arch, self.input_size, self.in_channels = arch, input_size, arch.in_channels
        self.timesteps = timesteps
        if upsample not in ("lift", "trilinear", "nearest"):
            raise ValueError(f"upsample must be lift, trilinear or nearest, got {upsample!r}")
        self.upsample = upsample
        self.branch = ResidualBranch(input_size, arch)

    def train(self, mode: bool = True) -> HighResPRDiT:
        super().train(mode)
        self.backbone.eval()  # frozen: always inference behaviour
        return self

    @torch.no_grad()
    def prior(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The frozen backbone's (consistent) x0-hat at the bridged level, upsampled to this model's size."""
        x_low, t_low, _ = bridge(x_t, t, self.timesteps)
        x0_low = consistent_x0(x_low, self.backbone(x_low, t_low), t_low, self.timesteps)
        if self.upsample == "lift":
            return lift(x0_low)
        mode = (
            dict(mode=self.upsample, align_corners=False)
            if self.upsample != "nearest"
            else dict(mode="nearest")
        )
        return F.interpolate(x0_low, scale_factor=2, **mode)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x_t.shape[1:] != (self.in_channels,) + (self.input_size,) * 3:
            raise ValueError(
                f"expected input [B, {self.in_channels}, {self.input_size}^3], got {tuple(x_t.shape)}"
            )
        prior = self.prior(x_t, t)
        out = self.branch(x_t, prior, t)
        c = self.in_channels
        x0_hat = out[:, c:] + prior
        eps_hat = out[:, :c] + implied_eps(x_t, x0_hat, t, self.timesteps)
        return torch.cat([eps_hat, x0_hat], dim=1)
