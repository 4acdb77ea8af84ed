"""What each training stage builds, inherits from its parent stage's model file, and trains.

local   PRDiT-*/P/0 at `preprocess.size`, everything trains.
global  PRDiT-*/P/depth at `preprocess.size`; the stage-1 path is copied from models/<ds>/local/model.pt
        and frozen (no gradients are computed through it); only the DiT residual and its timestep head train.
highres PRDiT-HR-* at `preprocess.highres_size` around the frozen models/<ds>/global/model.pt.

Under `protocol: paper` (prdit.protocol) the DiT path is re-initialised with Xavier gain 0.1, the
positional code's top frequency is 0.95 * grid / 2, and attention kernels run in bf16 inside an
fp32/TF32 network; the local stage's model.pt then holds its raw weights (prdit.train.engine), which
stage 2 freezes, as the reference freezes its checkpoint's "model" entry.

This module takes explicit values (a StageSpec, the parent's model file); prdit.stages._models maps the
parameters and the project layout onto them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

import prdit.model as models
from prdit import topology
from prdit.errors import PrditError

log = logging.getLogger(__name__)

PARENT = {s.name: s.parent for s in topology.TABLE}
BRIDGE_TIMESTEPS = 1000  # the highres bridge's own timestep count: other schedules are passed to it


class StageSetupError(PrditError, ValueError):
    """The stage cannot be built from these parameters."""


class MissingParentError(PrditError, FileNotFoundError):
    """The model file of the stage this one builds on is not there."""


@dataclass
class StageModel:
    model: nn.Module
    input_size: int
    trained: list[str]  # parameter names this stage optimises
    parents: dict[str, str] = field(default_factory=dict)  # parent model file -> its content_hash


@dataclass(frozen=True)
class StageSpec:
    """What `assemble` builds for one stage, as explicit values (the stage layer maps the parameters).

    `model`: the registry name (train.<stage>.model); `pos_max_freq`: the positional code's top frequency
    of stages 2 and 3 (None: the model's own); `stage2_gain`: the Xavier gain stage 2 re-initialises its
    DiT path with (None: as built); `timesteps`: the diffusion's; `attention`: the dtype of the attention
    kernels (None: as the network).
    """

    stage: str
    model: str
    input_size: int
    checkpointing: bool = False
    pos_max_freq: float | None = None
    stage2_gain: float | None = None
    timesteps: int = BRIDGE_TIMESTEPS
    attention: torch.dtype | None = None


def load_parent(
    parent: Path, stage: str, input_size: int, rerun: str = ""
) -> tuple[nn.Module, dict[str, str]]:
    """The model `stage` builds on, from its file `parent` (a model at `input_size`), on the CPU, and
    {file: content_hash}; `rerun` ends the MissingParentError's message (how to make the file)."""
    if not parent.exists():
        raise MissingParentError(
            f"{parent}: the {PARENT[stage]} model this {stage} stage builds on is missing{rerun}"
        )
    # its architecture and weights, not its bytes: provenance in meta (git commit) never makes a
    # child's last.pt look stale
    hashes = {str(parent): models.content_hash(parent)}
    return models.load(parent, map_location="cpu", stage=PARENT[stage], input_size=input_size), hashes


def assemble(spec: StageSpec, frozen: nn.Module | None) -> StageModel:
    """The stage's model around `frozen` (the parent stage's model, None for local), as training builds it.

    `prdit plan` calls this on fake tensors with a freshly assembled parent (no model file needed)."""
    stage, name, size = spec.stage, spec.model, spec.input_size
    overrides = {"checkpointing": True} if spec.checkpointing else {}
    if stage != "local" and spec.pos_max_freq is not None:
        overrides["pos_max_freq"] = spec.pos_max_freq
    if frozen is not None:
        frozen.requires_grad_(False)
    if stage == "local":
        model = models.create(name, input_size=size, **overrides)
    elif stage == "global":
        model = models.create(name, input_size=size, **overrides)
        if getattr(model, "depth", 1) == 0:
            raise StageSetupError(f"train.global.model: {name} has depth 0; stage 2 needs a DiT (depth >= 1)")
        if spec.stage2_gain is not None:
            model.init_global(spec.stage2_gain)
        model.load_local(frozen)
        model.freeze_local()
    else:
        if spec.timesteps != BRIDGE_TIMESTEPS:  # the bridge maps timesteps between resolutions
            overrides["timesteps"] = spec.timesteps
        model = models.create(name, input_size=size, backbone=frozen, **overrides)
        inner = getattr(model, "backbone", None)
        if isinstance(inner, nn.Module):
            inner.requires_grad_(False)
    if spec.attention is not None:
        from prdit.model.layers import set_attention_kernel_dtype

        set_attention_kernel_dtype(model, spec.attention)
    trained = [n for n, q in model.named_parameters() if q.requires_grad]
    if not trained:
        raise StageSetupError(f"train.{stage}.model: {name} has no trainable parameters for stage {stage}")
    n_all = sum(q.numel() for q in model.parameters())
    n_tr = sum(q.numel() for n, q in model.named_parameters() if q.requires_grad)
    log.info(
        "stage %s: %s at %d^3, %.2fM parameters, %.2fM trained",
        stage,
        name,
        size,
        n_all / 1e6,
        n_tr / 1e6,
    )
    return StageModel(model, size, trained)
