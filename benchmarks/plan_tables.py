"""The GPU-hours table of docs/reproducing.md, from `prdit plan` on each paper config and GPU.

python benchmarks/plan_tables.py            # markdown rows: config, GPU, GPU-hours per stage, total
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prdit.config import load  # noqa: E402
from prdit.plan.cost import plan  # noqa: E402
from prdit.plan.gpus import GPUS  # noqa: E402

CONFIGS = ["lidc-128", "lidc-256", "rad-chestct-256"]


def main() -> None:
    logging.getLogger("prdit.train").setLevel(logging.WARNING)
    print(
        "| Config | GPU | Stage 1 | Stage 2 | Stage 3 | Sampling | Evaluation | Total GPU-h | Longest job |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name in CONFIGS:
        p = load([ROOT / "params.yaml", ROOT / "configs" / f"{name}.yaml"])
        for gpu in ("h100", "h200"):
            jobs = plan(p, GPUS[gpu])
            hours: dict[str, float] = {}
            for j in jobs:
                kind = j.job.split("/")[0]
                shards = p.sample.shards if kind == "sample" else 1
                hours[kind] = hours.get(kind, 0.0) + j.gpu_hours * shards
            cells = [
                hours.get(k) for k in ("train-local", "train-global", "train-highres", "sample", "evaluate")
            ]
            longest = max(jobs, key=lambda j: j.wall_hours / j.attempts)
            print(
                f"| {name} | {gpu} | "
                + " | ".join("—" if c is None else f"{c:.1f}" for c in cells)
                + f" | **{sum(hours.values()):.0f}** | {longest.wall_hours / longest.attempts:.1f} h"
                f" ({longest.job.split(' ')[0]}) |"
            )


if __name__ == "__main__":
    main()
