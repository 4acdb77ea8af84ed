"""`prdit ingest`: raw input (DICOM series, RAD-ChestCT .npz, NIfTI) -> one HU int16 NIfTI per case in
data/interim/<dataset>/, with qc.csv, series.csv and qc.png (what each holds: prdit.data.ingest, the
library this stage calls). Each case is computed once per (raw files, ingest params) and kept in the
per-case cache (prdit.data.cache); the folder is assembled from it by the shared driver (_cases)."""

from __future__ import annotations

import logging
from pathlib import Path

import SimpleITK as sitk

from prdit import paths, tracking
from prdit.config import Params
from prdit.data import ingest, pseudonyms
from prdit.data.cache import CaseCache, CaseJob
from prdit.data.qc import batch_exit, quicklook, write_table
from prdit.io import write_json
from prdit.stages._cases import Finish, Options, run_cases

log = logging.getLogger(__name__)

SERIES_COLUMNS = ["patient_id", "series_uid", "path", "reason"]


def shards_dir(dataset: str) -> Path:
    """Where `--shard` runs leave their QC rows (Snakemake's per-shard outputs) and the shared plan."""
    return paths.shards(paths.interim(dataset))


def pseudonymised(p: Params, dataset: str) -> bool:
    """Whether `dataset`'s cases are named by keyed pseudonyms (sources.<name>.case_ids, prdit.data.pseudonyms)."""
    src = p.sources[dataset]
    return pseudonyms.mode(src.case_ids, src.download, src.format) == "pseudonym"


def plan(
    p: Params, dataset: str, threads: int = 1
) -> tuple[list[CaseJob], list[dict], list[dict], list[dict]]:
    """The dataset's cases as found in its raw folder (prdit.data.ingest.plan, with the params spelled out)."""
    src = p.sources[dataset]
    root = ingest.check_source(Path(src.path), dataset)
    hide = pseudonymised(p, dataset)
    return ingest.plan(
        root,
        src.format,
        dataset,
        ingest.Acceptance(p.ingest.min_slices, p.ingest.max_gap_factor, p.ingest.min_extent_mm),
        ps=pseudonyms.Pseudonyms(pseudonyms.load_key(paths.pseudonym_key())) if hide else None,
        header_cache=CaseCache("ingest", dataset, paths.case_cache()).dir / ingest.HEADERS,
        threads=threads,
    )


def write_plan(p: Params, dataset: str, path: Path, threads: int = 1) -> int:
    """`prdit ingest --write-plan`: discover the cases once, for the shard jobs and the final assembly."""
    jobs, rejected, skipped, identities = plan(p, dataset, threads)
    write_json(path, ingest.plan_document(dataset, jobs, rejected, skipped, identities))
    log.info(
        "ingest %s: plan of %d case(s) (%d rejected before reading) in %s",
        dataset,
        len(jobs) + len(rejected),
        len(rejected),
        path,
    )
    return 0


def run(
    p: Params,
    dataset: str,
    threads: int = 1,
    strict: bool = False,
    shard: int | None = None,
    plan_file: Path | None = None,
) -> int:
    """`prdit ingest`: every case of the dataset to data/interim/<dataset>/; exit status 0 if any case succeeded.

    Cases come from the per-case cache when their raw files and the ingest params are unchanged, so a
    re-run computes only new, changed or unfinished cases. With `shard` (K of ingest.shards) only that
    shard's cases are computed, into the cache, and their rows written to <dataset>.shards/<K>.csv;
    the run without `shard` then assembles the output folder. `plan_file` (from --write-plan) saves
    discovering the cases again.
    """
    src = p.sources[dataset]
    out_dir = paths.interim(dataset)
    cache = CaseCache("ingest", dataset, paths.case_cache())
    used = p.used("ingest", dataset)
    # finding the cases comes first: a missing or empty source is a one-line error, no run, no folder
    jobs, rejected, skipped, identities = (
        ingest.read_plan(dataset, plan_file, src.format) if plan_file else plan(p, dataset, threads)
    )
    hide = pseudonymised(p, dataset)
    root = Path(src.path)

    def rows_of(rows: list[dict], folder: Path) -> list[dict]:
        series = skipped
        if hide:  # the mapping stays here, beside the interim data; every other output is scrubbed
            scrub = ingest.scrubber(root, identities, skipped)
            write_table(identities, folder / pseudonyms.IDENTIFIERS, pseudonyms.IDENTIFIER_COLUMNS)
            write_table(skipped, folder / pseudonyms.IDENTIFIERS_SERIES, pseudonyms.SERIES_COLUMNS)
            rows, series = ingest.redact(rows, scrub), ingest.redact(skipped, scrub)
        write_table(series, folder / "series.csv", SERIES_COLUMNS)
        return rows

    finish = Finish(
        view=lambda folder, case: quicklook(sitk.ReadImage(str(folder / f"{case}.nii.gz"))),
        montage_range={"vmin": -1000, "vmax": 1000},
        extra_rows=rejected,
        rows=rows_of,
        metrics={"series_or_files_skipped": len(skipped)},
        artifacts=("qc.csv", "series.csv"),
        summary=f", {len(skipped)} skipped series/files (details in {out_dir / 'qc.csv'})",
    )
    with tracking.stage_run(p, stage="ingest", dataset=dataset, used=used) as tracked:
        outcome = run_cases(
            "ingest",
            dataset,
            jobs,
            lambda job: ingest.case_key(job, used, root, cache),
            cache,
            tracked,
            options=Options(
                columns=ingest.QC_COLUMNS,
                out_dir=out_dir,
                shard_dir=shards_dir(dataset),
                threads=threads,
                shard=shard,
                shards=p.ingest.shards,
                name_patients=True,  # a case that failed in the reader: its row still names the patient
            ),
            finish=finish,
        )
    if outcome is None:
        return 0
    return batch_exit("ingest", dataset, len(outcome.ok), len(outcome.table), strict)
