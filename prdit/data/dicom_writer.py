"""CT series -> DICOM files: a small, fast CT Image Storage encoder (explicit VR little endian).

Used by the synthetic phantom (prdit.data.phantom) and by the tests' corpora. It writes what real
scanners write for one axial series (one file per slice, rescale, padding value, identity fields)
so that the readers in prdit.data.dicom are exercised on real DICOM, not on a shortcut.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr, write_data_element, write_file_meta_info
from pydicom.tag import Tag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian


def uid(*parts: object) -> str:
    """A deterministic UUID-derived UID (2.25 root) from the given parts, so reruns write identical files."""
    return "2.25." + str(uuid.uuid5(uuid.NAMESPACE_OID, "/".join(["prdit-phantom", *map(str, parts)])).int)


@dataclass(frozen=True)
class SeriesHeader:
    """What every slice of one series says besides its position and pixels: identity, thickness, type,
    rescale and padding (pixels under `padding_mask` get the raw `padding_value`), and `extra` elements."""

    patient_id: str
    study_uid: str
    series_uid: str
    slice_thickness: float
    intercept: float = -1024.0
    slope: float = 1.0
    padding_mask: np.ndarray | None = None
    padding_value: int = -2000
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL")
    modality: str = "CT"
    series_number: int = 2
    extra: dict | None = None


def write_ct_series(
    folder: Path,
    hu: np.ndarray,
    ipp: np.ndarray,
    iop: Sequence[float],
    pixel_spacing: tuple[float, float],
    header: SeriesHeader,
    *,
    names: Sequence[str] | None = None,
) -> list[Path]:
    """Write hu[k] ([slice, row, col], HU) as one CT Image Storage file per slice; return the paths.

    ipp[k] is slice k's ImagePositionPatient (mm, LPS); pixel_spacing is (row, column) spacing.
    Pixels under header.padding_mask get the raw padding_value and PixelPaddingValue is set.
    """
    folder.mkdir(parents=True, exist_ok=True)
    stored = np.rint((np.asarray(hu, np.float64) - header.intercept) / header.slope)
    stored = np.clip(stored, -32768, 32767).astype(np.int16)
    if header.padding_mask is not None:
        stored[np.broadcast_to(header.padding_mask, stored.shape)] = header.padding_value
    ds = _base_dataset(hu.shape[1:], iop, pixel_spacing, header)
    if header.padding_mask is not None:
        ds.PixelPaddingValue = int(header.padding_value)
    for key, value in (header.extra or {}).items():
        setattr(ds, key, value)
    normal = np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:], float))
    paths = []
    writer = None
    for k in range(hu.shape[0]):
        sop = uid(header.series_uid, "instance", k)
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.SOPInstanceUID = sop
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [_ds(v) for v in ipp[k]]
        ds.SliceLocation = _ds(float(np.dot(ipp[k], normal)))
        ds.PixelData = stored[k].tobytes()
        writer = writer or _SliceWriter(ds)
        path = folder / (names[k] if names is not None else f"IM{k + 1:05d}.dcm")
        path.write_bytes(writer.encode(ds))
        paths.append(path)
    return paths


class _SliceWriter:
    """Encodes the slices of one series fast: the constant elements are encoded once, per slice only
    the file meta and the elements that change (explicit VR little endian, as pydicom would write)."""

    VARYING = (
        Tag("SOPInstanceUID"),
        Tag("InstanceNumber"),
        Tag("ImagePositionPatient"),
        Tag("SliceLocation"),
        Tag("PixelData"),
    )

    def __init__(self, ds: Dataset) -> None:
        correct_ambiguous_vr(ds, True)  # e.g. PixelPaddingValue is US or SS depending on PixelRepresentation
        self.chunks: list[bytes] = []
        current: list = []
        for elem in ds:
            if elem.tag in self.VARYING:
                self.chunks.append(self._encode(current))
                current = []
            else:
                current.append(elem)
        self.chunks.append(self._encode(current))

    @staticmethod
    def _fp() -> DicomBytesIO:
        fp = DicomBytesIO()
        fp.is_little_endian = True
        fp.is_implicit_VR = False
        return fp

    def _encode(self, elems) -> bytes:
        fp = self._fp()
        for elem in elems:
            write_data_element(fp, elem)
        return fp.getvalue()

    def encode(self, ds: Dataset) -> bytes:
        fp = self._fp()
        fp.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(fp, ds.file_meta, enforce_standard=True)
        parts = [fp.getvalue(), self.chunks[0]]
        for tag, chunk in zip(self.VARYING, self.chunks[1:]):
            parts += [self._encode([ds[tag]]), chunk]
        return b"".join(parts)


def _ds(value: float) -> str:
    """A DICOM decimal string (at most 16 characters)."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text if len(text) <= 16 else f"{value:.8g}"


def _base_dataset(
    shape: tuple[int, int], iop: Sequence[float], pixel_spacing: tuple[float, float], header: SeriesHeader
) -> Dataset:
    """The elements every slice shares (the varying ones are set per slice by write_ct_series)."""
    patient_id, study_uid, image_type = header.patient_id, header.study_uid, header.image_type
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.ImageType = list(image_type)
    ds.Modality = header.modality
    ds.Manufacturer = "PRDiT synthetic phantom"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20000101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.PatientName = f"Synthetic^{patient_id}"  # synthetic; ingest must never copy it anywhere
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = header.series_uid
    ds.FrameOfReferenceUID = uid(study_uid, "frame")
    ds.StudyID = "1"
    ds.SeriesNumber = header.series_number
    ds.SeriesDescription = "CHEST " + "/".join(image_type[2:3]).lower()
    ds.PatientPosition = "HFS"
    ds.KVP = "120"
    ds.ConvolutionKernel = "STANDARD"
    ds.ImageOrientationPatient = [_ds(v) for v in iop]
    ds.PixelSpacing = [_ds(pixel_spacing[0]), _ds(pixel_spacing[1])]
    ds.SliceThickness = _ds(header.slice_thickness)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(shape[0]), int(shape[1])
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = _ds(header.intercept)
    ds.RescaleSlope = _ds(header.slope)
    ds.RescaleType = "HU"
    ds.WindowCenter = "-600"
    ds.WindowWidth = "1500"
    return ds
