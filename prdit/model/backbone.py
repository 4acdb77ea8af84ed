"""PRDiT: the stage-1 local denoiser plus (depth > 0) the stage-2 global residual DiT on top of it."""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

from prdit.model.arch import Arch, unwrap
from prdit.model.dit import GlobalDiT
from prdit.model.embed import TimestepEmbedder
from prdit.model.local import LocalDenoiser
from prdit.model.patches import extract_patches, unpatchify

log = logging.getLogger(__name__)


class PRDiT(nn.Module):
    """model(x_t, t) -> [B, 2C, S, S, S]: eps-hat channels first, x0-hat second.

    Built from an `Arch` (see arch.py) for cubic inputs of edge `input_size`.

    Both paths read the same raw overlapping patch tokens (extract size `patch`, stride
    `stride`, reflection padding (patch - stride) / 2) and predict stride^3 output voxels
    per token. With depth > 0 the stage-1 path (shared timestep MLP, its head and the local
    denoiser) is frozen by default and runs under no_grad: the DiT learns only the residual.
    """

    def __init__(self, input_size: int, arch: Arch, *, freeze_local: bool = True):
        super().__init__()
        self.arch, self.input_size = arch, input_size
        self.pad, self.grid = arch.pad(input_size), arch.grid(input_size)
        self.patch, self.stride, self.in_channels = arch.patch, arch.stride, arch.in_channels
        self.depth = depth = arch.depth
        token_dim = arch.patch_dim
        self.t_embed = TimestepEmbedder(arch.hidden_size, token_dim, arch.hidden_size if depth else None)
        self.local = LocalDenoiser(arch, token_dim=token_dim, cond_dim=token_dim)
        self.dit = GlobalDiT(arch, token_dim=token_dim, grid=self.grid) if depth else None
        self._init_weights()
        self.local_frozen = False
        if depth and freeze_local:
            self.freeze_local()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for lin in (self.t_embed.shared[0], self.t_embed.local_head, self.t_embed.global_head):
            if lin is not None:
                nn.init.normal_(lin.weight, std=0.02)
        self.local.zero_init()
        if self.dit is not None:
            self.dit.zero_init()

    @torch.no_grad()
    def init_global(self, gain: float) -> None:
        """Re-initialise the stage-2 path with Xavier gain `gain` (the reference uses 0.1 before stage 2).

        Every linear layer of the DiT gets Xavier-uniform(gain) and zero bias, its timestep head N(0, 0.02);
        then the adaLN gates and the output head go back to zero and the patch skip to gain 0.1, so the
        residual still starts at exactly zero. The stage-1 path is untouched.
        """
        if self.dit is None:
            raise ValueError("init_global: this model has no DiT (depth 0)")
        for m in self.dit.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight, gain=gain)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.t_embed.global_head.weight, std=0.02)
        nn.init.zeros_(self.t_embed.global_head.bias)
        self.dit.zero_init()

    def local_modules(self) -> list[nn.Module]:
        """The stage-1 path: what stage 2 freezes and what `load_local` copies."""
        return [self.t_embed.shared, self.t_embed.local_head, self.local]

    def freeze_local(self) -> None:
        for m in self.local_modules():
            m.requires_grad_(False)
        self.local_frozen = True

    @torch.no_grad()
    def load_local(self, stage1: nn.Module) -> None:
        """Copy the stage-1 path from a trained depth-0 PRDiT of the same patch geometry."""
        stage1 = unwrap(stage1)
        if (stage1.patch, stage1.stride, stage1.in_channels) != (self.patch, self.stride, self.in_channels):
            raise ValueError(
                f"stage-1 model has patch/stride/channels {(stage1.patch, stage1.stride, stage1.in_channels)}, "
                f"this model {(self.patch, self.stride, self.in_channels)}"
            )
        if stage1.t_embed.shared[0].out_features != self.t_embed.shared[0].out_features:
            raise ValueError("stage-1 model has a different hidden size (timestep MLP width)")
        for dst, src in zip(self.local_modules(), stage1.local_modules()):
            dst.load_state_dict(src.state_dict())

    def _local_path(
        self, x: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        tokens = extract_patches(x, self.patch, self.stride, self.pad)
        temb = self.t_embed(t)
        return tokens, temb, self.local(tokens, self.t_embed.local_head(temb))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.shape[1:] != (self.in_channels,) + (self.input_size,) * 3:
            raise ValueError(
                f"expected input [B, {self.in_channels}, {self.input_size}^3], got {tuple(x.shape)}"
            )
        if self.local_frozen:
            with torch.no_grad():
                tokens, temb, out = self._local_path(x, t)
        else:
            tokens, temb, out = self._local_path(x, t)
        if self.dit is not None:
            out = out + self.dit(tokens, self.t_embed.global_head(temb))
        return unpatchify(out, 2 * self.in_channels, self.stride, self.grid)
