"""Per-case work in a bounded process pool, and the QC table and montage every data stage writes."""

from __future__ import annotations

import logging
import multiprocessing
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from prdit.errors import MissingInputError
from prdit.io import atomic_path
from prdit.progress import progress

log = logging.getLogger(__name__)


def _init_worker(itk_threads: int) -> None:
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, itk_threads))


def _guarded(fn: Callable[..., dict], job: dict) -> dict:
    """Run one case; any exception becomes a rejected row with the reason, never a lost batch."""
    start = time.perf_counter()
    try:
        row = fn(**job)
    except Exception as exc:  # noqa: BLE001 - one bad case must never stop the others
        log.debug("case %s failed:\n%s", job.get("case"), traceback.format_exc())
        row = {"case": job.get("case"), "status": "rejected", "reason": f"{type(exc).__name__}: {exc}"}
    row.setdefault("status", "ok")
    row.setdefault("reason", "")
    row["seconds"] = round(time.perf_counter() - start, 3)
    return row


def run_cases(fn: Callable[..., dict], jobs: Sequence[dict], threads: int, desc: str) -> list[dict]:
    """Apply fn(**job) to every job, `threads` cases at a time; returns one row per job (input order).

    With threads > 1 the cases run in separate processes (spawned, so no state leaks between stages),
    at most `workers` in flight; a worker that dies (e.g. killed for memory) fails only its own case.
    """
    threads = max(1, int(threads))
    workers = min(threads, len(jobs)) or 1
    itk_threads = max(1, threads // workers)
    if workers == 1:
        _init_worker(itk_threads)
        return [_guarded(fn, job) for job in progress(jobs, desc=desc, total=len(jobs))]

    rows: dict[int, dict] = {}
    bar = iter(progress(range(len(jobs)), desc=desc, total=len(jobs)))
    pending = list(enumerate(jobs))
    while pending:
        pending, crashed = _pool(fn, pending, workers, itk_threads, rows, bar)
        for i, job in crashed:  # which in-flight case killed the pool is unknown: rerun each alone
            _, again = _pool(fn, [(i, job)], 1, itk_threads, rows, bar)
            if again:
                rows[i] = {
                    "case": job.get("case"),
                    "status": "rejected",
                    "seconds": float("nan"),
                    "reason": "worker process died (killed, e.g. out of memory)",
                }
                next(bar, None)
    for _ in bar:
        pass
    return [rows[i] for i in range(len(jobs))]


def _pool(
    fn: Callable[..., dict],
    items: list[tuple[int, dict]],
    workers: int,
    itk_threads: int,
    rows: dict[int, dict],
    bar: Iterator,
) -> tuple[list[tuple[int, dict]], list[tuple[int, dict]]]:
    """Run items with at most `workers` in flight; on a dead worker return (not started, in flight)."""
    todo = items[::-1]
    inflight: dict[Future, tuple[int, dict]] = {}
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_init_worker, initargs=(itk_threads,)
    ) as pool:
        while todo or inflight:
            while todo and len(inflight) < workers:
                item = todo.pop()
                inflight[pool.submit(_guarded, fn, item[1])] = item
            done, _ = wait(inflight, return_when=FIRST_COMPLETED)
            for fut in done:
                i, job = inflight.pop(fut)
                try:
                    rows[i] = fut.result()
                except BrokenProcessPool:
                    crashed = [(i, job)] + list(inflight.values())
                    return todo[::-1], crashed
                next(bar, None)
    return [], []


def write_table(rows: Sequence[dict], path: Path, columns: Sequence[str]) -> pd.DataFrame:
    """Write rows as CSV (given columns first, then any extra), atomically; return the frame."""
    frame = pd.DataFrame(list(rows))
    for col in columns:
        if col not in frame:
            frame[col] = ""
    frame = frame[list(columns) + [c for c in frame.columns if c not in columns]].convert_dtypes()
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return frame


def batch_exit(stage: str, dataset: str, ok: int, total: int, strict: bool) -> int:
    """Exit status of a batch stage: 1 when no case succeeded, or any failed under --strict."""
    if not ok:
        log.error("%s %s: no case succeeded", stage, dataset)
        return 1
    if strict and ok < total:
        log.error("%s %s: %d case(s) rejected and --strict is set", stage, dataset, total - ok)
        return 1
    return 0


def read_ok(qc_csv: Path, made_by: str = "the previous stage") -> pd.DataFrame:
    """The rows of a qc.csv whose status is ok (a one-line error naming `made_by` when it is missing)."""
    if not qc_csv.is_file():
        raise MissingInputError(f"{qc_csv}: not found; run {made_by} first")
    frame = pd.read_csv(qc_csv, dtype={"case": str, "patient_id": str}, keep_default_na=False)
    return frame[frame["status"] == "ok"]


def percentiles(
    values: np.ndarray, qs: Sequence[float] = (1, 50, 99), prefix: str = "hu"
) -> dict[str, float]:
    """Percentiles of a (sub-sampled) array as QC columns."""
    flat = np.asarray(values).ravel()[:: max(1, values.size // 2_000_000)]
    return {f"{prefix}_p{q:g}": round(float(v), 3) for q, v in zip(qs, np.percentile(flat, qs))}


def quicklook(image: sitk.Image, size: int = 96, air: float = -1000.0) -> np.ndarray:
    """An isotropic size^3 [z, y, x] view of an image (LPS, axis aligned) for QC montages."""
    image = sitk.DICOMOrient(image, "LPS")
    extent = [sz * sp for sz, sp in zip(image.GetSize(), image.GetSpacing())]
    spacing = max(extent) / size
    centre = image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()])
    origin = [c - (size - 1) / 2 * spacing for c in centre]
    out = sitk.Resample(
        image,
        [size] * 3,
        sitk.Transform(),
        sitk.sitkLinear,
        origin,
        [spacing] * 3,
        (1, 0, 0, 0, 1, 0, 0, 0, 1),
        air,
        sitk.sitkFloat32,
    )
    return sitk.GetArrayFromImage(out)
