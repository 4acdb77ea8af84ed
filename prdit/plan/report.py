"""`prdit plan`: the table (or JSON) of every GPU job's cost and verdict; exit 1 if one cannot complete."""

from __future__ import annotations

import json
import logging

from prdit.config import ConfigError, Params
from prdit.plan.cost import JobCost, mfu_source, plan
from prdit.plan.gpus import GPUS

CONVENTION = (
    "FLOPs as torch.utils.flop_counter.FlopCounterMode counts them (multiply-add = 2; attention backward = "
    "2.5x its forward matmuls); hours at the GPU's dense peak x MFU"
)


def _row(j: JobCost) -> list[str]:
    limit = f"{j.time_limit_hours:g} h" + (f" x{j.attempts}" if j.attempts > 1 else "")
    return [
        j.job,
        str(j.gpus),
        f"{j.flops / 1e18:.2f}",
        j.precision,
        f"{j.gpu_hours:.1f}",
        f"{j.wall_hours:.1f}",
        limit,
        f"{j.gpu_mem_gib:.1f}",
        f"{j.host_mem_gib:.0f}/{j.mem_limit_gib:g}",
        j.verdict,
    ]


def table(jobs: list[JobCost]) -> str:
    head = ["job", "GPUs", "EFLOP", "precision", "GPU-h", "wall h", "limit", "GPU GiB", "host GiB", "verdict"]
    rows = [head] + [_row(j) for j in jobs]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"  {j.job}: {j.advice}" for j in jobs if j.advice]
    return "\n".join(lines + (["", "notes:"] + notes if notes else []))


def run_plan(p: Params, gpu: str, as_json: bool = False) -> int:
    """Print the plan on `gpu` (a key of prdit.plan.gpus.GPUS); 0 if every job can complete, else 1."""
    if gpu not in GPUS:
        raise ConfigError(f"--gpu {gpu!r}: not a known GPU ({', '.join(GPUS)})")
    g = GPUS[gpu]
    builders = logging.getLogger("prdit.train")  # quiet the stage builders' per-model lines, then restore
    level = builders.level
    builders.setLevel(logging.WARNING)
    try:
        jobs = plan(p, g)
    finally:
        builders.setLevel(level)
    if as_json:
        print(json.dumps([j.as_dict() for j in jobs], indent=1))
    else:
        mfus = sorted({f"{j.job.split('/')[0].split('-')[0]} {j.mfu:.0%}" for j in jobs})
        print(f"{g.label} ({g.mem_gib:g} GiB); MFU {', '.join(mfus)}; {CONVENTION}")
        print(f"{mfu_source(g)}\n")
        print(table(jobs))
    return 0 if all(j.ok for j in jobs) else 1
