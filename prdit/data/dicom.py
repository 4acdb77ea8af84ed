"""DICOM series -> HU volume: discovery of the diagnostic series, and a careful series reader.

Choices a reviewer should know about:
- Slices are ordered by ImagePositionPatient projected on the slice normal (row x column cosines),
  never by InstanceNumber or file name.
- Enhanced CT (one multi-frame file per series) is read frame by frame from its functional groups
  (plane position and orientation, pixel measures, pixel value transformation; per-frame values win
  over shared ones), then treated exactly like a classic series. Other multi-frame objects
  (secondary capture, ultrasound, angiography, ...) are rejected by SOP class with its name.
- HU = stored * RescaleSlope + RescaleIntercept, per slice. Pixels equal to PixelPaddingValue (or in
  its range) and values below -1500 HU (the -2000 / -3024 "outside the field of view" fill) become
  air (-1000 HU); remaining values below -1024 HU are clipped to -1024. A slope that is 0, negative or
  not finite, or an intercept that is not finite, rejects the series (no HU scale). Either every slice has
  rescale or none does (a mix is rejected: the bare slices' scale is unknown); with none, every slice
  must look like HU on its own (air near -1000) or the series is rejected.
- ImageOrientationPatient, ImagePositionPatient and PixelSpacing must be finite numbers in every image
  (NaN compares False and would pass every later check): checked before anything reaches ITK.
- Duplicate slices (same position, same pixels) are dropped; same position with different pixels is
  rejected. A gap above `max_gap_factor` x the median spacing is a missing slice: rejected. Smaller
  spacing irregularities are resampled linearly onto a uniform grid along the normal.
- Gantry tilt (slice origins sheared off the slice normal) is corrected: every slice is shifted in
  plane back onto the first slice's column, which puts each voxel at its true patient position on a
  rectilinear grid. Tilts above MAX_TILT_DEG are rejected.
- Every volume comes out in one orientation: LPS (SimpleITK/DICOM patient frame; array [z, y, x] with
  x towards the patient's left, y posterior, z superior, index 0 at right/anterior/inferior). A small
  obliquity of the acquisition stays in the direction matrix; preprocess resamples onto an axis-aligned grid.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from scipy import ndimage

from prdit.errors import PrditError

log = logging.getLogger(__name__)

AIR_HU = -1000
MIN_HU = -1024
PADDING_BELOW_HU = -1500
MAX_TILT_DEG = 30.0
AXIAL_MIN_COS = (
    0.8  # |slice normal . z| above this counts as axial (within about 37 degrees; tilt in the IOP)
)
OUTPUT_ORIENTATION = "LPS"
IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage: one slice per file
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage: multi-frame, functional groups
    "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT Image Storage: the same layout
}
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
HEADER_TAGS = [
    "SOPClassUID",
    "Modality",
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "PatientID",
    "ImageType",
    "ImageOrientationPatient",
    "SeriesNumber",
    "SliceThickness",
    "SeriesDescription",
    "NumberOfFrames",
    "SharedFunctionalGroupsSequence",
]


class SeriesError(PrditError, ValueError):
    """A series cannot be turned into a trustworthy volume; the message says why."""


# --------------------------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------------------------


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


def scan(root: str | Path, threads: int = 1, memo: dict | None = None) -> tuple[list[Series], list[Skipped]]:
    """Read the headers of every file under root (recursively) and group them by SeriesInstanceUID.

    `memo` (path -> [size, mtime_ns, inode, header fields]) saves re-reading unchanged files; it is
    updated in place to hold exactly the files seen now.
    """
    root = Path(root)
    paths = sorted(p for p in root.rglob("*") if p.is_file())
    infos = _read_headers(paths, threads) if memo is None else _memo_headers(paths, threads, memo)
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


def _memo_headers(paths: list[Path], threads: int, memo: dict) -> list[dict | str]:
    stats = {}
    for p in paths:
        st = p.stat()
        stats[str(p)] = [st.st_size, st.st_mtime_ns, st.st_ino]
    todo = [p for p in paths if (memo.get(str(p)) or [None])[:3] != stats[str(p)]]
    fresh = dict(zip(map(str, todo), _read_headers(todo, threads)))
    out = []
    for p in paths:
        key = str(p)
        info = fresh[key] if key in fresh else memo[key][3]
        if key in fresh:
            memo[key] = [*stats[key], info]
        if isinstance(info, dict):  # JSON keeps tuples as lists
            info = dict(
                info,
                image_type=tuple(info["image_type"]),
                normal=tuple(info["normal"]) if info["normal"] is not None else None,
            )
        out.append(info)
    for key in set(memo) - set(stats):
        del memo[key]
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
    frames = max(1, _int(ds.get("NumberOfFrames")))
    iop = ds.get("ImageOrientationPatient") or _functional(
        ds, 0, "PlaneOrientationSequence", "ImageOrientationPatient"
    )
    if iop is None and frames > 1 and str(ds.get("Modality", "")) == "CT":  # orientation given per frame only
        try:
            per = pydicom.dcmread(
                path, stop_before_pixels=True, specific_tags=["PerFrameFunctionalGroupsSequence"]
            )
            iop = _functional(per, 0, "PlaneOrientationSequence", "ImageOrientationPatient")
        except Exception:  # noqa: BLE001 - the reader reports the file's problem with the series
            iop = None
    return dict(
        uid=uid,
        patient_id=str(ds.get("PatientID", "") or ""),
        study_uid=str(ds.get("StudyInstanceUID", "")),
        modality=str(ds.get("Modality", "")),
        sop_class=str(ds.get("SOPClassUID", "")),
        image_type=tuple(str(v).upper() for v in _as_list(ds.get("ImageType", []))),
        description=str(ds.get("SeriesDescription", "")),
        series_number=_int(ds.get("SeriesNumber")),
        normal=_normal(iop),
        slice_thickness=_float(
            ds.get("SliceThickness") or _functional(ds, 0, "PixelMeasuresSequence", "SliceThickness")
        ),
        frames=frames,
    )


def _functional(ds: pydicom.Dataset, frame: int, group: str, keyword: str):
    """An attribute of a multi-frame image's functional groups: the frame's own value, else the shared one."""
    for name, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        items = ds.get(name)
        if not items or len(items) <= index:
            continue
        inner = items[index].get(group)
        if inner and keyword in inner[0]:
            return inner[0][keyword].value
    return None


def sop_name(sop_class: str) -> str:
    """A SOP class UID with its registered name, e.g. 'Enhanced MR Image Storage (1.2...4.1)'."""
    name = pydicom.uid.UID(sop_class).name
    return sop_class if name == sop_class else f"{name} ({sop_class})"


def _int(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, (str, bytes)):
        return [value]
    try:
        return list(value)
    except TypeError:
        return [value]


def _float(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _normal(iop) -> tuple[float, float, float] | None:
    try:
        v = np.asarray([float(x) for x in iop], float)
    except (TypeError, ValueError):
        return None
    if v.shape != (6,):
        return None
    n = np.cross(v[:3], v[3:])
    norm = np.linalg.norm(n)
    return tuple(n / norm) if norm > 0.5 else None


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
    memo: dict | None = None,
    show: Callable[[str], str] | None = None,
) -> tuple[dict[str, Series | None], list[Skipped]]:
    """Per patient, the chosen series (None if none qualifies); every skipped file/series with its reason.

    `memo`: see scan. `show`: what the log calls a patient (a pseudonym, prdit.data.pseudonyms); with it
    the log names no PatientID and no series UID."""
    all_series, skipped = scan(root, threads, memo)

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


# --------------------------------------------------------------------------------------------
# Reading one series
# --------------------------------------------------------------------------------------------


@dataclass
class SeriesReport:
    """What read_files did beyond the obvious: the QC notes of one series."""

    files: int = 0
    slices: int = 0
    dropped: list[str] = field(default_factory=list)
    duplicates: int = 0
    resampled: bool = False
    tilt_deg: float = 0.0
    padding_voxels: int = 0
    assumed_rescale: bool = False
    iop: tuple[float, ...] = ()

    def notes(self) -> str:
        parts = []
        if self.dropped:
            parts.append(f"dropped {len(self.dropped)} undecodable file(s): " + "; ".join(self.dropped[:3]))
        if self.duplicates:
            parts.append(f"removed {self.duplicates} duplicate slice(s)")
        if self.resampled:
            parts.append("non-uniform slice spacing resampled onto a uniform grid")
        if self.tilt_deg > 0.05:
            parts.append(f"gantry tilt {self.tilt_deg:.1f} deg corrected")
        if self.assumed_rescale:
            parts.append("no RescaleSlope/Intercept: stored values taken as HU")
        return "; ".join(parts)


def read_series(path: str | Path, max_gap_factor: float = 1.5, min_slices: int = 2) -> sitk.Image:
    """Read the one image series in a folder as an int16 HU image with its true geometry (LPS)."""
    path = Path(path)
    if not path.is_dir():
        raise SeriesError(f"{path}: not a folder")
    series, _ = scan(path)
    images = [s for s in series if not rule_out(s, 1)]
    if not images:
        raise SeriesError(f"{path}: no CT image series found")
    if len(images) > 1:
        raise SeriesError(
            f"{path}: holds {len(images)} CT image series ({', '.join(s.uid for s in images)}); "
            "pass one series per folder or use ingest's discovery"
        )
    return read_files(images[0].files, max_gap_factor=max_gap_factor, min_slices=min_slices)[0]


@dataclass
class _Slice:
    name: str  # file name, with ' frame N' for a frame of a multi-frame file
    position: np.ndarray
    stored: np.ndarray | None  # decoded stored values [row, col]; HU = stored * slope + intercept
    slope: float
    intercept: float
    padding: np.ndarray | None
    rescaled: bool = True  # the file gives RescaleSlope and RescaleIntercept (else slope 1, intercept 0)

    @property
    def hu(self) -> np.ndarray:
        return self.stored.astype(np.float32) * np.float32(self.slope) + np.float32(self.intercept)


def read_files(
    files: Iterable[str | Path], max_gap_factor: float = 1.5, min_slices: int = 2
) -> tuple[sitk.Image, SeriesReport]:
    """Files of one series -> (int16 HU image in LPS with true geometry, report). Raises SeriesError."""
    report = SeriesReport()
    slices: list[_Slice] = []
    ref: dict[str, object] = {}
    for f in files:
        report.files += 1
        f = Path(f)
        try:
            ds = pydicom.dcmread(f)
        except Exception as exc:  # noqa: BLE001
            report.dropped.append(f"{f.name}: {type(exc).__name__}")
            continue
        _assume_transfer_syntax(ds)
        frames = _frame_headers(ds, f)
        for frame in frames:
            _check_consistent(frame, ref)
        try:
            stored = _pixels(ds)
        except Exception as exc:  # noqa: BLE001 - truncated pixel data, missing decoder, ...
            report.dropped.append(f"{f.name}: cannot decode pixels ({type(exc).__name__}: {str(exc)[:80]})")
            continue
        stored = stored[None] if stored.ndim == 2 else stored
        if stored.shape != (len(frames), *ref["shape"]):
            raise SeriesError(
                f"{f}: pixel data of shape {stored.shape} for {len(frames)} frame(s) of {ref['shape']}"
            )
        for frame, pixels in zip(frames, stored):
            rescale = _rescale_pair(frame)
            slices.append(
                _Slice(
                    frame["name"],
                    np.asarray([float(v) for v in frame["position"]]),
                    pixels,
                    *(rescale or (1.0, 0.0)),
                    _padding_mask(ds, pixels),
                    rescaled=rescale is not None,
                )
            )
    if report.dropped:
        log.warning("%d file(s) could not be read: %s", len(report.dropped), "; ".join(report.dropped[:3]))
    if not slices:
        raise SeriesError(
            "no readable slice in the series" + (f" ({report.dropped[0]})" if report.dropped else "")
        )

    _check_rescale_present(slices)
    iop = np.asarray(ref["iop"], float)
    row, col = iop[:3] / np.linalg.norm(iop[:3]), iop[3:] / np.linalg.norm(iop[3:])
    normal = np.cross(row, col)
    report.iop = tuple(np.round(iop, 4))
    slices.sort(key=lambda s: float(s.position @ normal))
    slices = _drop_duplicates(slices, normal, report)
    if len(slices) < max(min_slices, 2):
        raise SeriesError(
            f"{len(slices)} slice(s) after removing unreadable/duplicate ones: not a volume "
            f"(need at least {max(min_slices, 2)})"
        )
    if not slices[0].rescaled:  # none has rescale (_check_rescale_present): every slice must look like HU
        _assume_hu(slices, report)

    pos = np.array([s.position @ normal for s in slices])
    gaps = np.diff(pos)
    dz = float(np.median(gaps))
    worst = int(np.argmax(gaps))
    if gaps[worst] > max_gap_factor * dz:
        cause = (  # an undecodable file is the likely cause of a gap: say so first
            f"{len(report.dropped)} undecodable file(s) ({'; '.join(report.dropped[:3])}) leave "
            if report.dropped
            else ""
        )
        raise SeriesError(
            f"{cause}missing slice(s): gap of {gaps[worst]:.2f} mm between slices at {pos[worst]:.2f} and "
            f"{pos[worst + 1]:.2f} mm along the normal (median spacing {dz:.2f} mm, "
            f"limit ingest.max_gap_factor={max_gap_factor})"
        )

    ps_row, ps_col = ref["spacing"]
    volume = np.empty((len(slices), *slices[0].stored.shape), np.float32)
    padding = np.zeros(volume.shape, bool)
    for k, s in enumerate(slices):  # fill slice by slice, freeing the decoded pixels: peak ~ 7 bytes/voxel
        np.multiply(s.stored, np.float32(s.slope), out=volume[k], casting="unsafe")
        volume[k] += np.float32(s.intercept)
        if s.padding is not None:
            padding[k] = s.padding
        s.stored = s.padding = None
    volume, padding = _correct_tilt(volume, padding, slices, row, col, normal, ps_row, ps_col, report)
    if np.abs(gaps - dz).max() > max(0.01 * dz, 0.01):
        volume, padding, dz = _uniform(volume, padding, pos)
        report.resampled = True

    report.padding_voxels = int(padding.sum())
    volume[padding | (volume < PADDING_BELOW_HU)] = AIR_HU
    np.maximum(volume, MIN_HU, out=volume)
    np.rint(volume, out=volume)
    hu = np.clip(volume, -32768, 32767, out=volume).astype(np.int16)
    del volume
    report.slices = hu.shape[0]

    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((float(ps_col), float(ps_row), dz))
    image.SetOrigin(tuple(float(v) for v in slices[0].position))
    image.SetDirection(tuple(np.stack([row, col, normal], axis=1).ravel()))
    return sitk.DICOMOrient(image, OUTPUT_ORIENTATION), report


def _assume_transfer_syntax(ds: pydicom.Dataset) -> None:
    """A file without file meta (no 'DICM' preamble, as old exports write) is uncompressed; its transfer
    syntax is the encoding pydicom parsed it with, which its pixel decoder needs to be told."""
    if "TransferSyntaxUID" in ds.file_meta:
        return
    implicit, little = ds.original_encoding
    if implicit is None:
        return
    ds.file_meta.TransferSyntaxUID = (
        ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    )


def _pixels(ds: pydicom.Dataset) -> np.ndarray:
    """Stored pixel values: native 16-bit little-endian frames directly, anything else via pydicom's plugins."""
    native = ds.file_meta.get("TransferSyntaxUID") in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
    if (
        native
        and ds.get("BitsAllocated") == 16
        and ds.get("BitsStored") == 16
        and ds.get("SamplesPerPixel", 1) == 1
        and int(ds.get("NumberOfFrames", 1) or 1) == 1
        and "PixelData" in ds
    ):
        rows, cols = int(ds.Rows), int(ds.Columns)
        data = ds.PixelData
        if len(data) < rows * cols * 2:
            raise ValueError(f"pixel data has {len(data)} bytes, expected {rows * cols * 2} (truncated file)")
        return np.frombuffer(data, "<i2" if ds.get("PixelRepresentation", 0) else "<u2", rows * cols).reshape(
            rows, cols
        )
    return ds.pixel_array


def _frame_headers(ds: pydicom.Dataset, f: Path) -> list[dict]:
    """Per image in the file: where it is and how its values become HU (name, orientation, position,
    spacing, matrix, slope, intercept; None where the file does not say).

    A classic file holds one image described by top-level attributes; a multi-frame (Enhanced CT) file
    describes frame i by its per-frame functional groups, falling back to the shared ones."""
    for key in ("Rows", "Columns"):
        if key not in ds:
            raise SeriesError(f"{f}: missing {key}")
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise SeriesError(f"{f}: colour pixel data (SamplesPerPixel {ds.SamplesPerPixel}) is not a CT image")
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")) == "MONOCHROME1":
        raise SeriesError(f"{f}: MONOCHROME1 pixels in a CT series (inverted grey scale) are not supported")
    shape = (int(ds.Rows), int(ds.Columns))
    n = max(1, int(ds.get("NumberOfFrames", 1) or 1))
    if "PerFrameFunctionalGroupsSequence" not in ds and "SharedFunctionalGroupsSequence" not in ds:
        if n > 1:
            raise SeriesError(f"{f}: {n} frames but no functional groups: the frames' positions are unknown")
        return [
            dict(
                name=f.name,
                where=str(f),
                orientation=ds.get("ImageOrientationPatient"),
                position=ds.get("ImagePositionPatient"),
                spacing=ds.get("PixelSpacing"),
                shape=shape,
                slope=ds.get("RescaleSlope"),
                intercept=ds.get("RescaleIntercept"),
                keys=("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"),
            )
        ]
    per = ds.get("PerFrameFunctionalGroupsSequence") or []
    if len(per) not in (0, n):
        raise SeriesError(f"{f}: {len(per)} per-frame functional groups for NumberOfFrames {n}")
    frames = []
    for i in range(n):
        frames.append(
            dict(
                name=f"{f.name} frame {i + 1}",
                where=f"{f} frame {i + 1}",
                orientation=_functional(ds, i, "PlaneOrientationSequence", "ImageOrientationPatient"),
                position=_functional(ds, i, "PlanePositionSequence", "ImagePositionPatient"),
                spacing=_functional(ds, i, "PixelMeasuresSequence", "PixelSpacing"),
                shape=shape,
                slope=_rescale(ds, i, "RescaleSlope"),
                intercept=_rescale(ds, i, "RescaleIntercept"),
                keys=(
                    "ImageOrientationPatient (PlaneOrientationSequence)",
                    "ImagePositionPatient (PlanePositionSequence)",
                    "PixelSpacing (PixelMeasuresSequence)",
                ),
            )
        )
    return frames


def _rescale(ds: pydicom.Dataset, frame: int, keyword: str):
    """A frame's rescale value: its PixelValueTransformationSequence, else the top-level attribute."""
    value = _functional(ds, frame, "PixelValueTransformationSequence", keyword)
    return ds.get(keyword) if value is None else value


def _rescale_pair(frame: dict) -> tuple[float, float] | None:
    """A frame's (RescaleSlope, RescaleIntercept); None when either is missing (or empty).

    SeriesError naming the image when a value is not a number, the slope is not positive and finite (a
    slope of 0 would make every voxel the intercept, a negative one inverts the grey scale) or the
    intercept is not finite: there is no HU scale to read the slice on, and no repair the standard gives."""
    slope, intercept = frame["slope"], frame["intercept"]
    if slope in (None, "") or intercept in (None, ""):
        return None
    try:
        values = float(slope), float(intercept)
    except (TypeError, ValueError):
        raise SeriesError(
            f"{frame['where']}: RescaleSlope {slope!r} / RescaleIntercept {intercept!r} is not a number: "
            "HU scale unknown"
        ) from None
    if not (np.isfinite(values[0]) and values[0] > 0):
        raise SeriesError(
            f"{frame['where']}: RescaleSlope {values[0]:g} is not a positive finite number: HU scale unknown"
        )
    if not np.isfinite(values[1]):
        raise SeriesError(f"{frame['where']}: RescaleIntercept {values[1]:g} is not finite: HU scale unknown")
    return values


def _check_rescale_present(slices: list[_Slice]) -> None:
    """All slices give RescaleSlope/RescaleIntercept, or none does; a mix leaves the bare slices' HU unknown."""
    bare = [s.name for s in slices if not s.rescaled]
    if not bare or len(bare) == len(slices):
        return
    intercepts = sorted({s.intercept for s in slices if s.rescaled})
    others = ", ".join(f"{v:g}" for v in intercepts[:3]) + (", ..." if len(intercepts) > 3 else "")
    raise SeriesError(
        f"RescaleSlope/RescaleIntercept missing in {len(bare)} of {len(slices)} slice(s) "
        f"({', '.join(bare[:3])}{', ...' if len(bare) > 3 else ''}) while the others have them "
        f"(intercept {others}): HU scale of those slices unknown"
    )


def _check_consistent(frame: dict, ref: dict) -> None:
    """Every image must share orientation, matrix size and pixel spacing with the first one."""
    where = frame["where"]
    for key, value in zip(frame["keys"], (frame["orientation"], frame["position"], frame["spacing"])):
        if value is None:
            raise SeriesError(f"{where}: missing {key}")
    try:
        iop = [float(v) for v in frame["orientation"]]
        position = [float(v) for v in frame["position"]]
        spacing = tuple(float(v) for v in frame["spacing"])
    except (TypeError, ValueError):
        raise SeriesError(f"{where}: orientation, position or pixel spacing is not numeric") from None
    if len(iop) != 6 or len(position) != 3 or len(spacing) != 2:
        raise SeriesError(f"{where}: orientation, position or pixel spacing has the wrong number of values")
    for key, values in zip(frame["keys"], (iop, position, spacing)):  # NaN compares False: check, never trust
        if not np.all(np.isfinite(values)):
            shown = ", ".join(f"{v:g}" for v in values)
            raise SeriesError(f"{where}: {key} ({shown}) is not finite (NaN or infinite): position unknown")
    shape = frame["shape"]
    f = where
    if not ref:
        if min(spacing) <= 0:
            raise SeriesError(f"{f}: PixelSpacing {spacing} is not positive")
        ref.update(iop=iop, spacing=spacing, shape=shape)
        return
    if np.abs(np.subtract(iop, ref["iop"])).max() > 1e-3:
        raise SeriesError(f"{f}: ImageOrientationPatient {iop} differs from the series' {ref['iop']}")
    if shape != ref["shape"]:
        raise SeriesError(f"{f}: matrix {shape} differs from the series' {ref['shape']}")
    if np.abs(np.subtract(spacing, ref["spacing"])).max() > 1e-3:
        raise SeriesError(f"{f}: PixelSpacing {spacing} differs from the series' {ref['spacing']}")


def _padding_mask(ds: pydicom.Dataset, stored: np.ndarray) -> np.ndarray | None:
    if "PixelPaddingValue" not in ds:
        return None
    lo = int(ds.PixelPaddingValue)
    hi = int(ds.get("PixelPaddingRangeLimit", lo))
    lo, hi = min(lo, hi), max(lo, hi)
    return (stored >= lo) & (stored <= hi)


def _drop_duplicates(slices: list[_Slice], normal: np.ndarray, report: SeriesReport) -> list[_Slice]:
    """Drop repeated slices at one position; two different images at one position is an error."""
    kept = [slices[0]]
    for s in slices[1:]:
        prev = kept[-1]
        if abs(float((s.position - prev.position) @ normal)) < 0.01:
            if np.abs(s.hu - prev.hu).mean() > 1.0:
                raise SeriesError(
                    f"two different images at the same position ({s.name}, {prev.name}): "
                    "overlapping acquisitions in one series"
                )
            report.duplicates += 1
            continue
        kept.append(s)
    return kept


def _assume_hu(slices: list[_Slice], report: SeriesReport) -> None:
    """No RescaleSlope/Intercept: accept stored values only if every slice looks like HU (air near -1000).

    Checked per slice: a slice stored on another scale (e.g. HU + 1024) among HU slices is caught too."""
    bad = []
    for s in slices:
        values = s.hu[::2, ::2].ravel()
        values = values[values > PADDING_BELOW_HU]
        low = float(np.percentile(values, 1)) if values.size else float("nan")
        if not -1100.0 <= low <= -900.0:
            bad.append((s.name, low))
    if bad:
        name, low = bad[0]
        raise SeriesError(
            f"RescaleIntercept/RescaleSlope missing and the stored values of {len(bad)} of {len(slices)} "
            f"slice(s) do not look like HU ({name}: 1st percentile {low:.0f}, expected air near -1000): "
            "HU scale unknown"
        )
    report.assumed_rescale = True


def _correct_tilt(
    volume: np.ndarray,
    padding: np.ndarray,
    slices: list[_Slice],
    row: np.ndarray,
    col: np.ndarray,
    normal: np.ndarray,
    ps_row: float,
    ps_col: float,
    report: SeriesReport,
):
    """Shift each slice in plane so all slice origins lie on the normal through the first one."""
    offsets = np.array([s.position - slices[0].position for s in slices])
    along = offsets @ normal
    shear = offsets - along[:, None] * normal[None]
    drift = np.linalg.norm(shear, axis=1)
    if drift.max() < 0.01:
        return volume, padding
    span = float(along[-1] - along[0])
    tilt = float(np.degrees(np.arctan2(drift[-1], span)))
    if tilt > MAX_TILT_DEG:
        raise SeriesError(f"gantry tilt {tilt:.1f} deg exceeds the supported {MAX_TILT_DEG:.0f} deg")
    report.tilt_deg = tilt
    out = np.empty_like(volume)
    pad = np.empty_like(padding)
    for k in range(len(slices)):
        # Content at pixel (r, c) of slice k sits at origin_k + c*ps_col*row + r*ps_row*col; move it onto slice 0's grid.
        shift = (float(shear[k] @ col) / ps_row, float(shear[k] @ row) / ps_col)
        out[k] = ndimage.shift(volume[k], shift, order=1, mode="constant", cval=AIR_HU)
        pad[k] = ndimage.shift(padding[k].astype(np.float32), shift, order=0, mode="constant", cval=0) > 0.5
    return out, pad


def _uniform(
    volume: np.ndarray, padding: np.ndarray, pos: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float]:
    """Linear interpolation along the slice axis onto a uniform grid at the median spacing."""
    dz = float(np.median(np.diff(pos)))
    n = int(round((pos[-1] - pos[0]) / dz)) + 1
    dz = float(pos[-1] - pos[0]) / (n - 1)
    target = pos[0] + np.arange(n) * dz
    j = np.clip(np.searchsorted(pos, target, side="right") - 1, 0, len(pos) - 2)
    w = ((target - pos[j]) / (pos[j + 1] - pos[j])).astype(np.float32)[:, None, None]
    out = volume[j] * (1 - w) + volume[j + 1] * w
    pad = np.where(w < 0.5, padding[j], padding[j + 1])
    return out.astype(np.float32), pad, dz
