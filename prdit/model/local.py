"""Stage 1: the local denoiser, a token-wise MLP over raw overlapping patches (no attention)."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from prdit.model.arch import Arch
from prdit.model.layers import SwiGLU, modulate


class LocalDenoiser(nn.Module):
    """Two adaLN-modulated SwiGLU blocks on patch tokens, a residual, a final modulation and a linear head.

    `token_dim` is the raw patch token width (the MLP works in patch space); `cond_dim` is the
    width of the conditioning vector feeding adaLN. From `arch`: the SwiGLU width ratio
    (`local_mlp_ratio`), the output width (`out_dim`) and `checkpointing`. Head and adaLN start at
    zero, so the output is exactly zero at initialisation.
    """

    def __init__(self, arch: Arch, *, token_dim: int, cond_dim: int):
        super().__init__()
        self.checkpointing = arch.checkpointing
        hidden = int(token_dim * arch.local_mlp_ratio)
        out_dim = arch.out_dim
        self.norm1 = nn.LayerNorm(token_dim, elementwise_affine=False, eps=1e-6)
        self.norm2 = nn.LayerNorm(token_dim, elementwise_affine=False, eps=1e-6)
        self.mlp1 = SwiGLU(token_dim, hidden)
        self.mlp2 = SwiGLU(token_dim, hidden)
        self.linear_final = nn.Linear(token_dim, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 6 * token_dim))

    def zero_init(self) -> None:
        for lin in (self.adaLN_modulation[-1], self.linear_final):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, shift2, scale2, shift3, scale3 = self.adaLN_modulation(c).chunk(6, dim=1)
        h = self._block(self.mlp1, self.norm1, x, shift1, scale1)
        h = self._block(self.mlp2, self.norm2, h, shift2, scale2)
        return self.linear_final(modulate(h + x, shift3, scale3))

    def _block(
        self, mlp: nn.Module, norm: nn.Module, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor
    ):
        if self.checkpointing and torch.is_grad_enabled():
            return checkpoint(lambda h: mlp(modulate(norm(h), shift, scale)), x, use_reentrant=False)
        return mlp(modulate(norm(x), shift, scale))
