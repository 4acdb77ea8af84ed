"""The training stages' models from the parameters and the project layout, shared by `prdit train` and
`prdit plan`: where each stage's model lives, its input size, and the StageSpec (prdit.train.stages) that
params.yaml makes of train.<stage>, preprocess, diffusion and the protocol's conventions."""

from __future__ import annotations

from pathlib import Path

from prdit import paths
from prdit.config import Params
from prdit.data.dataset import VolumeDataset
from prdit.train.stages import PARENT, StageModel, StageSetupError, StageSpec, assemble, load_parent


def input_size(p: Params, stage: str) -> int:
    """The cube size `stage` trains at: preprocess.size, the highres stage's preprocess.highres_size."""
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
    return None if parent is None else paths.model_file(dataset, parent, key)


def volume_dataset(dataset: str, size: int, split: str) -> VolumeDataset:
    """The training cache of `split` of `dataset` at `size`, where the layout puts its files."""
    return VolumeDataset(paths.processed(dataset, size), paths.splits(dataset, split), size, dataset, split)


def stage_spec(p: Params, stage: str) -> StageSpec:
    """What the parameters say `stage`'s model is (train.<stage>, its input size, the protocol's conventions)."""
    cfg = p.train.stage(stage)
    size = input_size(p, stage)
    conventions = p.conventions
    return StageSpec(
        stage=stage,
        model=cfg.model,
        input_size=size,
        checkpointing=bool(cfg.checkpointing),
        pos_max_freq=conventions.pos_max_freq(size) if stage != "local" else None,
        stage2_gain=conventions.stage2_gain,
        timesteps=p.diffusion.timesteps,
        attention=conventions.training.attention,
    )


def build(p: Params, dataset: str, stage: str) -> StageModel:
    """The stage's model on the CPU with its parent's model file (of this experiment) loaded and frozen."""
    parent_stage = PARENT[stage]
    parent = parent_path(dataset, stage, p.model_key(parent_stage) if parent_stage else None)
    rerun = (
        f" (run `prdit train --dataset {dataset} --stage {parent_stage}"
        f"{f' --experiment {p.exp_name}' if p.exp_name else ''}` first)"
    )
    # the parent first, then the stage's own settings (a missing parent is named before a bad setting)
    frozen, parents = (None, {}) if parent is None else load_parent(parent, stage, p.preprocess.size, rerun)
    sm = assemble(stage_spec(p, stage), frozen)
    sm.parents = parents
    return sm
