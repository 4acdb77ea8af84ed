"""`prdit ingest`: raw input (DICOM series, RAD-ChestCT .npz, NIfTI) -> one HU int16 NIfTI per case.

Outputs in data/interim/<dataset>/: <case>.nii.gz (HU, LPS, native spacing), qc.csv (one row per
case: ok or rejected with the reason), series.csv (every skipped file or series and why) and
qc.png (mid-slices of a sample of cases). The raw input is only read, never modified or deleted.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from prdit.data import dicom, inputs
from prdit.data.qc import batch_exit, percentiles, quicklook, run_cases, write_table
from prdit.io import write_image

log = logging.getLogger(__name__)

QC_COLUMNS = ["case", "patient_id", "status", "reason", "source", "series_uid", "files", "slices",
              "spacing_x", "spacing_y", "spacing_z", "shape_zyx", "orientation", "source_iop", "tilt_deg",
              "hu_p1", "hu_p50", "hu_p99", "notes", "seconds"]
MONTAGE_CASES = 8


def interim_dir(dataset: str) -> Path:
    return Path("data") / "interim" / dataset


def safe_case_id(name: str) -> str:
    """A file-name-safe case id (letters, digits, '.', '_', '-')."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name.strip()) or "case"


def ingest_dicom(case: str, patient_id: str, files: list[str], source: str, series_uid: str, out: str,
                 max_gap_factor: float, min_slices: int) -> dict:
    """Read one selected DICOM series and write it as HU NIfTI; returns its QC row."""
    image, report = dicom.read_files(files, max_gap_factor=max_gap_factor, min_slices=min_slices)
    row = _describe(case, patient_id, source, image, out)
    row.update(series_uid=series_uid, files=report.files, source_iop=" ".join(f"{v:g}" for v in report.iop),
               tilt_deg=round(report.tilt_deg, 2), notes=report.notes())
    return row


def ingest_file(case: str, patient_id: str, path: str, fmt: str, source: str, out: str) -> dict:
    """Read one .npz / NIfTI input and write it as HU NIfTI; returns its QC row."""
    image = inputs.read_npz(Path(path)) if fmt == "npz" else inputs.read_volume(Path(path))
    row = _describe(case, patient_id, source, image, out)
    row["files"] = 1
    return row


def _describe(case: str, patient_id: str, source: str, image: sitk.Image, out: str) -> dict:
    write_image(out, image)
    hu = sitk.GetArrayViewFromImage(image)
    sx, sy, sz = image.GetSpacing()
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    oblique = float(np.degrees(np.arccos(np.clip(np.abs(np.diag(direction)).min(), -1, 1))))
    return {
        "case": case, "patient_id": patient_id, "source": source, "slices": hu.shape[0],
        "spacing_x": round(sx, 4), "spacing_y": round(sy, 4), "spacing_z": round(sz, 4),
        "shape_zyx": "x".join(map(str, hu.shape)),
        "orientation": dicom.OUTPUT_ORIENTATION + (f" (oblique {oblique:.1f} deg)" if oblique > 0.1 else ""),
        **percentiles(hu),
    }


def plan(p, dataset: str, out_dir: Path, threads: int = 1) -> tuple[list[dict], list[dict], list[dict]]:
    """(jobs for the pool, rows of cases rejected before reading, rows of skipped files/series)."""
    src = p.sources[dataset]
    root = Path(src.path)
    if not root.is_dir():
        raise FileNotFoundError(f"sources.{dataset}.path: {root} is not a folder (download or phantom first?)")
    jobs, rejected, skipped = [], [], []
    if src.format == "dicom":
        chosen, skips = dicom.discover(root, p.ingest.min_slices, threads)
        skipped = [{"path": _rel(s.path, root), "series_uid": s.series_uid, "patient_id": s.patient_id,
                    "reason": s.reason} for s in skips]
        used: set[str] = set()
        for patient, series in chosen.items():
            case = _unique(safe_case_id(patient), used)
            if series is None:
                reasons = sorted({s["reason"] for s in skipped if s["patient_id"] == patient}) or ["no image series"]
                rejected.append({"case": case, "patient_id": patient, "status": "rejected",
                                 "reason": "no diagnostic axial CT series: " + "; ".join(reasons), "seconds": 0.0})
                continue
            jobs.append(dict(case=case, patient_id=patient, files=[str(f) for f in series.files],
                             source=_rel(series.folder, root), series_uid=series.uid,
                             out=str(out_dir / f"{case}.nii.gz"), max_gap_factor=p.ingest.max_gap_factor,
                             min_slices=p.ingest.min_slices))
    elif src.format in ("npz", "nifti"):
        used = set()
        for f in inputs.find_files(root, src.format):
            case = _unique(safe_case_id(inputs.case_name(f)), used)
            jobs.append(dict(case=case, patient_id=case, path=str(f), fmt=src.format, source=_rel(f, root),
                             out=str(out_dir / f"{case}.nii.gz")))
    else:
        raise ValueError(f"sources.{dataset}.format: unknown format {src.format!r} (dicom, npz or nifti)")
    return jobs, rejected, skipped


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


def run_ingest(p, dataset: str, threads: int = 1, strict: bool = False) -> int:
    """`prdit ingest`: every case of the dataset to data/interim/<dataset>/; exit status 0 if any case succeeded."""
    from prdit import tracking
    from prdit.viz import montage

    out_dir = interim_dir(dataset)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tracking.stage_run(p, stage="ingest", dataset=dataset, used=p.used("ingest", dataset)) as run:
        jobs, rejected, skipped = plan(p, dataset, out_dir, threads)
        fmt = p.sources[dataset].format
        fn = ingest_dicom if fmt == "dicom" else ingest_file
        rows = run_cases(fn, jobs, threads, desc=f"ingest {dataset}") + rejected
        rows.sort(key=lambda r: str(r["case"]))
        for r in rows:
            if r["status"] != "ok":
                log.warning("case %s rejected: %s", r["case"], r["reason"])
        table = write_table(rows, out_dir / "qc.csv", QC_COLUMNS)
        write_table(skipped, out_dir / "series.csv", ["patient_id", "series_uid", "path", "reason"])
        ok = table[table["status"] == "ok"]
        counts = {"cases_total": len(table), "cases_ok": len(ok), "cases_rejected": len(table) - len(ok),
                  "series_or_files_skipped": len(skipped)}
        if len(ok):
            counts["seconds_per_case"] = float(ok["seconds"].mean())
            sample = list(ok["case"][:MONTAGE_CASES])
            views = [quicklook(sitk.ReadImage(str(out_dir / f"{c}.nii.gz"))) for c in sample]
            run.log_image(montage(views, out_dir / "qc.png", titles=sample, vmin=-1000, vmax=1000))
        run.log_metrics(counts)
        run.log_artifact(out_dir / "qc.csv")
        run.log_artifact(out_dir / "series.csv")
    log.info("ingest %s: %d/%d cases ok, %d skipped series/files (details in %s)", dataset, len(ok), len(table),
             len(skipped), out_dir / "qc.csv")
    return batch_exit("ingest", dataset, len(ok), len(table), strict)
