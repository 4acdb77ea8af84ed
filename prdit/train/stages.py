"""What each training stage builds, inherits from its parent stage's model file, and trains.

local   PRDiT-*/P/0 at `preprocess.size`, everything trains.
global  PRDiT-*/P/depth at `preprocess.size`; the stage-1 path is copied from models/<ds>/local/model.pt
        and frozen (no gradients are computed through it); only the DiT residual and its timestep head train.
highres PRDiT-HR-* at `preprocess.highres_size` around the frozen models/<ds>/global/model.pt.

Under `protocol: paper` (prdit.protocol) the DiT path is re-initialised with Xavier gain 0.1, the
positional code's top frequency is 0.95 * grid / 2, and attention kernels run in bf16 inside an
fp32/TF32 network; the local stage's model.pt then holds its raw weights (prdit.train.engine), which
stage 2 freezes, as the reference freezes its checkpoint's "model" entry.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

import prdit.model as models
from prdit import paths, topology
from prdit.config import Params
from prdit.errors import PrditError

log = logging.getLogger(__name__)

PARENT = {s.name: s.parent for s in topology.TABLE}


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


def model_dir(dataset: str, stage: str, key: str | None = None) -> Path:
    """Where stage `stage` of `dataset` is trained; `key`: Params.model_key(stage) of an experiment."""
    return paths.model_dir(dataset, stage, key)


def input_size(p: Params, stage: str) -> int:
    if stage != "highres":
        return p.preprocess.size
    if not p.preprocess.highres_size:
        raise StageSetupError(
            "train --stage highres: preprocess.highres_size is null (set it to 2 x preprocess.size)"
        )
    return p.preprocess.highres_size


def parent_path(dataset: str, stage: str, key: str | None = None) -> Path | None:
    """The model file `stage` builds on (`key`: the parent's Params.model_key), None for stage 1."""
    parent = PARENT[stage]
    return None if parent is None else model_dir(dataset, parent, key) / "model.pt"


def build(p: Params, dataset: str, stage: str) -> StageModel:
    """The stage's model on the CPU with its parent loaded and frozen; `trained` names what learns."""

    parent = parent_path(dataset, stage, p.model_key(PARENT[stage]) if PARENT[stage] else None)
    parents: dict[str, str] = {}
    frozen = None
    if parent is not None:
        if not parent.exists():
            raise MissingParentError(
                f"{parent}: the {PARENT[stage]} model this {stage} stage builds on is missing "
                f"(run `prdit train --dataset {dataset} --stage {PARENT[stage]}"
                f"{f' --experiment {p.exp_name}' if p.exp_name else ''}` first)"
            )
        # its architecture and weights, not its bytes: provenance in meta (git commit) never makes a
        # child's last.pt look stale
        parents[str(parent)] = models.content_hash(parent)
        frozen = models.load(parent, map_location="cpu", stage=PARENT[stage], input_size=p.preprocess.size)
    sm = assemble(p, stage, frozen)
    sm.parents = parents
    return sm


def assemble(p: Params, stage: str, frozen: nn.Module | None) -> StageModel:
    """The stage's model around `frozen` (the parent stage's model, None for local), as training builds it.

    `prdit plan` calls this on fake tensors with a freshly assembled parent (no model file needed)."""
    cfg = p.train.stage(stage)
    size = input_size(p, stage)
    overrides = {"checkpointing": True} if cfg.checkpointing else {}
    conventions = p.conventions
    if stage != "local" and conventions.pos_max_freq(size) is not None:
        overrides["pos_max_freq"] = conventions.pos_max_freq(size)
    if frozen is not None:
        frozen.requires_grad_(False)
    if stage == "local":
        model = models.create(cfg.model, input_size=size, **overrides)
    elif stage == "global":
        model = models.create(cfg.model, input_size=size, **overrides)
        if getattr(model, "depth", 1) == 0:
            raise StageSetupError(
                f"train.global.model: {cfg.model} has depth 0; stage 2 needs a DiT (depth >= 1)"
            )
        if conventions.stage2_gain is not None:
            model.init_global(conventions.stage2_gain)
        model.load_local(frozen)
        model.freeze_local()
    else:
        if p.diffusion.timesteps != 1000:  # the bridge maps timesteps between resolutions
            overrides["timesteps"] = p.diffusion.timesteps
        model = models.create(cfg.model, input_size=size, backbone=frozen, **overrides)
        inner = getattr(model, "backbone", None)
        if isinstance(inner, nn.Module):
            inner.requires_grad_(False)
    attention = conventions.training.attention
    if attention is not None:
        from prdit.model.layers import set_attention_kernel_dtype

        set_attention_kernel_dtype(model, attention)
    trained = [n for n, q in model.named_parameters() if q.requires_grad]
    if not trained:
        raise StageSetupError(
            f"train.{stage}.model: {cfg.model} has no trainable parameters for stage {stage}"
        )
    n_all = sum(q.numel() for q in model.parameters())
    n_tr = sum(q.numel() for n, q in model.named_parameters() if q.requires_grad)
    log.info(
        "stage %s: %s at %d^3, %.2fM parameters, %.2fM trained",
        stage,
        cfg.model,
        size,
        n_all / 1e6,
        n_tr / 1e6,
    )
    return StageModel(model, size, trained)
