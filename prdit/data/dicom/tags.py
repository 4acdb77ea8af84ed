"""DICOM facts both discovery and reading rely on: HU constants, the tags read, safe header values."""

from __future__ import annotations

import numpy as np
import pydicom

from prdit.errors import PrditError

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


def functional_value(ds: pydicom.Dataset, frame: int, group: str, keyword: str):
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


def header_int(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def header_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, (str, bytes)):
        return [value]
    try:
        return list(value)
    except TypeError:
        return [value]


def header_float(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def slice_normal(iop) -> tuple[float, float, float] | None:
    try:
        v = np.asarray([float(x) for x in iop], float)
    except (TypeError, ValueError):
        return None
    if v.shape != (6,):
        return None
    n = np.cross(v[:3], v[3:])
    norm = np.linalg.norm(n)
    return tuple(n / norm) if norm > 0.5 else None
