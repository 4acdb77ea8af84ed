"""The per-case driver shared by `prdit ingest` and `prdit preprocess`.

Both stages turn a list of per-case jobs (prdit.data.cache.CaseJob) into an output folder the same way:
take the run's shard of the jobs, key each case, compute what the per-case cache lacks, then either write
the shard's QC rows (a `--shard` run) or assemble the folder from the cache, prune the entries no longer
used, write qc.csv and the qc.png montage and log the counts. What differs is passed in (`Finish`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from prdit.data.cache import CaseCache, CaseJob, assemble, key_or_unique, run_cached, shard_of
from prdit.data.qc import write_table
from prdit.io import atomic_dir
from prdit.viz import montage

log = logging.getLogger(__name__)

MONTAGE_CASES = 8


@dataclass
class Finish:
    """How a stage's output folder is finished (everything but the cases' own files and qc.csv)."""

    view: Callable[[Path, str], np.ndarray]  # (folder, ok case) -> the array its montage tile shows
    montage_range: dict[str, float] = field(default_factory=dict)  # vmin / vmax of the montage
    extra_rows: list[dict] = field(default_factory=list)  # cases rejected before any job (ingest's plan)
    # (rows, folder) -> the rows qc.csv gets; may write files of its own into the folder
    rows: Callable[[list[dict], Path], list[dict]] = lambda rows, folder: rows
    metrics: dict[str, float] = field(default_factory=dict)  # logged with the counts
    artifacts: Sequence[str] = ("qc.csv",)  # files of the folder logged as artifacts
    atomic: bool = False  # build the folder beside the old one and swap it in whole (io.atomic_dir)
    summary: str = ""  # the tail of the "N/M cases ok" line


@dataclass(frozen=True)
class Options:
    """Where and how run_cases works: qc.csv's `columns`, the output and shard folders, worker threads, the
    shard to compute (K of `shards`; None: the whole folder), and `name_patients` (a failed case's row gets
    its job's patient_id: the worker's row has none)."""

    columns: Sequence[str]
    out_dir: Path
    shard_dir: Path
    threads: int = 1
    shard: int | None = None
    shards: int = 1
    name_patients: bool = False


@dataclass
class Outcome:
    table: pd.DataFrame
    ok: pd.DataFrame


@contextmanager
def _in_place(folder: Path) -> Iterator[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    yield folder


def run_cases(
    stage: str,
    dataset: str,
    jobs: Sequence[CaseJob],
    key_of: Callable[[CaseJob], str],
    cache: CaseCache,
    run: Any,
    *,
    options: Options,
    finish: Finish,
) -> Outcome | None:
    """Run the cases of `stage` on `dataset` through the per-case cache; `run` is the stage's tracking run.

    With options.shard (K of shards) only that shard's cases are computed and their rows written to
    shard_dir/K.csv (returns None); else out_dir is assembled, the cache pruned to the cases used, qc.csv
    (options.columns) and qc.png written and the counts logged."""
    columns, out_dir, shard, shards = options.columns, options.out_dir, options.shard, options.shards
    jobs = shard_of(list(jobs), shard, shards)
    keys = [key_or_unique(key_of, job) for job in jobs]
    label = f"{stage} {dataset}" + (f" shard {shard}/{shards}" if shard is not None else "")
    rows, computed = run_cached(jobs, keys, cache, options.threads, desc=label)
    if options.name_patients:
        for job, row in zip(jobs, rows):
            row["patient_id"] = row.get("patient_id") or job.patient_id
    if shard is not None:
        write_table(rows, options.shard_dir / f"{shard}.csv", columns)
        run.log_metrics({"cases_total": len(rows), "cases_computed": computed})
        log.info("%s: %d case(s) computed, %d reused from the cache", label, computed, len(rows) - computed)
        return None
    with (atomic_dir if finish.atomic else _in_place)(out_dir) as folder:
        assemble(cache, {j.case: k for j, k, r in zip(jobs, keys, rows) if r["status"] == "ok"}, folder)
        rows = sorted(rows + finish.extra_rows, key=lambda r: str(r["case"]))
        rows = finish.rows(rows, folder)
        for r in rows:
            if r["status"] != "ok":
                log.warning("case %s rejected: %s", r["case"], r["reason"])
        table = write_table(rows, folder / "qc.csv", columns)
        ok = table[table["status"] == "ok"]
        if len(ok):
            sample = list(ok["case"][:MONTAGE_CASES])
            views = [finish.view(folder, c) for c in sample]
            montage(views, folder / "qc.png", titles=sample, **finish.montage_range)
    cache.prune({j.case: k for j, k in zip(jobs, keys)})
    counts = {
        "cases_total": len(table),
        "cases_ok": len(ok),
        "cases_rejected": len(table) - len(ok),
        **finish.metrics,
        "cases_computed": computed,
        "cases_cached": len(jobs) - computed,
    }
    if len(ok):
        counts["seconds_per_case"] = float(ok["seconds"].mean())
        run.log_image(out_dir / "qc.png")
    run.log_metrics(counts)
    for name in finish.artifacts:
        run.log_artifact(out_dir / name)
    log.info("%s %s: %d/%d cases ok%s", stage, dataset, len(ok), len(table), finish.summary)
    log.info(
        "%s %s: %d case(s) computed, %d reused from the cache", stage, dataset, computed, len(jobs) - computed
    )
    return Outcome(table, ok)
