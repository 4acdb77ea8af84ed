"""The per-GPU micro-batch and gradient accumulation of a training stage.

The global batch (train.<stage>.batch_size) = processes x micro-batch x accumulation steps. Splitting a
step into more, smaller micro-batches changes nothing but memory and the order of float additions: every
sample keeps its own noise and timestep (prdit.train.data.draw), so the optimizer trajectory stays the same.
train.<stage>.micro_batch: unset = train.common.grad_accum decides; N = that micro-batch; auto = the
largest divisor of the per-process batch whose training step fits the GPU (train.common.gpu_memory_gib,
else the device's own memory; on a CPU the host's), measured on fake tensors of the real model (prdit.plan.steps).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prdit.config import Params
from prdit.errors import ConfigError
from prdit.plan.gpus import CUDA_OVERHEAD_GIB, MEM_FRACTION

log = logging.getLogger(__name__)
GIB = 2**30


@dataclass(frozen=True)
class Choice:
    micro: int
    accum: int
    bytes: int  # estimated peak of live tensors per process at `micro` (0 when not estimated)
    note: str


def per_process_batch(p: Params, stage: str, processes: int) -> int:
    batch = p.train.stage(stage).batch_size
    if batch % processes:
        raise ConfigError(
            f"train.{stage}.batch_size = {batch} is not a multiple of the {processes} training processes"
        )
    return batch // processes


def micro_batch(
    p: Params, stage: str, processes: int, budget_gib: float | None = None, estimate: bool = True
) -> Choice:
    """The micro-batch and accumulation of `stage` on `processes` GPUs; `budget_gib` is the GPU memory
    `auto` fits into (train.common.gpu_memory_gib wins when set). With `estimate`, the peak memory at
    the chosen micro-batch is measured on fake tensors (a few seconds)."""
    from prdit.plan.steps import affine_bytes, train_step_bytes

    cfg = p.train.stage(stage)
    per = per_process_batch(p, stage, processes)
    ddp = processes > 1
    measured: dict[int, int] = {}

    def peak(m: int) -> int:
        if m not in measured:
            measured[m] = train_step_bytes(p, stage, m, ddp=ddp)
        return measured[m]

    if cfg.micro_batch is None:
        accum = p.train.common.grad_accum
        if per % accum:
            raise ConfigError(
                f"train.{stage}.batch_size = {cfg.batch_size} over {processes} process(es) is not a multiple "
                f"of train.common.grad_accum = {accum}"
            )
        micro, why = per // accum, f"train.common.grad_accum = {accum}"
    elif cfg.micro_batch == "auto":
        budget = p.train.common.gpu_memory_gib or budget_gib
        if budget is None:
            raise ConfigError(
                f"train.{stage}.micro_batch: auto needs the GPU's memory: no GPU here, set "
                "train.common.gpu_memory_gib"
            )
        usable = (budget * MEM_FRACTION - CUDA_OVERHEAD_GIB) * GIB
        fits = [m for m in range(per, 0, -1) if per % m == 0 and affine_bytes(peak, m) <= usable]
        micro = fits[0] if fits else 1
        why = (
            f"auto: largest micro-batch whose step fits {MEM_FRACTION:.0%} of {budget:g} GiB"
            if fits
            else f"auto: even micro-batch 1 does not fit {budget:g} GiB"
        )
    else:
        micro = int(cfg.micro_batch)
        if per % micro:
            raise ConfigError(
                f"train.{stage}.micro_batch = {micro} does not divide the per-process batch {per} "
                f"(batch_size {cfg.batch_size} over {processes} process(es))"
            )
        why = f"train.{stage}.micro_batch = {micro}"
    est = affine_bytes(peak, micro) if estimate else 0
    note = f"micro-batch {micro} x {per // micro} accumulation per process ({why})"
    if est:
        note += f", ~{est / GIB:.1f} GiB of tensors"
    return Choice(micro, per // micro, est, note)
