"""Per-case cache of the data stages: the case is the unit of caching, resumption and parallelism.

Each finished case of `prdit ingest` / `prdit preprocess` is kept in .prdit/cache/<stage>/<dataset>/<case>/<key>/
(its output files and its QC row, row.json), outside the stage's output folder, which Snakemake and
DVC delete before they re-run a stage. The key hashes what decides the case's outputs: the stage's
parameters (prdit.config.STAGE_PARAMS, less the scheduling-only `shards`), the case's inputs
(by content: sha256, re-read only when a file's size, mtime or inode changed) and CACHE_VERSION. So a re-run
- after adding a case computes only that case,
- after a kill computes only the cases not finished (an entry appears whole, by rename, or not at all),
- after a parameter change computes every case again.
The stage's output folder is then assembled from the entries by hard links (a copy across file
systems), atomically per file. A full (unsharded) run prunes the entries it did not use, so the
cache holds one version of each case. Rejected cases are cached too (the same input fails the same
way), except failures that may be transient: a dead worker, MemoryError, OSError.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar

from prdit.data.qc import run_cases
from prdit.io import atomic_path, file_stamp, sha256_file, write_json

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when a stage's per-case recipe changes so old entries are not reused
ROW = "row.json"
HASHES = "inputs.sha256.json"
TRANSIENT = ("worker process died", "MemoryError", "OSError", "PermissionError", "TimeoutError")
SCHEDULING = ("shards",)  # parameters that decide how cases are spread over jobs, never a case's outputs
# sources.<name> keys that reach a key through the job instead (resolved: preprocess's recipe), so spelling
# out today's choice (`recipe: lidc` for DICOM) keeps every entry
BY_JOB = ("recipe",)


def stage_params(used: dict[str, Any]) -> dict[str, Any]:
    """The stage's parameters less the scheduling-only ones: what a case's outputs depend on."""
    out = {}
    for name, value in used.items():
        if isinstance(value, dict):
            drop = SCHEDULING + (BY_JOB if name.startswith("sources.") else ())
            value = {k: v for k, v in value.items() if k not in drop}
        out[name] = value
    return out


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:24]


def entry_key(stage: str, used: dict[str, Any], job: dict[str, Any], **content: Any) -> str:
    """The key of one case: its stage, the cache format, the params the stage reads (scheduling left
    out), the job's description and the content of its inputs (named as the stage names them)."""
    return digest(
        {"stage": stage, "version": CACHE_VERSION, "params": stage_params(used), "job": job, **content}
    )


@dataclass(frozen=True)
class CaseJob:
    """One case of a data stage: the worker's arguments, with what it reads, writes and is keyed by named.

    A subclass lists its fields' roles: INPUTS (files whose content goes into the key, hashed by the
    stage's case_key), OUTPUTS (paths relative to the case's cache entry, made absolute by `under`) and
    KEY (the fields the key hashes, by name and value). A field in none of them (e.g. ingest's `hide`)
    never changes a key, so adding one keeps every cached entry. OPTIONAL fields are left out of the key
    and of `as_dict` while they are None (how they were absent from the old kwargs jobs)."""

    case: str
    patient_id: str

    KEY: ClassVar[tuple[str, ...]] = ()
    INPUTS: ClassVar[tuple[str, ...]] = ()
    OUTPUTS: ClassVar[tuple[str, ...]] = ()
    OPTIONAL: ClassVar[tuple[str, ...]] = ()

    def key_fields(self) -> dict[str, Any]:
        """The job's part of its cache key (prdit.data.cache.entry_key)."""
        return {
            k: getattr(self, k) for k in self.KEY if not (k in self.OPTIONAL and getattr(self, k) is None)
        }

    def input_files(self) -> list[str]:
        out: list[str] = []
        for name in self.INPUTS:
            value = getattr(self, name)
            out.extend([value] if isinstance(value, str | Path) else value)
        return [str(f) for f in out]

    def under(self, folder: Path) -> CaseJob:
        """The job with its outputs inside `folder` (the case's temporary cache entry)."""
        return replace(self, **{k: str(Path(folder) / getattr(self, k)) for k in self.OUTPUTS})

    def as_dict(self) -> dict[str, Any]:
        """The fields in order, OPTIONAL ones only when set (a plan file's job; from_dict reads it back)."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if not (f.name in self.OPTIONAL and getattr(self, f.name) is None)
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaseJob:
        return cls(**data)

    def run(self) -> dict:
        """Compute the case (outputs at the paths of OUTPUTS); returns its QC row."""
        raise NotImplementedError


class CaseCache:
    """The entries of one stage and dataset."""

    def __init__(self, stage: str, dataset: str, root: Path) -> None:
        """`root`: the project's case cache (prdit.paths.case_cache)."""
        self.dir = Path(root) / stage / dataset

    def entry(self, case: str, key: str) -> Path:
        return self.dir / case / key

    def complete_entries(self) -> int:
        """How many entries are complete (their row written last); safe while a run adds entries."""
        n = 0
        for case in self.dir.iterdir() if self.dir.is_dir() else []:
            if case.is_dir() and not case.name.startswith("."):
                try:
                    n += sum((entry / ROW).is_file() for entry in case.iterdir() if entry.is_dir())
                except FileNotFoundError:  # a temporary folder gone while we look
                    pass
        return n

    def lookup(self, case: str, key: str) -> dict | None:
        try:
            return json.loads((self.entry(case, key) / ROW).read_text())
        except (OSError, ValueError):
            return None

    def content_hashes(self, case: str, paths: Sequence[str | Path]) -> list[str]:
        """sha256 of each input file of a case; re-read only files whose stamp (io.file_stamp: size, mtime,
        inode) changed since the last time (memo in the case's folder), so an unchanged dataset is not read again, and a rewritten
        but identical file (e.g. a regenerated phantom) still hits the cache."""
        memo_path = self.dir / case / HASHES
        try:
            memo = json.loads(memo_path.read_text())
        except (OSError, ValueError):
            memo = {}
        out, fresh = [], {}
        for path in map(str, paths):
            stamp = file_stamp(path)
            known = memo.get(path)
            sha = known[1] if known and known[0] == stamp else sha256_file(path)
            fresh[path] = [stamp, sha]
            out.append(sha)
        if fresh != memo:
            write_json(memo_path, fresh, compact=True)
        return out

    def prune(self, keep: dict[str, str]) -> int:
        """Delete every entry but keep[case] (and stale temporary folders); returns how many went."""
        gone = 0
        if not self.dir.is_dir():
            return 0
        for case_dir in self.dir.iterdir():
            if case_dir.name.startswith(".tmp"):
                shutil.rmtree(case_dir, ignore_errors=True)
                continue
            if not case_dir.is_dir():
                continue
            for entry in case_dir.iterdir():
                if entry.name == HASHES and case_dir.name in keep:
                    continue
                if entry.is_file():
                    entry.unlink()
                elif entry.name != keep.get(case_dir.name):
                    shutil.rmtree(entry, ignore_errors=True)
                    gone += 1
            if not any(case_dir.iterdir()):
                case_dir.rmdir()
        return gone


def _cached_case(cache_dir: str, key: str, job: CaseJob) -> dict:
    """Worker side: run one case into a temporary entry and rename it into place when it is done."""
    case = job.case
    base = Path(cache_dir)
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp.{case}.", dir=base))
    start = time.perf_counter()
    try:
        row = job.under(tmp).run()
        row = {
            **row,
            "status": row.get("status", "ok"),
            "reason": row.get("reason", ""),
            "seconds": round(time.perf_counter() - start, 3),
        }
        (tmp / ROW).write_text(json.dumps(row, default=str))
        _publish(tmp, base / case / key)
        return row
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _publish(tmp: Path, final: Path) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(tmp, final)
    except OSError:
        if not (final / ROW).is_file():  # not a twin job that finished the same case first
            raise


def run_cached(
    jobs: Sequence[CaseJob],
    keys: Sequence[str],
    cache: CaseCache,
    threads: int,
    desc: str,
) -> tuple[list[dict], int]:
    """Rows of every job (input order): cached ones read, the others computed (and cached); also how many
    were computed. Jobs name their outputs relative to the case's entry (CaseJob.OUTPUTS)."""
    rows: list[dict | None] = []
    todo = []
    for job, key in zip(jobs, keys):
        row = cache.lookup(job.case, key)
        rows.append(row)
        if row is None:
            todo.append((len(rows) - 1, job, key))
    if todo:
        log.info(
            "%s: %d case(s) to compute, %d reused from the cache (%s)",
            desc,
            len(todo),
            len(jobs) - len(todo),
            cache.dir,
        )
        wrapped = [dict(cache_dir=str(cache.dir), key=key, job=job) for _, job, key in todo]
        computed = run_cases(_cached_case, wrapped, threads, desc=desc)
        for (i, job, key), row in zip(todo, computed):
            row["case"] = job.case
            if row["status"] != "ok" and not str(row.get("reason", "")).startswith(TRANSIENT):
                _store_rejection(cache, job.case, key, row)
            rows[i] = row
    else:
        log.info("%s: all %d case(s) reused from the cache (%s)", desc, len(jobs), cache.dir)
    return [r for r in rows if r is not None], len(todo)


def _store_rejection(cache: CaseCache, case: str, key: str, row: dict) -> None:
    """Cache a deterministic failure (no outputs, just its row) so an unchanged input is not retried."""
    cache.dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp.{case}.", dir=cache.dir))
    try:
        (tmp / ROW).write_text(json.dumps(row, default=str))
        _publish(tmp, cache.entry(case, key))
    except OSError:
        pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def assemble(cache: CaseCache, cases: dict[str, str], out_dir: Path) -> None:
    """Link every file of the given entries (case -> key) into out_dir at its relative path, atomically."""
    for case, key in cases.items():
        entry = cache.entry(case, key)
        for src in sorted(entry.rglob("*")):
            if not src.is_file() or src.name == ROW:
                continue
            with atomic_path(out_dir / src.relative_to(entry)) as tmp:  # a failed copy leaves no partial file
                tmp.unlink()  # the link's name: free again, and unique to this writer
                try:
                    os.link(src, tmp)
                except OSError:  # another file system, or no hard links: copy
                    shutil.copy2(src, tmp)


def unique_key(case: str) -> str:
    """A key never cached twice: for a case whose inputs cannot be read (it then fails with the reason)."""
    return "unreadable-" + digest([case, time.time_ns(), os.getpid()])


def key_or_unique(key_of: Callable[[Any], str], job: CaseJob) -> str:
    """The case's key; for an input that cannot be read (gone since discovery) a key never cached twice:
    the case then fails in the pool, with the reason."""
    try:
        return key_of(job)
    except OSError:
        return unique_key(job.case)


def shard_of(items: list, shard: int | None, shards: int) -> list:
    """Shard `shard` of `shards` (every shards-th item, so each shard gets a mix), or all items."""
    if shard is None:
        return items
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} is not in 0..{shards - 1}")
    return items[shard::shards]
