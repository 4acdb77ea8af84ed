"""Timestep embedding: sinusoidal features, one shared MLP, separate heads for the local and global paths."""

from __future__ import annotations

import math

import torch
import torch.nn as nn


def timestep_features(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features [B, dim] (cos first) of (possibly fractional) timesteps [B]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """Shared Linear+SiLU on the sinusoidal features, then one linear head per branch.

    The split lets stage 2 freeze the shared MLP and the local head while its own head trains.
    """

    def __init__(self, hidden: int, local_dim: int, global_dim: int | None, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.shared = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU())
        self.local_head = nn.Linear(hidden, local_dim)
        self.global_head = nn.Linear(hidden, global_dim) if global_dim else None

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Shared features [B, hidden]; apply `local_head` / `global_head` on them."""
        return self.shared(timestep_features(t, self.freq_dim))
