"""Small building blocks shared by the local denoiser, the global DiT and the highres branch."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: per-sample shift/scale [B, C] applied to tokens [B, N, C]."""
    return torch.addcmul(shift.unsqueeze(1), x, 1 + scale.unsqueeze(1))


class SwiGLU(nn.Module):
    """Gated MLP (SiLU gate) with a LayerNorm on the hidden features, as used by the local denoiser."""

    def __init__(self, dim: int, hidden: int, out: int | None = None):
        super().__init__()
        self.fc1_g = nn.Linear(dim, hidden)
        self.fc1_x = nn.Linear(dim, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.fc2 = nn.Linear(hidden, out or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.norm(F.silu(self.fc1_g(x)) * self.fc1_x(x)))


class Mlp(nn.Module):
    """Transformer feed-forward: Linear, tanh-GELU, Linear."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Attention(nn.Module):
    """Multi-head self-attention through SDPA (flash / memory-efficient kernels, O(N) memory)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.kernel_dtype: torch.dtype | None = None  # on CUDA, run only the SDPA kernel in this dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        dt = self.kernel_dtype
        if dt is not None and q.is_cuda and q.dtype != dt:
            x = F.scaled_dot_product_attention(q.to(dt), k.to(dt), v.to(dt)).to(q.dtype)
        else:
            x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


def set_attention_kernel_dtype(model: nn.Module, dtype: torch.dtype | None) -> int:
    """Run every attention kernel of `model` in `dtype` on CUDA (the reference: bf16 flash attention inside
    an fp32/TF32 network); returns how many attention layers were set."""
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    for m in layers:
        m.kernel_dtype = dtype
    return len(layers)


def sincos_code(coords: torch.Tensor, dim: int, max_freq: float) -> torch.Tensor:
    """Sin/cos code of normalised coordinates [N, 3] in [0, 1] (x, y, z) -> [N, dim].

    Frequencies are log-spaced from 1 to `max_freq` cycles per unit length and do not depend on
    the grid, so a coordinate maps to the same code at every resolution. When dim is not a
    multiple of 6 the last dim % 6 channels are zero.
    """
    nf = dim // 6
    if nf < 1:
        raise ValueError(f"positional code needs dim >= 6, got {dim}")
    freqs = 2 * math.pi * max_freq ** torch.linspace(0.0, 1.0, nf, dtype=torch.float64)
    parts = []
    for axis in range(3):
        arg = coords[:, axis : axis + 1].double() * freqs
        parts += [torch.sin(arg), torch.cos(arg)]
    code = torch.cat(parts, dim=1).float()
    return F.pad(code, (0, dim - code.shape[1]))


def grid_pos_embed(grid: int, dim: int, max_freq: float) -> torch.Tensor:
    """Code of the token-cell centres of a grid^3 token grid, token order (z, y, x) -> [grid^3, dim]."""
    c = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    return sincos_code(torch.stack([x, y, z], dim=-1).reshape(-1, 3), dim, max_freq)
