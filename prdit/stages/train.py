"""`prdit train`: train one stage of a dataset as configured (the loop: prdit.train.engine.fit).

`job_from_params` turns the parameters into the engine's Job (settings, resume fingerprint, provenance);
`run` sets up the processes, builds the stage's model and data and logs the run to MLflow.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os

import torch

from prdit import paths, precision, tracking
from prdit.config import Params, weight_fields
from prdit.device import announce, describe_device
from prdit.plan.steps import micro_batch
from prdit.stages import _models
from prdit.train import distributed, signals
from prdit.train.engine import fit
from prdit.train.job import Job, NullRun
from prdit.train.provenance import data_hash
from prdit.train.signals import StopRequest

log = logging.getLogger(__name__)


def job_from_params(
    p: Params,
    dataset: str,
    stage: str,
    parents: dict[str, str] | None = None,
    processes: int = 1,
    gpu_memory_gib: float | None = None,
) -> Job:
    """The Job of `stage` on `dataset` from params.yaml, with its resume fingerprint and provenance.

    `parents` maps the parent model files to their sha256 (StageModel.parents). The fingerprint holds
    every setting that decides the weights (config.weight_fields: all but those marked NOT_WEIGHTS). The
    accumulation the loop runs is train.<stage>.micro_batch's choice for `processes` processes on a GPU
    of `gpu_memory_gib` (prdit.train.batching); the fingerprint keeps the configured one.
    """

    c, s = p.train.common, p.train.stage(stage)
    size = _models.input_size(p, stage)
    splits = {split: paths.splits(dataset, split) for split in ("train", "val")}
    extra = {
        "data_hash": data_hash(splits, paths.processed(dataset, size)),
        "parents": dict(parents or {}),
    }
    used = p.used(f"train-{stage}")
    fingerprint = {
        "stage": stage,
        "dataset": dataset,
        "input_size": size,
        **weight_fields(s),
        **weight_fields(c),
        "diffusion": dataclasses.asdict(p.diffusion),
        **(
            {"protocol": p.protocol} if p.protocol != "project" else {}
        ),  # project runs keep their old last.pt
        **extra,
    }
    meta = {
        "stage": stage,
        "dataset": dataset,
        "params_hash": p.section_hash(*used),
        "git_commit": tracking.git_commit(),
        "params": used,
        **extra,
    }
    choice = micro_batch(p, stage, processes, budget_gib=gpu_memory_gib, estimate=s.micro_batch == "auto")
    log.info("train-%s: %s", stage, choice.note)
    return Job(
        stage=stage,
        out_dir=paths.model_dir(dataset, stage, p.model_key(stage)),
        train=s,
        common=c if choice.accum == c.grad_accum else dataclasses.replace(c, grad_accum=choice.accum),
        diffusion=p.diffusion,
        bf16_autocast=p.conventions.training.autocast == torch.bfloat16,
        final_weights=p.conventions.final_weights(stage),
        fingerprint=fingerprint,
        meta=meta,
        compile_cache=paths.inductor_cache(),
    )


def run(p: Params, dataset: str, stage: str) -> int:
    """`prdit train`: train one stage of `dataset` as configured; returns the exit status (signals.py)."""

    env = distributed.setup()  # a requested but unusable GPU stops here, before any file is touched
    numerics = p.conventions.training
    precision.set_backends(numerics, env.device)  # TF32 on CUDA
    out = paths.model_dir(dataset, stage, p.model_key(stage))
    lock = signals.exclusive(out) if env.is_main else contextlib.nullcontext()
    try:
        with lock, StopRequest() as stop:
            signals.stop_when_orphaned()
            torch.manual_seed(p.train.common.seed)  # identical initial weights on every rank
            sm = _models.build(p, dataset, stage)
            size = sm.input_size
            train_set = _models.volume_dataset(dataset, size, "train")
            val_set = _models.volume_dataset(dataset, size, "val")
            memory = (  # what micro_batch: auto fits into: the GPU's memory, on a CPU the host's
                torch.cuda.get_device_properties(env.device).total_memory / 2**30
                if env.device.type == "cuda"
                else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
            )
            job = job_from_params(p, dataset, stage, sm.parents, env.world_size, memory)
            runs = (
                tracking.stage_run(
                    p, stage=f"train-{stage}", dataset=dataset, size=size, used=p.used(f"train-{stage}")
                )
                if env.is_main
                else contextlib.nullcontext(NullRun())
            )
            with runs as run:
                announce(run, describe_device(env.device, env.why, numerics))
                run.set_tags({"prdit.data_hash": job.meta["data_hash"]})
                tracking.log_split(run, p, dataset, size, "train", "training")
                tracking.log_split(run, p, dataset, size, "val", "validation")
                return fit(job, sm, train_set, val_set, env=env, run=run, stop=stop)
    finally:
        distributed.teardown()
