"""The library of `prdit ingest` (the stage: prdit.stages.ingest): raw input (DICOM series, RAD-ChestCT .npz, NIfTI) -> one HU int16 NIfTI per case.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from prdit.data import dicom, inputs, pseudonyms
from prdit.data.cache import CaseCache, CaseJob, entry_key
from prdit.data.qc import percentiles
from prdit.errors import MissingInputError, PrditError
from prdit.io import write_image, write_json

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
HEADERS = "dicom-headers.v2.json"  # in the ingest cache folder of a dataset, beside the case folders
TISSUE_HU = -500.0  # a volume with no voxel above this holds no anatomy (all air, or empty)


class SourceError(PrditError):
    """The dataset's raw input cannot be used at all (missing folder, nothing readable in it)."""


def safe_case_id(name: str) -> str:
    """A file-name-safe case id (letters, digits, '.', '_', '-')."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name.strip()) or "case"


@pseudonyms.scrubbed  # hide=: what a failure's reason must not name (case_ids: pseudonym)
def ingest_dicom(job: DicomJob) -> dict:
    """Read one selected DICOM series and write it as HU NIfTI; returns its QC row."""
    image, report = dicom.read_files(job.files, max_gap_factor=job.max_gap_factor, min_slices=job.min_slices)
    row = write_checked(job.case, job.patient_id, job.source, image, job.out, job.min_extent_mm)
    row.update(
        series_uid=job.series_uid,
        files=report.files,
        source_iop=" ".join(f"{v:g}" for v in report.iop),
        tilt_deg=round(report.tilt_deg, 2),
        notes=report.notes(),
    )
    return row


@pseudonyms.scrubbed
def ingest_file(job: FileJob) -> dict:
    """Read one .npz / NIfTI input and write it as HU NIfTI; returns its QC row."""
    image = inputs.reader(job.fmt).read(Path(job.path))
    if image.GetSize()[2] < job.min_slices:
        raise dicom.SeriesError(
            f"{image.GetSize()[2]} slice(s), fewer than ingest.min_slices={job.min_slices}"
        )
    row = write_checked(job.case, job.patient_id, job.source, image, job.out, job.min_extent_mm)
    row["files"] = 1
    return row


@dataclass(frozen=True)
class DicomJob(CaseJob):
    """One DICOM series to ingest (ingest_dicom reads it)."""

    files: list[str]
    source: str
    series_uid: str
    out: str
    max_gap_factor: float
    min_slices: int
    min_extent_mm: list[float]
    hide: dict[str, str] | None = None  # what a failure must not name (case_ids: pseudonym); not in the key

    KEY = ("case", "patient_id", "source", "series_uid", "max_gap_factor", "min_slices", "min_extent_mm")
    INPUTS = ("files",)
    OUTPUTS = ("out",)
    OPTIONAL = ("hide",)

    def run(self) -> dict:
        return ingest_dicom(self, hide=self.hide)


@dataclass(frozen=True)
class FileJob(CaseJob):
    """One .npz / NIfTI file to ingest (ingest_file reads it)."""

    path: str
    fmt: str
    source: str
    out: str
    min_slices: int
    min_extent_mm: list[float]
    hide: dict[str, str] | None = None

    KEY = ("case", "patient_id", "fmt", "source", "min_slices", "min_extent_mm")
    INPUTS = ("path",)
    OUTPUTS = ("out",)
    OPTIONAL = ("hide",)

    def run(self) -> dict:
        return ingest_file(self, hide=self.hide)


def job_class(fmt: str) -> type[DicomJob] | type[FileJob]:
    """The job kind of a source format (a plan file's jobs are read back as it)."""
    return DicomJob if fmt == "dicom" else FileJob


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


@dataclass(frozen=True)
class Acceptance:
    """What a series must show to become a case (the `ingest:` section); every job carries it in its key."""

    min_slices: int
    max_gap_factor: float
    min_extent_mm: list[float]


class _Names:
    """How the cases and patients of one plan are named: keyed pseudonyms with `ps` (then `identities`
    gathers the mapping back to the source), else the source's own safe names."""

    def __init__(self, root: Path, ps: pseudonyms.Pseudonyms | None) -> None:
        self.root, self.ps = root, ps
        self.used: set[str] = set()
        self.identities: list[dict] = []

    def patient(self, pid: str) -> str:
        return self.ps.patient(pid) if self.ps and pid else pid

    def case(self, name: str, series_uid: str = "", source: str = "") -> str:
        """A unique case name for the source's `name` (PatientID, or a file's case name)."""
        if not self.ps:
            return _unique(safe_case_id(name), self.used)
        case = _unique(self.ps.case(name, series_uid), self.used)
        self.identities.append(
            {
                "case": case,
                "patient_id": self.patient(name),
                "source_patient_id": name,
                "series_uid": series_uid,
                "source": source,
            }
        )
        return case

    def hide(self, pid: str) -> dict[str, str] | None:
        """What a worker's failure message must not name: the PatientID (and the folders it names) and
        the raw root's location."""
        if not self.ps:
            return None
        swap = {pid: self.patient(pid), str(self.root.resolve()): "<source>", str(self.root): "<source>"}
        return {k: v for k, v in swap.items() if k}


def plan(
    root: Path,
    fmt: str,
    dataset: str,
    accept: Acceptance,
    *,
    ps: pseudonyms.Pseudonyms | None = None,
    threads: int = 1,
    header_cache: Path | None = None,
) -> tuple[list[CaseJob], list[dict], list[dict], list[dict]]:
    """(jobs for the pool, rows of cases rejected before reading, rows of skipped files/series, identities)
    of the `fmt` input under `root` (the folder of sources.<dataset>; `dataset` names the keys in messages;
    `header_cache`: the DICOM header cache file, HEADERS in the dataset's ingest cache).

    A job names its output relative to the case's cache entry (prdit.data.cache). With `ps`
    (`case_ids: pseudonym`, prdit.data.pseudonyms) cases and patients are keyed pseudonyms, the jobs carry
    no source identifier, and `identities` (one row per case) holds the mapping back to the source; a
    skipped row then has its PatientID in `source_patient_id`. Without, identities is empty."""
    accept = Acceptance(accept.min_slices, accept.max_gap_factor, [float(v) for v in accept.min_extent_mm])
    names = _Names(root, ps)
    if fmt == "dicom":
        jobs, rejected, skipped = _dicom_jobs(root, dataset, accept, names, threads, header_cache)
    else:
        jobs, rejected, skipped = _file_jobs(root, fmt, dataset, accept, names), [], []
    return jobs, rejected, skipped, names.identities


def _dicom_jobs(
    root: Path, dataset: str, accept: Acceptance, names: _Names, threads: int, header_cache: Path | None
) -> tuple[list[CaseJob], list[dict], list[dict]]:
    """One DicomJob per patient's chosen series; a patient without one is a rejected row."""
    hide = names.ps is not None
    headers = load_header_cache(header_cache)
    chosen, skips = dicom.discover(
        root, accept.min_slices, threads, header_cache=headers, show=names.patient if hide else None
    )
    if not chosen:
        raise SourceError(_nothing_found(root, skips, dataset))
    if header_cache is not None:
        save_header_cache(header_cache, headers)
    skipped = [
        {
            "path": _rel(s.path, root),
            "series_uid": s.series_uid,
            "patient_id": names.patient(s.patient_id),
            "reason": s.reason,
            **({"source_patient_id": s.patient_id} if hide else {}),
        }
        for s in skips
    ]
    jobs: list[CaseJob] = []
    rejected = []
    for patient, series in chosen.items():
        case = names.case(
            patient,
            series.uid if series is not None else "",
            _rel(series.folder, root) if series is not None else "",
        )
        if series is None:
            reasons = sorted({s["reason"] for s in skipped if s["patient_id"] == names.patient(patient)}) or [
                "no image series"
            ]
            rejected.append(
                {
                    "case": case,
                    "patient_id": names.patient(patient),
                    "status": "rejected",
                    "reason": "no diagnostic axial CT series: " + "; ".join(reasons),
                    "seconds": 0.0,
                }
            )
            continue
        jobs.append(
            DicomJob(
                case=case,
                patient_id=names.patient(patient),
                files=[str(f) for f in series.files],
                source="" if hide else _rel(series.folder, root),
                series_uid="" if hide else series.uid,
                out=f"{case}.nii.gz",
                max_gap_factor=accept.max_gap_factor,
                min_slices=accept.min_slices,
                min_extent_mm=accept.min_extent_mm,
                hide=names.hide(patient),
            )
        )
    return jobs, rejected, skipped


def _file_jobs(root: Path, fmt: str, dataset: str, accept: Acceptance, names: _Names) -> list[CaseJob]:
    """One FileJob per input file of a one-volume-per-file format (prdit.data.inputs)."""
    reader = inputs.reader(fmt)  # ValueError naming the formats for an unknown one
    found = reader.find(root)
    if not found:
        seen = sum(1 for f in root.rglob("*") if f.is_file())
        raise SourceError(
            f"No {fmt} input found under {root} ({seen} files looked at, none named {reader.patterns()}): "
            f"check sources.{dataset}.path and sources.{dataset}.format"
        )
    jobs: list[CaseJob] = []
    for f in found:
        name = inputs.case_name(f)
        case = names.case(name, source=_rel(f, root))
        jobs.append(
            FileJob(
                case=case,
                patient_id=names.ps.patient(name) if names.ps else case,
                path=str(f),
                fmt=fmt,
                source="" if names.ps else _rel(f, root),
                out=f"{case}.nii.gz",
                min_slices=accept.min_slices,
                min_extent_mm=accept.min_extent_mm,
                hide=names.hide(name),
            )
        )
    return jobs


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


def check_source(root: Path, dataset: str) -> Path:
    """`root`, the raw folder of sources.<dataset>; SourceError naming the key when it is not there (before
    any work)."""
    root = Path(root)
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


def load_header_cache(path: Path | None) -> dict:
    """The DICOM header fields of every raw file seen last time, by path (with its io.file_stamp): a
    re-run reads only new or changed files' headers."""
    if path is None:
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def save_header_cache(path: Path, headers: dict) -> None:
    write_json(path, headers, compact=True)


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


def case_key(job: CaseJob, used: dict[str, Any], root: Path, cache: CaseCache) -> str:
    """What decides one case's output: ingest params (`used`), the job's key fields, and its raw files
    (path relative to the source folder `root`, content)."""
    files = job.input_files()
    hashes = cache.content_hashes(job.case, files)
    return entry_key(
        "ingest", used, job.key_fields(), inputs=[[_rel(f, root), sha] for f, sha in zip(files, hashes)]
    )


def plan_document(
    dataset: str, jobs: list[CaseJob], rejected: list[dict], skipped: list[dict], identities: list[dict]
) -> dict:
    """A plan file's content (`prdit ingest --write-plan`); read_plan reads it back."""
    return {
        "dataset": dataset,
        "jobs": [j.as_dict() for j in jobs],
        "rejected": rejected,
        "skipped": skipped,
        "identities": identities,
    }


def read_plan(dataset: str, path: Path, fmt: str) -> tuple[list[CaseJob], list[dict], list[dict], list[dict]]:
    """The cases of a plan file of `dataset` (jobs of `fmt`'s kind); MissingInputError when it is not there."""
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
    kind = job_class(fmt)
    jobs = [kind.from_dict(j) for j in data["jobs"]]
    return jobs, data["rejected"], data["skipped"], data.get("identities", [])
