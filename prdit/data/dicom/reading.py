"""Reading one series: slices to a HU volume in LPS (rescale, padding, duplicates, gaps, tilt, spacing)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from scipy import ndimage

from prdit.data.dicom.discovery import rule_out, scan
from prdit.data.dicom.tags import (
    AIR_HU,
    MAX_TILT_DEG,
    MIN_HU,
    OUTPUT_ORIENTATION,
    PADDING_BELOW_HU,
    SeriesError,
    functional_value,
)

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class _Axes:
    """The series' patient-space frame (LPS): unit row, column and slice-normal directions, pixel spacing (mm)."""

    row: np.ndarray
    col: np.ndarray
    normal: np.ndarray
    ps_row: float
    ps_col: float

    @classmethod
    def of(cls, iop: np.ndarray, spacing: tuple[float, float]) -> _Axes:
        row, col = iop[:3] / np.linalg.norm(iop[:3]), iop[3:] / np.linalg.norm(iop[3:])
        return cls(row, col, np.cross(row, col), *spacing)


def read_files(
    files: Iterable[str | Path], max_gap_factor: float = 1.5, min_slices: int = 2
) -> tuple[sitk.Image, SeriesReport]:
    """Files of one series -> (int16 HU image in LPS with true geometry, report). Raises SeriesError."""
    report = SeriesReport()
    slices, ref = _read_slices(files, report)
    _check_rescale_present(slices)
    iop = np.asarray(ref["iop"], float)
    axes = _Axes.of(iop, ref["spacing"])
    normal = axes.normal
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
    _check_gaps(pos, gaps, dz, max_gap_factor, report)

    volume, padding = _stack(slices)
    volume, padding = _correct_tilt(volume, padding, slices, axes, report)
    if np.abs(gaps - dz).max() > max(0.01 * dz, 0.01):
        volume, padding, dz = _uniform(volume, padding, pos)
        report.resampled = True
    hu = _to_int16_hu(volume, padding, report)
    del volume, padding
    report.slices = hu.shape[0]

    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((float(axes.ps_col), float(axes.ps_row), dz))
    image.SetOrigin(tuple(float(v) for v in slices[0].position))
    image.SetDirection(tuple(np.stack([axes.row, axes.col, normal], axis=1).ravel()))
    return sitk.DICOMOrient(image, OUTPUT_ORIENTATION), report


def _read_slices(files: Iterable[str | Path], report: SeriesReport) -> tuple[list[_Slice], dict[str, object]]:
    """Every decodable image of the files (unsorted) and the series' reference header (orientation, spacing,
    matrix); undecodable files are noted in the report, and none readable is a SeriesError."""
    slices: list[_Slice] = []
    ref: dict[str, object] = {}
    for f in files:
        slices += _read_file(Path(f), ref, report)
    if report.dropped:
        log.warning("%d file(s) could not be read: %s", len(report.dropped), "; ".join(report.dropped[:3]))
    if not slices:
        raise SeriesError(
            "no readable slice in the series" + (f" ({report.dropped[0]})" if report.dropped else "")
        )
    return slices, ref


def _read_file(f: Path, ref: dict[str, object], report: SeriesReport) -> list[_Slice]:
    """The images of one file (several for a multi-frame one); [] when it cannot be read or decoded."""
    report.files += 1
    try:
        ds = pydicom.dcmread(f)
    except Exception as exc:  # noqa: BLE001
        report.dropped.append(f"{f.name}: {type(exc).__name__}")
        return []
    _assume_transfer_syntax(ds)
    frames = _frame_headers(ds, f)
    for frame in frames:
        _check_consistent(frame, ref)
    try:
        stored = _pixels(ds)
    except Exception as exc:  # noqa: BLE001 - truncated pixel data, missing decoder, ...
        report.dropped.append(f"{f.name}: cannot decode pixels ({type(exc).__name__}: {str(exc)[:80]})")
        return []
    stored = stored[None] if stored.ndim == 2 else stored
    if stored.shape != (len(frames), *ref["shape"]):
        raise SeriesError(
            f"{f}: pixel data of shape {stored.shape} for {len(frames)} frame(s) of {ref['shape']}"
        )
    slices = []
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
    return slices


def _check_gaps(
    pos: np.ndarray, gaps: np.ndarray, dz: float, max_gap_factor: float, report: SeriesReport
) -> None:
    """SeriesError naming the widest gap when it exceeds max_gap_factor x the median spacing dz."""
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


def _stack(slices: list[_Slice]) -> tuple[np.ndarray, np.ndarray]:
    """HU volume (float32) and padding mask of the sorted slices, freeing each slice's decoded pixels."""
    volume = np.empty((len(slices), *slices[0].stored.shape), np.float32)
    padding = np.zeros(volume.shape, bool)
    for k, s in enumerate(slices):  # fill slice by slice, freeing the decoded pixels: peak ~ 7 bytes/voxel
        np.multiply(s.stored, np.float32(s.slope), out=volume[k], casting="unsafe")
        volume[k] += np.float32(s.intercept)
        if s.padding is not None:
            padding[k] = s.padding
        s.stored = s.padding = None
    return volume, padding


def _to_int16_hu(volume: np.ndarray, padding: np.ndarray, report: SeriesReport) -> np.ndarray:
    """Padding (and values below PADDING_BELOW_HU) to air, clamp at MIN_HU, round: int16 HU (volume is reused)."""
    report.padding_voxels = int(padding.sum())
    volume[padding | (volume < PADDING_BELOW_HU)] = AIR_HU
    np.maximum(volume, MIN_HU, out=volume)
    np.rint(volume, out=volume)
    return np.clip(volume, -32768, 32767, out=volume).astype(np.int16)


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
                orientation=functional_value(ds, i, "PlaneOrientationSequence", "ImageOrientationPatient"),
                position=functional_value(ds, i, "PlanePositionSequence", "ImagePositionPatient"),
                spacing=functional_value(ds, i, "PixelMeasuresSequence", "PixelSpacing"),
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
    value = functional_value(ds, frame, "PixelValueTransformationSequence", keyword)
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
    volume: np.ndarray, padding: np.ndarray, slices: list[_Slice], axes: _Axes, report: SeriesReport
) -> tuple[np.ndarray, np.ndarray]:
    """Shift each slice in plane so all slice origins lie on the normal through the first one."""
    row, col, normal, ps_row, ps_col = axes.row, axes.col, axes.normal, axes.ps_row, axes.ps_col
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
