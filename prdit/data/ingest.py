"""`prdit ingest`: raw input (DICOM series, RAD-ChestCT .npz, NIfTI) -> one HU int16 NIfTI per case.

Outputs in data/interim/<dataset>/: <case>.nii.gz (HU, LPS, native spacing), qc.csv (one row per
case: ok or rejected with the reason), series.csv (every skipped file or series and why) and
qc.png (mid-slices of a sample of cases); under `case_ids: pseudonym` (your own DICOM, by default) also
identifiers.csv and identifiers-series.csv, the only files that map the pseudonymous case names back to
PatientID, series UID and source folder (prdit.data.pseudonyms). A volume is rejected when it covers less than
ingest.min_extent_mm along an axis (too little anatomy: it would be mostly padding in the training
cube), has fewer than ingest.min_slices slices, holds no tissue at all, or holds values with no HU
(NaN / infinite voxels, a missing or invalid rescale, non-finite positions: see prdit.data.dicom and
prdit.data.inputs). The raw input is only read, never modified or deleted.
Each case is computed once per (raw files, ingest params) and kept in the per-case cache
(prdit.data.cache); the output folder is assembled from it, so re-runs compute only what changed.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from prdit import paths, tracking
from prdit.data import dicom, inputs, pseudonyms
from prdit.data.cache import (
    CaseCache,
    assemble,
    entry_key,
    run_cached,
    shard_of,
    unique_key,
)
from prdit.data.qc import batch_exit, percentiles, quicklook, write_table
from prdit.errors import MissingInputError, PrditError
from prdit.io import write_image, write_json
from prdit.viz import montage

if TYPE_CHECKING:
    from prdit.config import Params

log = logging.getLogger(__name__)

QC_COLUMNS = [
    "case",
    "patient_id",
    "status",
    "reason",
    "source",
    "series_uid",
    "files",
    "slices",
    "spacing_x",
    "spacing_y",
    "spacing_z",
    "shape_zyx",
    "extent_mm",
    "orientation",
    "source_iop",
    "tilt_deg",
    "hu_p1",
    "hu_p50",
    "hu_p99",
    "notes",
    "seconds",
]
MONTAGE_CASES = 8
HEADERS = "dicom-headers.v2.json"  # in the ingest cache folder of a dataset, beside the case folders
TISSUE_HU = -500.0  # a volume with no voxel above this holds no anatomy (all air, or empty)


class SourceError(PrditError):
    """The dataset's raw input cannot be used at all (missing folder, nothing readable in it)."""


def interim_dir(dataset: str) -> Path:
    return paths.interim(dataset)


def safe_case_id(name: str) -> str:
    """A file-name-safe case id (letters, digits, '.', '_', '-')."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name.strip()) or "case"


@pseudonyms.scrubbed  # hide=: what a failure's reason must not name (case_ids: pseudonym)
def ingest_dicom(
    case: str,
    patient_id: str,
    files: list[str],
    source: str,
    series_uid: str,
    out: str,
    max_gap_factor: float,
    min_slices: int,
    min_extent_mm: list[float],
) -> dict:
    """Read one selected DICOM series and write it as HU NIfTI; returns its QC row."""
    image, report = dicom.read_files(files, max_gap_factor=max_gap_factor, min_slices=min_slices)
    row = write_checked(case, patient_id, source, image, out, min_extent_mm)
    row.update(
        series_uid=series_uid,
        files=report.files,
        source_iop=" ".join(f"{v:g}" for v in report.iop),
        tilt_deg=round(report.tilt_deg, 2),
        notes=report.notes(),
    )
    return row


@pseudonyms.scrubbed
def ingest_file(
    case: str,
    patient_id: str,
    path: str,
    fmt: str,
    source: str,
    out: str,
    min_slices: int,
    min_extent_mm: list[float],
) -> dict:
    """Read one .npz / NIfTI input and write it as HU NIfTI; returns its QC row."""
    image = inputs.reader(fmt).read(Path(path))
    if image.GetSize()[2] < min_slices:
        raise dicom.SeriesError(f"{image.GetSize()[2]} slice(s), fewer than ingest.min_slices={min_slices}")
    row = write_checked(case, patient_id, source, image, out, min_extent_mm)
    row["files"] = 1
    return row


def extent_mm(image: sitk.Image) -> tuple[float, float, float]:
    """Physical extent (x, y, z in mm, LPS image axes) the voxels cover, edge to edge: size x spacing."""
    return tuple(float(n * s) for n, s in zip(image.GetSize(), image.GetSpacing()))


def check_content(image: sitk.Image, min_extent_mm: list[float]) -> tuple[float, float, float]:
    """The image's extent; SeriesError when its geometry is not finite, or it covers too little anatomy
    or no tissue at all. Every comparison is written so that NaN fails it."""
    geometry = [*image.GetSpacing(), *image.GetOrigin(), *image.GetDirection()]
    if not np.all(np.isfinite(geometry)):
        raise dicom.SeriesError(
            f"geometry not finite (spacing {image.GetSpacing()}, origin {image.GetOrigin()}): position unknown"
        )
    extent = extent_mm(image)
    short = [axis for axis, e, m in zip("xyz", extent, min_extent_mm) if not e >= m]
    if short:
        raise dicom.SeriesError(
            "covers {:.1f} x {:.1f} x {:.1f} mm (x, y, z), less than ingest.min_extent_mm=[{}] along {}: "
            "too little anatomy for a chest CT".format(
                *extent, ", ".join(f"{m:g}" for m in min_extent_mm), " and ".join(short)
            )
        )
    peak = float(sitk.GetArrayViewFromImage(image).max())
    if not peak >= TISSUE_HU:
        raise dicom.SeriesError(
            f"no tissue: every voxel is below {TISSUE_HU:g} HU (maximum {peak:g}): all air"
        )
    return extent


def write_checked(
    case: str, patient_id: str, source: str, image: sitk.Image, out: str, min_extent_mm: list[float]
) -> dict:
    """Check the volume's content (check_content), write it to `out` as HU NIfTI; returns its QC row."""
    extent = check_content(image, min_extent_mm)
    write_image(out, image)
    hu = sitk.GetArrayViewFromImage(image)
    sx, sy, sz = image.GetSpacing()
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    oblique = float(np.degrees(np.arccos(np.clip(np.abs(np.diag(direction)).min(), -1, 1))))
    return {
        "case": case,
        "patient_id": patient_id,
        "source": source,
        "slices": hu.shape[0],
        "spacing_x": round(sx, 4),
        "spacing_y": round(sy, 4),
        "spacing_z": round(sz, 4),
        "shape_zyx": "x".join(map(str, hu.shape)),
        "extent_mm": " ".join(f"{e:.1f}" for e in extent),
        "orientation": dicom.OUTPUT_ORIENTATION + (f" (oblique {oblique:.1f} deg)" if oblique > 0.1 else ""),
        **percentiles(hu),
    }


def plan(p: Params, dataset: str, threads: int = 1) -> tuple[list[dict], list[dict], list[dict], list[dict]]:
    """(jobs for the pool, rows of cases rejected before reading, rows of skipped files/series, identities).

    A job names its output relative to the case's cache entry (prdit.data.cache). Under
    `case_ids: pseudonym` (prdit.data.pseudonyms) cases and patients are keyed pseudonyms, the jobs carry
    no source identifier, and `identities` (one row per case) holds the mapping back to the source; a
    skipped row then has its PatientID in `source_patient_id`. Under `source`, identities is empty."""
    src = p.sources[dataset]
    root = check_source(p, dataset)
    min_extent = [float(v) for v in p.ingest.min_extent_mm]
    hide = pseudonyms.mode(p, dataset) == "pseudonym"
    ps = pseudonyms.Pseudonyms(pseudonyms.load_key()) if hide else None

    def patient_of(pid: str) -> str:
        return ps.patient(pid) if ps and pid else pid

    def hide_of(pid: str) -> dict:
        """What a worker's failure message must not name: the PatientID (and the folders it names) and
        the raw root's location."""
        if not ps:
            return {}
        swap = {pid: patient_of(pid), str(root.resolve()): "<source>", str(root): "<source>"}
        return {"hide": {k: v for k, v in swap.items() if k}}

    jobs, rejected, skipped, identities = [], [], [], []
    if src.format == "dicom":
        headers = load_header_cache(dataset)
        chosen, skips = dicom.discover(
            root, p.ingest.min_slices, threads, header_cache=headers, show=patient_of if hide else None
        )
        if not chosen:
            raise SourceError(_nothing_found(root, skips, dataset))
        save_header_cache(dataset, headers)
        skipped = [
            {
                "path": _rel(s.path, root),
                "series_uid": s.series_uid,
                "patient_id": patient_of(s.patient_id),
                "reason": s.reason,
                **({"source_patient_id": s.patient_id} if hide else {}),
            }
            for s in skips
        ]
        used: set[str] = set()
        for patient, series in chosen.items():
            if ps:
                case = _unique(ps.case(patient, series.uid if series is not None else ""), used)
                identities.append(
                    {
                        "case": case,
                        "patient_id": patient_of(patient),
                        "source_patient_id": patient,
                        "series_uid": series.uid if series is not None else "",
                        "source": _rel(series.folder, root) if series is not None else "",
                    }
                )
            else:
                case = _unique(safe_case_id(patient), used)
            if series is None:
                reasons = sorted(
                    {s["reason"] for s in skipped if s["patient_id"] == patient_of(patient)}
                ) or ["no image series"]
                rejected.append(
                    {
                        "case": case,
                        "patient_id": patient_of(patient),
                        "status": "rejected",
                        "reason": "no diagnostic axial CT series: " + "; ".join(reasons),
                        "seconds": 0.0,
                    }
                )
                continue
            jobs.append(
                dict(
                    case=case,
                    patient_id=patient_of(patient),
                    files=[str(f) for f in series.files],
                    source="" if hide else _rel(series.folder, root),
                    series_uid="" if hide else series.uid,
                    out=f"{case}.nii.gz",
                    max_gap_factor=p.ingest.max_gap_factor,
                    min_slices=p.ingest.min_slices,
                    min_extent_mm=min_extent,
                    **hide_of(patient),
                )
            )
    else:
        used = set()
        reader = inputs.reader(src.format)  # ValueError naming the formats for an unknown one
        found = reader.find(root)
        if not found:
            seen = sum(1 for f in root.rglob("*") if f.is_file())
            kinds = reader.patterns()
            raise SourceError(
                f"No {src.format} input found under {root} ({seen} files looked at, none named {kinds}): "
                f"check sources.{dataset}.path and sources.{dataset}.format"
            )
        for f in found:
            name = inputs.case_name(f)
            if ps:
                case = _unique(ps.case(name), used)
                identities.append(
                    {
                        "case": case,
                        "patient_id": ps.patient(name),
                        "source_patient_id": name,
                        "series_uid": "",
                        "source": _rel(f, root),
                    }
                )
            else:
                case = _unique(safe_case_id(name), used)
            jobs.append(
                dict(
                    case=case,
                    patient_id=ps.patient(name) if ps else case,
                    path=str(f),
                    fmt=src.format,
                    source="" if ps else _rel(f, root),
                    out=f"{case}.nii.gz",
                    min_slices=p.ingest.min_slices,
                    min_extent_mm=min_extent,
                    **hide_of(name),
                )
            )
    return jobs, rejected, skipped, identities


def scrubber(root: Path, identities: list[dict], skipped: list[dict]) -> pseudonyms.Scrubber:
    """What replaces the source identifiers of a pseudonymised dataset in free text (reasons, notes)."""
    scrub = pseudonyms.Scrubber()
    for row in [*identities, *skipped]:
        scrub.add(str(row.get("source_patient_id", "")), str(row.get("patient_id", "")))
        scrub.add(str(row.get("series_uid", "")), "<series uid>")
    scrub.add(str(root), "<source>")
    scrub.add(str(Path(root).resolve()), "<source>")
    return scrub


def redact(rows: list[dict], scrub: pseudonyms.Scrubber) -> list[dict]:
    """Rows without source identifiers: free text scrubbed, paths, series UIDs and PatientIDs dropped."""
    out = []
    for row in rows:
        row = {k: scrub(v) for k, v in row.items() if k != "source_patient_id"}
        for key in ("path", "series_uid", "source"):
            if key in row:
                row[key] = ""
        out.append(row)
    return out


def check_source(p, dataset: str) -> Path:
    """The dataset's raw folder; SourceError naming the key when it is not there (before any work)."""
    root = Path(p.sources[dataset].path)
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise SourceError(
            f"sources.{dataset}.path: {root} {what}; run `prdit download --dataset {dataset}` "
            "or point the path at your copy of the data"
        )
    return root


def _nothing_found(root: Path, skips: list, dataset: str) -> str:
    """'No DICOM found under <root> (N files looked at, M not DICOM, ...)' for a folder without a series."""
    seen = len(skips)  # with no series at all, every file was skipped, each with its reason
    not_dicom = sum(1 for s in skips if s.reason == "not a DICOM file")
    other = [s.reason for s in skips if s.reason != "not a DICOM file"]
    detail = f"{seen} files looked at, {not_dicom} not DICOM"
    if other:
        detail += f", {len(other)} unusable, e.g. {other[0]}"
    return (
        f"No DICOM found under {root} ({detail}): check sources.{dataset}.path and sources.{dataset}.format"
    )


def _header_cache_path(dataset: str) -> Path:
    return CaseCache("ingest", dataset).dir / HEADERS


def load_header_cache(dataset: str) -> dict:
    """The DICOM header fields of every raw file seen last time, by path (with its io.file_stamp): a
    re-run reads only new or changed files' headers."""
    try:
        return json.loads(_header_cache_path(dataset).read_text())
    except (OSError, ValueError):
        return {}


def save_header_cache(dataset: str, headers: dict) -> None:
    write_json(_header_cache_path(dataset), headers, compact=True)


def _rel(path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return Path(path).as_posix()


def _unique(case: str, used: set[str]) -> str:
    name, i = case, 1
    while name in used:
        i += 1
        name = f"{case}_{i}"
    used.add(name)
    return name


def case_key(p: Params, dataset: str, job: dict, cache: CaseCache) -> str:
    """What decides one case's output: ingest params, the job, and its raw files (relative path, content)."""
    root = Path(p.sources[dataset].path)
    files = job.get("files") or [job["path"]]
    desc = {k: v for k, v in job.items() if k not in ("files", "path", "out", "hide")}
    inputs = [[_rel(f, root), sha] for f, sha in zip(files, cache.content_hashes(job["case"], files))]
    return entry_key("ingest", p.used("ingest", dataset), desc, inputs=inputs)


def _key_or_unique(p: Params, dataset: str, job: dict, cache: CaseCache) -> str:
    try:
        return case_key(p, dataset, job, cache)
    except OSError:  # a raw file gone since discovery: the case fails in the pool, with the reason
        return unique_key(job["case"])


def shards_dir(dataset: str) -> Path:
    """Where `--shard` runs leave their QC rows (Snakemake's per-shard outputs) and the shared plan."""
    return paths.shards(paths.interim(dataset))


def write_plan(p: Params, dataset: str, path: Path, threads: int = 1) -> int:
    """`prdit ingest --write-plan`: discover the cases once, for the shard jobs and the final assembly."""
    jobs, rejected, skipped, identities = plan(p, dataset, threads)
    write_json(
        path,
        {
            "dataset": dataset,
            "jobs": jobs,
            "rejected": rejected,
            "skipped": skipped,
            "identities": identities,
        },
    )
    log.info(
        "ingest %s: plan of %d case(s) (%d rejected before reading) in %s",
        dataset,
        len(jobs) + len(rejected),
        len(rejected),
        path,
    )
    return 0


def read_plan(dataset: str, path: Path) -> tuple[list[dict], list[dict], list[dict], list[dict]]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise MissingInputError(
            f"{path}: plan not found; write it with `prdit ingest --write-plan`"
        ) from None
    except ValueError as exc:
        raise PrditError(f"{path}: not a plan file ({exc}); write it again with --write-plan") from None
    if data.get("dataset") != dataset:
        raise PrditError(f"{path}: a plan of dataset {data.get('dataset')!r}, not {dataset!r}")
    return data["jobs"], data["rejected"], data["skipped"], data.get("identities", [])


def run_ingest(
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

    out_dir = interim_dir(dataset)
    cache = CaseCache("ingest", dataset)
    shards = p.ingest.shards
    # finding the cases comes first: a missing or empty source is a one-line error, no run, no folder
    jobs, rejected, skipped, identities = (
        read_plan(dataset, plan_file) if plan_file else plan(p, dataset, threads)
    )
    hide = pseudonyms.mode(p, dataset) == "pseudonym"
    with tracking.stage_run(p, stage="ingest", dataset=dataset, used=p.used("ingest", dataset)) as run:
        fmt = p.sources[dataset].format
        fn = ingest_dicom if fmt == "dicom" else ingest_file
        jobs = shard_of(jobs, shard, shards)
        keys = [_key_or_unique(p, dataset, job, cache) for job in jobs]
        label = f"ingest {dataset}" + (f" shard {shard}/{shards}" if shard is not None else "")
        rows, computed = run_cached(fn, jobs, keys, cache, threads, desc=label)
        for job, row in zip(jobs, rows):  # a case that failed in the reader: its row still names the patient
            row["patient_id"] = row.get("patient_id") or job["patient_id"]
        if shard is not None:
            write_table(rows, shards_dir(dataset) / f"{shard}.csv", QC_COLUMNS)
            run.log_metrics({"cases_total": len(rows), "cases_computed": computed})
            log.info(
                "%s: %d case(s) computed, %d reused from the cache", label, computed, len(rows) - computed
            )
            return 0
        out_dir.mkdir(parents=True, exist_ok=True)
        assemble(cache, {j["case"]: k for j, k, r in zip(jobs, keys, rows) if r["status"] == "ok"}, out_dir)
        cache.prune({j["case"]: k for j, k in zip(jobs, keys)})
        rows = rows + rejected
        rows.sort(key=lambda r: str(r["case"]))
        series = skipped
        if hide:  # the mapping stays here, beside the interim data; every other output is scrubbed
            scrub = scrubber(Path(p.sources[dataset].path), identities, skipped)
            write_table(identities, out_dir / pseudonyms.IDENTIFIERS, pseudonyms.IDENTIFIER_COLUMNS)
            write_table(skipped, out_dir / pseudonyms.IDENTIFIERS_SERIES, pseudonyms.SERIES_COLUMNS)
            rows, series = redact(rows, scrub), redact(skipped, scrub)
        for r in rows:
            if r["status"] != "ok":
                log.warning("case %s rejected: %s", r["case"], r["reason"])
        table = write_table(rows, out_dir / "qc.csv", QC_COLUMNS)
        write_table(series, out_dir / "series.csv", ["patient_id", "series_uid", "path", "reason"])
        ok = table[table["status"] == "ok"]
        counts = {
            "cases_total": len(table),
            "cases_ok": len(ok),
            "cases_rejected": len(table) - len(ok),
            "series_or_files_skipped": len(skipped),
            "cases_computed": computed,
            "cases_cached": len(jobs) - computed,
        }
        if len(ok):
            counts["seconds_per_case"] = float(ok["seconds"].mean())
            sample = list(ok["case"][:MONTAGE_CASES])
            views = [quicklook(sitk.ReadImage(str(out_dir / f"{c}.nii.gz"))) for c in sample]
            run.log_image(montage(views, out_dir / "qc.png", titles=sample, vmin=-1000, vmax=1000))
        run.log_metrics(counts)
        run.log_artifact(out_dir / "qc.csv")
        run.log_artifact(out_dir / "series.csv")
    log.info(
        "ingest %s: %d/%d cases ok, %d skipped series/files (details in %s)",
        dataset,
        len(ok),
        len(table),
        len(skipped),
        out_dir / "qc.csv",
    )
    log.info(
        "ingest %s: %d case(s) computed, %d reused from the cache", dataset, computed, len(jobs) - computed
    )
    return batch_exit("ingest", dataset, len(ok), len(table), strict)
