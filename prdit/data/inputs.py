"""Non-DICOM inputs to ingest: RAD-ChestCT .npz volumes and plain folders of NIfTI files.

RAD-ChestCT (Draelos et al. 2021, Zenodo record 6406114) ships each scan as an .npz whose `ct` array
holds HU already clipped to [-1000, 1000], resampled to 0.8 mm isotropic, axial slices first and
sorted by increasing z (feet to head), rows anterior->posterior, columns right->left: that is LPS
with an identity direction. An optional `spacing` entry (x, y, z mm) in the file overrides 0.8 mm.
A volume with any NaN or infinite voxel, or a non-finite geometry, is rejected with the count and the file.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from prdit.data.dicom import AIR_HU, MIN_HU, OUTPUT_ORIENTATION, PADDING_BELOW_HU, SeriesError

RAD_CHESTCT_SPACING_MM = 0.8
NIFTI_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


def case_name(path: Path) -> str:
    """The case id of a single-file input: its name without the (double) suffix."""
    name = path.name
    for suffix in (".npz",) + NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def to_hu_int16(values: np.ndarray) -> np.ndarray:
    """Round to int16 HU, with fill values below -1500 HU set to air and the rest clipped at -1024."""
    values = np.asarray(values, np.float32)
    values = np.where(values < PADDING_BELOW_HU, AIR_HU, np.maximum(values, MIN_HU))
    return np.clip(np.rint(values), -32768, 32767).astype(np.int16)


def check_finite(path: Path, values: np.ndarray) -> None:
    """SeriesError naming the file and the count when any voxel is NaN or infinite.

    Such a voxel has no HU (casting would make it 0 HU, water; an all-NaN volume would pass as tissue):
    the whole volume is rejected, however few there are."""
    if values.dtype.kind not in "fc":
        return
    bad = ~np.isfinite(values)
    n_bad = int(np.count_nonzero(bad))
    if not n_bad:
        return
    n_nan = int(np.count_nonzero(np.isnan(values)))
    parts = [f"{n_nan} NaN"] if n_nan else []
    parts += [f"{n_bad - n_nan} infinite"] if n_bad > n_nan else []
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    raise SeriesError(
        f"{path}: {' and '.join(parts)} voxel(s) of {values.size} ({n_bad / values.size:.3%}, first at "
        f"[z, y, x] = {list(first)}): not a volume in HU"
    )


def check_geometry(path: Path, image: sitk.Image) -> None:
    """SeriesError naming the file when spacing, origin or direction is not finite, or a spacing not positive."""
    spacing, origin, direction = image.GetSpacing(), image.GetOrigin(), image.GetDirection()
    if not (np.all(np.isfinite([*spacing, *origin, *direction])) and min(spacing) > 0):
        raise SeriesError(
            f"{path}: geometry not usable (spacing {spacing}, origin {origin}, direction {direction}): "
            "spacing must be positive and every value finite"
        )


def read_npz(path: Path) -> sitk.Image:
    """A RAD-ChestCT .npz (HU under `ct`, [z, y, x]) as an int16 HU image in LPS."""
    with np.load(path, allow_pickle=False) as data:
        if "ct" not in data:
            raise SeriesError(f"{path}: no 'ct' array (keys: {', '.join(data.files) or 'none'})")
        ct = data["ct"]
        spacing = (
            tuple(float(s) for s in data["spacing"]) if "spacing" in data else (RAD_CHESTCT_SPACING_MM,) * 3
        )
    if ct.ndim != 3:
        raise SeriesError(f"{path}: 'ct' has shape {ct.shape}, expected a 3D [z, y, x] volume")
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise SeriesError(f"{path}: 'spacing' {spacing} is not three positive numbers")
    check_finite(path, ct)
    image = sitk.GetImageFromArray(to_hu_int16(ct))
    image.SetSpacing(spacing)
    return image


def _check_nifti_finite(path: Path) -> None:
    """check_finite on a NIfTI file's stored voxels, read by nibabel: ITK's NIfTI reader turns NaN into 0."""
    try:
        img = nib.load(path)
        if img.get_data_dtype().kind not in "fc":
            return
        values = np.asanyarray(img.dataobj)
    except Exception:  # noqa: BLE001 - an unreadable file is reported by the ITK reader, with its reason
        return
    check_finite(path, values.transpose(*reversed(range(values.ndim))))  # [z, y, x] as ITK indexes it


def read_hu_image(path: Path) -> sitk.Image:
    """A NIfTI (or other ITK-readable) volume in HU, reoriented to LPS, as int16."""
    if path.name.lower().endswith((".nii", ".nii.gz")):
        _check_nifti_finite(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise SeriesError(f"{path}: cannot read ({str(exc).strip().splitlines()[-1]})") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise SeriesError(
            f"{path}: expected a scalar 3D volume, got {image.GetDimension()}D with "
            f"{image.GetNumberOfComponentsPerPixel()} component(s)"
        )
    check_geometry(path, image)
    image = sitk.DICOMOrient(image, OUTPUT_ORIENTATION)
    values = sitk.GetArrayViewFromImage(image)
    check_finite(path, values)
    out = sitk.GetImageFromArray(to_hu_int16(values))
    out.CopyInformation(image)
    return out


class FileReader(ABC):
    """How one single-file input format (one file = one case) is found and read: the shape of MONAI's
    ImageReader. DICOM is not one: its cases are series, found by prdit.data.dicom.discover."""

    format: ClassVar[str]  # the sources.<name>.format value
    suffixes: ClassVar[tuple[str, ...]]  # file name endings of its inputs (lower case)

    def find(self, root: Path) -> list[Path]:
        """The source's input files, sorted."""
        return sorted(p for p in root.rglob("*") if p.is_file() and p.name.lower().endswith(self.suffixes))

    def patterns(self) -> str:
        """What find looks for, for the 'nothing found' error."""
        return ", ".join("*" + s for s in self.suffixes)

    @abstractmethod
    def read(self, path: Path) -> sitk.Image:
        """The file as an int16 HU image in LPS; SeriesError naming the file when it is not usable."""


class NpzReader(FileReader):
    format = "npz"
    suffixes = (".npz",)

    def read(self, path: Path) -> sitk.Image:
        return read_npz(path)


class NiftiReader(FileReader):
    format = "nifti"
    suffixes = NIFTI_SUFFIXES

    def read(self, path: Path) -> sitk.Image:
        return read_hu_image(path)


READERS: dict[str, FileReader] = {r.format: r for r in (NpzReader(), NiftiReader())}


def reader(fmt: str) -> FileReader:
    """The reader of a single-file format; ValueError naming the formats for any other."""
    try:
        return READERS[fmt]
    except KeyError:
        raise ValueError(f"unknown single-file format {fmt!r} ({', '.join(READERS)}; or dicom)") from None
