"""The stage topology, declared once: which training stage builds on which, at which size, and which model
generates each working size. config, the rules' input functions (workflow/rules/common.smk), `prdit train`,
`prdit sample`, `prdit plan`, the dvc.yaml writer and the tests read this table.

local   stage 1: the patch denoiser, at preprocess.size, trained from scratch
global  stage 2: the residual DiT on the frozen stage 1, at preprocess.size; samples that size
highres stage 3: the residual branch on the frozen stage 2, at preprocess.highres_size; samples that size
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    name: str
    parent: str | None  # the stage whose model this one freezes and builds on
    size_key: str  # the preprocess key of the edge length it trains at
    samples: bool  # its model generates its size (prdit sample)


TABLE: tuple[Stage, ...] = (
    Stage("local", parent=None, size_key="size", samples=False),
    Stage("global", parent="local", size_key="size", samples=True),
    Stage("highres", parent="global", size_key="highres_size", samples=True),
)
STAGES: tuple[str, ...] = tuple(s.name for s in TABLE)
BY_NAME = {s.name: s for s in TABLE}


def parent(stage: str) -> str | None:
    """The stage `stage` builds on (None for stage 1)."""
    return BY_NAME[stage].parent


def lineage(stage: str) -> list[str]:
    """`stage` and every stage under it, the root first: ["local", "global"] for "global"."""
    chain = [stage]
    while (up := parent(chain[0])) is not None:
        chain.insert(0, up)
    return chain


def present(highres_size: int | None) -> tuple[str, ...]:
    """The stages a config trains: all of them, or without the highres stage when highres_size is null."""
    return tuple(s.name for s in TABLE if s.size_key != "highres_size" or highres_size)


def size_of(stage: str, size: int, highres_size: int | None) -> int | None:
    """The edge length `stage` trains at (None: the config has no such size)."""
    return size if BY_NAME[stage].size_key == "size" else highres_size


def sampler(size: int, base: int, highres_size: int | None) -> str:
    """The stage whose model generates `size`: the sampling stage trained at that size."""
    for s in TABLE:
        if s.samples and size_of(s.name, base, highres_size) == size:
            return s.name
    sizes = [base] + ([highres_size] if highres_size else [])
    raise ValueError(
        f"size {size} is not one of this config's sizes {sizes} (preprocess.size / highres_size)"
    )
