"""The table of every GPU job's cost and verdict that `prdit plan` prints (prdit.stages.plan)."""

from __future__ import annotations

from prdit.plan.cost import JobCost

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
