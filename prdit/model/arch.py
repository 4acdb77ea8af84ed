"""`Arch`: one frozen architecture object every PRDiT network and block is built from.

What used to travel as 9-13 positional constructor arguments (and could be dropped on the way, as
`checkpointing` once was) is one value: `registry.create` builds it from a variant plus overrides and
hands it to `PRDiT` / `HighResPRDiT`, which hand the same object to `LocalDenoiser` and `GlobalDiT`,
so every field reaches every block that reads it. It does not hold the input size: positions are
resolution-normalised, so one architecture runs at several sizes (`grid(input_size)`).

Also here: `unwrap`, the one place that strips torch.compile / DDP wrappers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from prdit.model.patches import check_geometry

STRIDE = (
    8  # the patch-token stride of every variant: each token predicts STRIDE^3 voxels (seams every STRIDE)
)


@dataclass(frozen=True)
class Arch:
    """Architecture of a PRDiT network (stage-1 local path, stage-2 DiT, stage-3 residual branch).

    hidden_size, num_heads, depth: the DiT width, heads and number of blocks (depth 0: local path only);
    hidden_size is also the timestep-MLP width. patch, stride: raw overlapping patch tokens of edge
    `patch` taken every `stride` voxels, each predicting stride^3 output voxels. in_channels: image
    channels. mlp_ratio: DiT block MLP width / hidden_size. local_mlp_ratio: local-denoiser SwiGLU width /
    token width. pos_max_freq: highest positional frequency (cycles per unit length). checkpointing:
    activation checkpointing in every local and DiT block while gradients are on.
    """

    hidden_size: int
    num_heads: int
    depth: int
    patch: int = 12
    stride: int = STRIDE
    in_channels: int = 1
    mlp_ratio: float = 4.0
    local_mlp_ratio: float = 1.0
    pos_max_freq: float = 7.6
    checkpointing: bool = False

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_heads", "patch", "stride", "in_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"architecture {name} must be a positive integer, got {value!r}")
        if isinstance(self.depth, bool) or not isinstance(self.depth, int) or self.depth < 0:
            raise ValueError(f"architecture depth must be an integer >= 0, got {self.depth!r}")
        for name in ("mlp_ratio", "local_mlp_ratio", "pos_max_freq"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"architecture {name} must be a positive number, got {value!r}")
        if not isinstance(self.checkpointing, bool):
            raise ValueError(f"architecture checkpointing must be true or false, got {self.checkpointing!r}")

    @classmethod
    def split(cls, spec: dict[str, Any]) -> tuple[Arch, dict[str, Any]]:
        """(the Arch of `spec`'s architecture fields, the remaining model options)."""
        names = {f.name for f in dataclasses.fields(cls)}
        arch = cls(**{k: v for k, v in spec.items() if k in names})
        return arch, {k: v for k, v in spec.items() if k not in names}

    def replace(self, **changes: Any) -> Arch:
        return dataclasses.replace(self, **changes)

    @property
    def patch_dim(self) -> int:
        """Width of one raw patch token of the image: in_channels * patch^3."""
        return self.in_channels * self.patch**3

    @property
    def out_dim(self) -> int:
        """Width of one output token: eps-hat and x0-hat for the stride^3 voxels of its cell."""
        return 2 * self.in_channels * self.stride**3

    def grid(self, input_size: int) -> int:
        """Tokens per axis at `input_size` (ValueError unless the patch geometry fits it)."""
        self.pad(input_size)
        return input_size // self.stride

    def pad(self, input_size: int) -> int:
        """Reflection padding of the patch extraction at `input_size` (checks the geometry)."""
        return check_geometry(input_size, self.patch, self.stride)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under torch.compile / DistributedDataParallel wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner
