"""`prdit preprocess`: every ingested case -> a windowed, isotropic, centred cube in [-1, 1] at every working
size, in data/processed/<dataset>/<size>/ with qc.csv and qc.png (the recipe: prdit.data.preprocess, the
library this stage calls). Each case is computed once per (interim volume content, preprocess params) and
kept in the per-case cache (prdit.data.cache); the folder is assembled from it by the shared driver (_cases)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from prdit import paths, tracking
from prdit.config import Params
from prdit.data import paper_recipe
from prdit.data.cache import CaseCache
from prdit.data.preprocess import QC_COLUMNS, PreprocessJob, case_key
from prdit.data.qc import batch_exit, read_ok
from prdit.stages._cases import Finish, Options, run_cases

log = logging.getLogger(__name__)


def shards_dir(dataset: str) -> Path:
    """Where `--shard` runs leave their QC rows (Snakemake's per-shard outputs)."""
    return paths.shards(paths.processed(dataset))


def jobs_of(p: Params, dataset: str, cases: list[tuple[str, str]]) -> list[PreprocessJob]:
    """The job of each (case, patient_id) ingested."""
    pp = p.preprocess
    mode = p.conventions.preprocess_recipe or pp.mode
    src_dir = paths.interim(dataset)
    fmt = p.sources[dataset].format
    recipe = paper_recipe.recipe_of(p.sources[dataset])
    # in a job (and its key) only where it is not what the format chose before: every old entry stays valid
    own_recipe = mode == "reference" and recipe != paper_recipe.AUTO_RECIPE[fmt]
    return [
        PreprocessJob(
            case=case,
            patient_id=patient_id,
            path=str(src_dir / f"{case}.nii.gz"),
            out_root=".",
            sizes=p.sizes(),
            mode=mode,
            fmt=fmt,
            fov_mm=pp.fov_mm,
            window=tuple(pp.window),
            reference_range=tuple(pp.reference_range) if mode == "reference" else None,
            recipe=recipe if own_recipe else None,
        )
        for case, patient_id in cases
    ]


def run(p: Params, dataset: str, threads: int = 1, strict: bool = False, shard: int | None = None) -> int:
    """`prdit preprocess`: every ingested case to data/processed/<dataset>/<size>/; 0 if any case succeeded.

    Cases come from the per-case cache when their interim volume and the preprocess params are
    unchanged. With `shard` (K of preprocess.shards) only that shard's cases are computed, into the
    cache, and their rows written to <dataset>.shards/<K>.csv; the run without `shard` assembles.
    """
    sizes = p.sizes()
    cache = CaseCache("preprocess", dataset, paths.case_cache())
    used = p.used("preprocess", dataset)
    cases = read_ok(
        paths.interim(dataset) / "qc.csv", f"`prdit ingest --dataset {dataset}`"
    )  # before the run: no FAILED run
    top = max(sizes)
    finish = Finish(
        view=lambda folder, case: np.load(folder / str(top) / f"{case}.npy").astype(np.float32),
        # the folder is assembled beside the old one and swapped in whole (io.atomic_dir): a failure (a full
        # disk) leaves the old folder as it was, never some cases new and qc.csv old
        atomic=True,
        summary=f" at sizes {sizes}",
    )
    with tracking.stage_run(p, stage="preprocess", dataset=dataset, used=used) as tracked:
        jobs = jobs_of(p, dataset, [(r.case, r.patient_id) for r in cases.itertuples()])
        outcome = run_cases(
            "preprocess",
            dataset,
            jobs,
            lambda job: case_key(job, used, cache),
            cache,
            tracked,
            options=Options(
                columns=QC_COLUMNS,
                out_dir=paths.processed(dataset),
                shard_dir=shards_dir(dataset),
                threads=threads,
                shard=shard,
                shards=p.preprocess.shards,
            ),
            finish=finish,
        )
    if outcome is None:
        return 0
    return batch_exit("preprocess", dataset, len(outcome.ok), len(outcome.table), strict)
