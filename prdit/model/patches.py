"""Overlapping cubic patch tokens and their inverse (non-overlapping output patches)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def check_geometry(input_size: int, extract: int, stride: int) -> int:
    """Validate a patch geometry and return the reflection padding (extract - stride) / 2."""
    if extract < stride or (extract - stride) % 2:
        raise ValueError(f"patch size {extract} must be >= stride {stride} with an even difference")
    pad = (extract - stride) // 2
    if input_size % stride:
        raise ValueError(f"input_size {input_size} must be a multiple of the stride {stride}")
    if pad >= input_size:
        raise ValueError(f"input_size {input_size} is too small for reflection padding {pad}")
    return pad


def extract_patches(x: torch.Tensor, extract: int, stride: int, pad: int) -> torch.Tensor:
    """[B, C, S, S, S] -> tokens [B, (S/stride)^3, C*extract^3], token order (z, y, x), features (c, dz, dy, dx).

    unfold only makes strided views; the single copy happens in the final reshape.
    """
    if pad:
        x = F.pad(x, (pad,) * 6, mode="reflect")
    b, c = x.shape[:2]
    p = x.unfold(2, extract, stride).unfold(3, extract, stride).unfold(4, extract, stride)
    # p: [B, C, gz, gy, gx, dz, dy, dx]
    p = p.permute(0, 2, 3, 4, 1, 5, 6, 7)
    return p.reshape(b, -1, c * extract**3)


def unpatchify(tokens: torch.Tensor, channels: int, patch: int, grid: int) -> torch.Tensor:
    """Tokens [B, grid^3, patch^3*C] (features (dz, dy, dx, c)) -> volume [B, C, grid*patch, ...]."""
    b = tokens.shape[0]
    x = tokens.view(b, grid, grid, grid, patch, patch, patch, channels)
    x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)
    return x.reshape(b, channels, grid * patch, grid * patch, grid * patch)
