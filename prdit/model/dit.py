"""Stage 2: the global residual DiT over the same raw patch tokens."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from prdit.model.arch import Arch
from prdit.model.layers import Attention, Mlp, grid_pos_embed, modulate


class PatchEmbed(nn.Module):
    """Raw patch token -> hidden: a GELU MLP (ratio 4) plus a bias-free linear skip, then LayerNorm."""

    def __init__(self, token_dim: int, hidden: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.fc1 = nn.Linear(token_dim, int(hidden * mlp_ratio))
        self.fc2 = nn.Linear(int(hidden * mlp_ratio), hidden)
        self.skip = nn.Linear(token_dim, hidden, bias=False)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.fc2(F.gelu(self.fc1(x), approximate="tanh")) + self.skip(x))


class DiTBlock(nn.Module):
    """adaLN-Zero transformer block: gated self-attention and gated MLP."""

    def __init__(self, hidden: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden, num_heads)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden, int(hidden * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = (
            self.adaLN_modulation(c).unsqueeze(1).chunk(6, dim=2)
        )
        x = x + gate_a * self.attn(self.norm1(x) * (1 + scale_a) + shift_a)
        return x + gate_m * self.mlp(self.norm2(x) * (1 + scale_m) + shift_m)


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm and a linear map to the output patch."""

    def __init__(self, hidden: int, out_dim: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class GlobalDiT(nn.Module):
    """Patch embedding + resolution-normalised 3D sin/cos positions + DiT blocks + final layer.

    `token_dim` is the raw patch token width, `grid` the tokens per axis; everything else (width,
    depth, heads, MLP ratio, positional frequency, output width, checkpointing) comes from `arch`.

    Zero-initialised gates and head: the residual it adds starts at exactly zero.
    """

    def __init__(self, arch: Arch, *, token_dim: int, grid: int):
        super().__init__()
        hidden = arch.hidden_size
        self.patch_embed = PatchEmbed(token_dim, hidden)
        pos = grid_pos_embed(grid, hidden, arch.pos_max_freq)[None]
        self.register_buffer("pos_embed", pos, persistent=False)
        self.blocks = nn.ModuleList(
            DiTBlock(hidden, arch.num_heads, arch.mlp_ratio) for _ in range(arch.depth)
        )
        self.final_layer = FinalLayer(hidden, arch.out_dim)
        self.checkpointing = arch.checkpointing

    def zero_init(self) -> None:
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for lin in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        nn.init.xavier_uniform_(self.patch_embed.skip.weight, gain=0.1)

    def forward(self, tokens: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.patch_embed(tokens) + self.pos_embed.to(tokens.dtype)
        for block in self.blocks:
            if self.checkpointing and torch.is_grad_enabled():
                h = checkpoint(block, h, c, use_reentrant=False)
            else:
                h = block(h, c)
        return self.final_layer(h, c)
