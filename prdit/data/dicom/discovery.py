"""Discovery: the CT series under a folder, their headers (cached by file stamp), and the diagnostic one
chosen per patient; what is ruled out and why."""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from prdit.data.dicom.tags import (
    AXIAL_MIN_COS,
    CT_IMAGE_STORAGE,
    HEADER_TAGS,
    IMAGE_SOP_CLASSES,
    functional_value,
    header_float,
    header_int,
    header_list,
    slice_normal,
    sop_name,
)
from prdit.io import file_stamp

log = logging.getLogger(__name__)


@dataclass
class Series:
    """The files of one SeriesInstanceUID and what the headers say about them."""

    uid: str
    patient_id: str
    study_uid: str
    modality: str
    sop_class: str
    image_type: tuple[str, ...]
    description: str
    series_number: int
    normal: tuple[float, float, float] | None
    slice_thickness: float | None
    files: list[Path] = field(default_factory=list)
    frames: int = 0  # images over all files: one per classic file, NumberOfFrames per multi-frame file

    @property
    def folder(self) -> Path:
        return Path(os.path.commonpath([str(f.parent) for f in self.files]))

    @property
    def where(self) -> Path:
        """What to name in a report: the file of a one-file series, else the folder."""
        return self.files[0] if len(self.files) == 1 else self.folder


@dataclass(frozen=True)
class Skipped:
    """A file or series left out, and why."""

    path: str
    reason: str
    series_uid: str = ""
    patient_id: str = ""


def scan(
    root: str | Path, threads: int = 1, header_cache: dict | None = None
) -> tuple[list[Series], list[Skipped]]:
    """Read the headers of every file under root (recursively) and group them by SeriesInstanceUID.

    `header_cache` (path -> [size, mtime_ns, inode, header fields]) saves re-reading unchanged files; it is
    updated in place to hold exactly the files seen now.
    """
    root = Path(root)
    paths = sorted(p for p in root.rglob("*") if p.is_file())
    infos = (
        _read_headers(paths, threads)
        if header_cache is None
        else _cached_headers(paths, threads, header_cache)
    )
    series: dict[str, Series] = {}
    skipped: list[Skipped] = []
    for path, info in zip(paths, infos):
        if isinstance(info, str):
            skipped.append(Skipped(str(path), info))
            continue
        info = dict(info)
        frames = int(info.pop("frames", 1))
        s = series.get(info["uid"])
        if s is None:
            info["patient_id"] = info["patient_id"] or path.relative_to(root).parts[0]
            s = series[info["uid"]] = Series(**info)
        s.files.append(path)
        s.frames += frames
    return list(series.values()), skipped


def _cached_headers(paths: list[Path], threads: int, header_cache: dict) -> list[dict | str]:
    stats = {str(p): file_stamp(p) for p in paths}
    todo = [p for p in paths if (header_cache.get(str(p)) or [None])[:3] != stats[str(p)]]
    fresh = dict(zip(map(str, todo), _read_headers(todo, threads)))
    out = []
    for p in paths:
        key = str(p)
        info = fresh[key] if key in fresh else header_cache[key][3]
        if key in fresh:
            header_cache[key] = [*stats[key], info]
        if isinstance(info, dict):  # JSON keeps tuples as lists
            info = dict(
                info,
                image_type=tuple(info["image_type"]),
                normal=tuple(info["normal"]) if info["normal"] is not None else None,
            )
        out.append(info)
    for key in set(header_cache) - set(stats):
        del header_cache[key]
    return out


def _read_headers(paths: list[Path], threads: int) -> list[dict | str]:
    """Header fields (or the reason a file is skipped) per path; many files are read by a process pool."""
    chunk = 500
    if threads <= 1 or len(paths) < 4 * chunk:
        return _headers(paths)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    chunks = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]
    with ProcessPoolExecutor(threads, mp_context=multiprocessing.get_context("spawn")) as pool:
        return [info for part in pool.map(_headers, chunks) for info in part]


def _headers(paths: list[Path]) -> list[dict | str]:
    return [_header(p) for p in paths]


def _header(path: Path) -> dict | str:
    """The Series fields of one file's header, or why the file is skipped."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=HEADER_TAGS)
    except InvalidDicomError:
        return "not a DICOM file"
    except Exception as exc:  # noqa: BLE001 - any unreadable header is a skip with its reason
        return f"unreadable DICOM header ({type(exc).__name__}: {exc})"
    uid = str(ds.get("SeriesInstanceUID", "") or "")
    if not uid:
        return "not a DICOM image (no series UID)" if "SOPClassUID" not in ds else "no SeriesInstanceUID"
    frames = max(1, header_int(ds.get("NumberOfFrames")))
    iop = ds.get("ImageOrientationPatient") or functional_value(
        ds, 0, "PlaneOrientationSequence", "ImageOrientationPatient"
    )
    if iop is None and frames > 1 and str(ds.get("Modality", "")) == "CT":  # orientation given per frame only
        try:
            per = pydicom.dcmread(
                path, stop_before_pixels=True, specific_tags=["PerFrameFunctionalGroupsSequence"]
            )
            iop = functional_value(per, 0, "PlaneOrientationSequence", "ImageOrientationPatient")
        except Exception:  # noqa: BLE001 - the reader reports the file's problem with the series
            iop = None
    return dict(
        uid=uid,
        patient_id=str(ds.get("PatientID", "") or ""),
        study_uid=str(ds.get("StudyInstanceUID", "")),
        modality=str(ds.get("Modality", "")),
        sop_class=str(ds.get("SOPClassUID", "")),
        image_type=tuple(str(v).upper() for v in header_list(ds.get("ImageType", []))),
        description=str(ds.get("SeriesDescription", "")),
        series_number=header_int(ds.get("SeriesNumber")),
        normal=slice_normal(iop),
        slice_thickness=header_float(
            ds.get("SliceThickness") or functional_value(ds, 0, "PixelMeasuresSequence", "SliceThickness")
        ),
        frames=frames,
    )


def rule_out(s: Series, min_slices: int) -> str:
    """Why this series is not a diagnostic axial CT volume ('' if it is a candidate)."""
    if s.modality != "CT":
        return f"modality {s.modality or 'missing'} (not CT)"
    if s.sop_class and s.sop_class not in IMAGE_SOP_CLASSES:
        multi = (
            f"multi-frame ({s.frames} frames in {len(s.files)} file(s)) " if s.frames > len(s.files) else ""
        )
        return (
            f"{multi}SOP class {sop_name(s.sop_class)} is not a CT image (read: CT, Enhanced CT and "
            "Legacy Converted Enhanced CT Image Storage)"
        )
    if {"LOCALIZER", "SCOUT", "TOPOGRAM"} & set(s.image_type):
        return "localizer/scout (ImageType " + "\\".join(s.image_type) + ")"
    if s.normal is None:
        where = "PlaneOrientationSequence" if s.sop_class != CT_IMAGE_STORAGE else "ImageOrientationPatient"
        return f"no usable image orientation ({where} missing or not two unit vectors)"
    if abs(s.normal[2]) < AXIAL_MIN_COS:
        return f"not axial (slice normal {tuple(round(c, 2) for c in s.normal)})"
    if s.frames < min_slices:
        return f"{s.frames} slice(s), fewer than ingest.min_slices={min_slices}"
    return ""


def select(candidates: Sequence[Series]) -> Series:
    """Pick one series among candidates: ORIGINAL before DERIVED, most slices, thinnest, lowest number, UID."""
    return min(
        candidates,
        key=lambda s: (
            "ORIGINAL" not in s.image_type,
            -s.frames,
            s.slice_thickness or 1e9,
            s.series_number,
            s.uid,
        ),
    )


def discover(
    root: str | Path,
    min_slices: int,
    threads: int = 1,
    header_cache: dict | None = None,
    show: Callable[[str], str] | None = None,
) -> tuple[dict[str, Series | None], list[Skipped]]:
    """Per patient, the chosen series (None if none qualifies); every skipped file/series with its reason.

    `header_cache`: see scan. `show`: what the log calls a patient (a pseudonym, prdit.data.pseudonyms); with it
    the log names no PatientID and no series UID."""
    all_series, skipped = scan(root, threads, header_cache)

    def tell(patient: str, message: str, uid: str, *args) -> None:
        if show is None:
            log.info("patient %s: " + message, patient, uid, *args)
        else:
            log.info("patient %s: " + message.replace("series %s", "a series"), show(patient), *args)

    by_patient: dict[str, list[Series]] = defaultdict(list)
    for s in all_series:
        by_patient[s.patient_id].append(s)
    chosen: dict[str, Series | None] = {}
    for patient, group in sorted(by_patient.items()):
        candidates = []
        for s in group:
            why = rule_out(s, min_slices)
            if why:
                skipped.append(Skipped(str(s.where), why, s.uid, patient))
                tell(patient, "skip series %s: %s", s.uid, why)
            else:
                candidates.append(s)
        chosen[patient] = select(candidates) if candidates else None
        for s in candidates:
            if s is not chosen[patient]:
                why = f"not selected: series {chosen[patient].uid} preferred (ORIGINAL, more slices, thinner)"
                skipped.append(Skipped(str(s.where), why, s.uid, patient))
                tell(patient, "skip series %s: %s", s.uid, "not selected" if show else why)
        if chosen[patient] is not None:
            tell(
                patient,
                "selected series %s (%d files, %d images)",
                chosen[patient].uid,
                len(chosen[patient].files),
                chosen[patient].frames,
            )
    return chosen, skipped
