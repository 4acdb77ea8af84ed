"""`prdit plan`: the table (or JSON) of every GPU job's cost and verdict; exit 1 if one cannot complete."""

from __future__ import annotations

import json
import logging

from prdit.config import ConfigError, Params
from prdit.plan.cost import mfu_source, plan
from prdit.plan.gpus import GPUS
from prdit.plan.report import CONVENTION, table


def run(p: Params, gpu: str, as_json: bool = False) -> int:
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
