"""Named variants `PRDiT-{size}/{P}/{depth}`, `PRDiT-HR-{size}/{P}/{depth}` and `create()`."""

from __future__ import annotations

import re
from types import MappingProxyType
from typing import Any

import torch.nn as nn

from prdit.model.arch import STRIDE, Arch, unwrap
from prdit.model.backbone import PRDiT
from prdit.model.highres import HighResPRDiT

SIZES = {"T": (96, 4), "XS": (192, 6), "S": (384, 6), "B": (768, 12), "L": (1024, 16), "XL": (1152, 16)}
PATCHES = (10, 12, 14, 16)
DEPTHS = (0, 1, 2, 3, 4, 8, 10, 12)


def _variants() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for size, (hidden, heads) in SIZES.items():
        # the tiny demo size also gets non-overlapping 8^3 patches (fastest on a CPU)
        for patch in PATCHES + ((8,) if size == "T" else ()):
            for depth in DEPTHS:
                arch = dict(hidden_size=hidden, num_heads=heads, patch=patch, stride=STRIDE, depth=depth)
                out[f"PRDiT-{size}/{patch}/{depth}"] = dict(kind="prdit", **arch)
                out[f"PRDiT-HR-{size}/{patch}/{depth}"] = dict(kind="highres", **arch)
    # the reference's hand-picked variant with 4^3 patches, stride 4 and no overlap
    out["PRDiT-XS/4/0"] = dict(kind="prdit", hidden_size=192, num_heads=6, patch=4, stride=4, depth=0)
    return out


VARIANTS = MappingProxyType(_variants())
_NAME = re.compile(r"^PRDiT-(HR-)?(T|XS|S|B|L|XL)/(\d+)/(\d+)$")


def create(name: str, input_size: int, **overrides: Any) -> nn.Module:
    """Build the named variant for cubic inputs of edge `input_size`.

    `overrides` replace fields of the variant's `Arch` (e.g. checkpointing=True, pos_max_freq=...) or set
    model options (PRDiT: freeze_local; highres: backbone, timesteps, upsample); anything else is a
    TypeError. A highres variant needs `backbone=` (a stage-2 PRDiT, or the spec dict a model file
    stores) and takes its in_channels unless given.
    """
    if name not in VARIANTS:
        hint = "" if _NAME.match(name) else " (names look like PRDiT-B/12/4 or PRDiT-HR-T/10/1)"
        raise KeyError(f"unknown model variant {name!r}{hint}; patch in {PATCHES}, depth in {DEPTHS}")
    spec = dict(VARIANTS[name])
    kind = spec.pop("kind")
    spec.update(overrides)
    if kind == "highres":
        backbone = spec.get("backbone")
        if isinstance(backbone, dict):  # the spec a model file stores: rebuild the (frozen) backbone first
            backbone = spec["backbone"] = create(
                backbone["name"], backbone["input_size"], **backbone.get("overrides", {})
            )
        if isinstance(backbone, nn.Module):
            spec.setdefault("in_channels", unwrap(backbone).in_channels)
    arch, options = Arch.split(spec)
    model: nn.Module = (HighResPRDiT if kind == "highres" else PRDiT)(input_size, arch, **options)
    model.spec = {"name": name, "input_size": input_size, "overrides": _plain(overrides)}
    return model


def _plain(overrides: dict[str, Any]) -> dict[str, Any]:
    """Overrides as a weights_only-loadable dict (a backbone module becomes its own spec)."""
    out = {}
    for key, value in overrides.items():
        if isinstance(value, nn.Module):
            value = unwrap(value).spec
        out[key] = value
    return out
