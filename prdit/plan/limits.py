"""Time and memory limits of the GPU rules: one home, read by workflow/rules/*.smk (resources) and by
`prdit plan` (which checks the work against them). Imports nothing heavy: Snakemake reads it at parse time."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limit:
    runtime_h: float  # SLURM time limit of one job
    mem_gib: float  # host memory of one job (SLURM --mem)
    resumable: bool  # a job stopped at its limit keeps its work and the retry continues (exit 75)


# rule -> (backbone size, stage-3 size)
LIMITS: dict[str, tuple[Limit, Limit]] = {
    "train": (Limit(72, 64, True), Limit(72, 64, True)),
    "sample": (Limit(12, 32, True), Limit(24, 64, True)),
    "evaluate": (Limit(6, 32, False), Limit(12, 96, False)),
}


def limit(rule: str, highres: bool = False) -> Limit:
    """The limit of `rule` (train, sample, evaluate) at the backbone or the stage-3 size."""
    return LIMITS[rule][int(highres)]


def runtime_min(rule: str, highres: bool = False) -> int:
    return int(limit(rule, highres).runtime_h * 60)


def mem_mb(rule: str, highres: bool = False) -> int:
    return int(limit(rule, highres).mem_gib * 1024)
