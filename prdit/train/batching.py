"""The per-GPU micro-batch and gradient accumulation of a training stage.

The global batch (train.<stage>.batch_size) = processes x micro-batch x accumulation steps. Splitting a
step into more, smaller micro-batches changes nothing but memory and the order of float additions: every
sample keeps its own noise and timestep (prdit.train.data.draw), so the optimizer trajectory stays the same.
train.<stage>.micro_batch: unset = train.common.grad_accum decides; N = that micro-batch; auto = the
largest divisor of the per-process batch whose training step fits the GPU (train.common.gpu_memory_gib,
else the device's own memory; on a CPU the host's), measured on fake tensors of the real model (prdit.plan.steps).
`micro_batch` takes these settings as explicit values and the peak as a callable; prdit.plan.steps.micro_batch
reads them from the parameters and measures the peak.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

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


def affine_bytes(measure: Callable[[int], int], at: int) -> int:
    """Peak bytes at batch `at` from measurements at 1 and 2: memory is affine in the batch."""
    one, two = measure(1), measure(2)
    return one + (two - one) * (at - 1)


def per_process_batch(stage: str, batch_size: int, processes: int) -> int:
    """train.<stage>.batch_size split over `processes` processes; ConfigError if it does not divide."""
    if batch_size % processes:
        raise ConfigError(
            f"train.{stage}.batch_size = {batch_size} is not a multiple of the {processes} training processes"
        )
    return batch_size // processes


def micro_batch(
    stage: str,
    *,
    batch_size: int,
    micro: int | str | None,
    grad_accum: int,
    processes: int,
    budget_gib: float | None = None,
    peak: Callable[[int], int] | None = None,
    estimate: bool = True,
) -> Choice:
    """The micro-batch and accumulation of `stage` on `processes` GPUs.

    `batch_size`, `micro` and `grad_accum`: train.<stage>.batch_size, train.<stage>.micro_batch (None, N or
    "auto") and train.common.grad_accum. `budget_gib` is the GPU memory `auto` fits into; `peak(m)` the
    peak bytes of one training step at micro-batch m (measured at 1 and 2 only; needed by `auto` and by
    `estimate`, which reports the peak at the chosen micro-batch).
    """
    per = per_process_batch(stage, batch_size, processes)
    measured: dict[int, int] = {}

    def cached(m: int) -> int:
        if m not in measured:
            if peak is None:
                raise ValueError("micro_batch: auto and estimate need the step's `peak`")
            measured[m] = peak(m)
        return measured[m]

    if micro is None:
        if per % grad_accum:
            raise ConfigError(
                f"train.{stage}.batch_size = {batch_size} over {processes} process(es) is not a multiple "
                f"of train.common.grad_accum = {grad_accum}"
            )
        chosen, why = per // grad_accum, f"train.common.grad_accum = {grad_accum}"
    elif micro == "auto":
        if budget_gib is None:
            raise ConfigError(
                f"train.{stage}.micro_batch: auto needs the GPU's memory: no GPU here, set "
                "train.common.gpu_memory_gib"
            )
        usable = (budget_gib * MEM_FRACTION - CUDA_OVERHEAD_GIB) * GIB
        fits = [m for m in range(per, 0, -1) if per % m == 0 and affine_bytes(cached, m) <= usable]
        chosen = fits[0] if fits else 1
        why = (
            f"auto: largest micro-batch whose step fits {MEM_FRACTION:.0%} of {budget_gib:g} GiB"
            if fits
            else f"auto: even micro-batch 1 does not fit {budget_gib:g} GiB"
        )
    else:
        chosen = int(micro)
        if per % chosen:
            raise ConfigError(
                f"train.{stage}.micro_batch = {chosen} does not divide the per-process batch {per} "
                f"(batch_size {batch_size} over {processes} process(es))"
            )
        why = f"train.{stage}.micro_batch = {chosen}"
    est = affine_bytes(cached, chosen) if estimate else 0
    note = f"micro-batch {chosen} x {per // chosen} accumulation per process ({why})"
    if est:
        note += f", ~{est / GIB:.1f} GiB of tensors"
    return Choice(chosen, per // chosen, est, note)
