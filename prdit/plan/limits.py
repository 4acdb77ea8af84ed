"""Time and memory limits of the GPU rules, and the data rules' resources: one home, read by workflow/rules/*.smk (resources) and by
`prdit plan` (which checks the work against them). Imports nothing heavy: Snakemake reads it at parse time."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limit:
    runtime_h: float  # SLURM time limit of one job
    mem_gib: float  # host memory of one job (SLURM --mem)
    resumable: bool  # a job stopped at its limit keeps its work and the retry continues (exit 75)


# The data rules' resources, one row per rule (threads, mem_mb, runtime in minutes): read by
# workflow/rules/common.smk and by prdit.dvc_yaml (dvc.yaml passes the same --threads to ingest and preprocess,
# which run per-case pools of `threads` processes). A profile's set-threads / set-resources wins.
DATA_JOBS: dict[str, dict[str, int]] = {
    "download": dict(threads=4, mem_mb=2000, runtime=24 * 60),
    "ingest_plan": dict(threads=8, mem_mb=8000, runtime=2 * 60),
    "ingest_shard": dict(threads=8, mem_mb=16000, runtime=6 * 60),
    "ingest": dict(threads=8, mem_mb=16000, runtime=6 * 60),
    "preprocess_shard": dict(threads=8, mem_mb=16000, runtime=6 * 60),
    "preprocess": dict(threads=8, mem_mb=16000, runtime=6 * 60),
    "split": dict(threads=1, mem_mb=1000, runtime=10),
}


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
