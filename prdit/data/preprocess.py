"""The library of `prdit preprocess` (the stage: prdit.stages.preprocess): HU volume -> windowed, isotropic, centred cube in [-1, 1] at every working size.

Default mode, per case: clip HU to the window; crop the input to the target field of view (plus a
margin); Gaussian anti-alias smoothing along each axis that is downsampled (sigma = (t - s) / 2 mm for
input spacing s and output spacing t, scikit-image's rule); one linear resample onto an axis-aligned
LPS cube of fov_mm centred on the volume's centre, padded with air; scale to [-1, 1]. With
preprocess.highres_size set, the cube is made at highres_size and the base size is its 2x average
pool, the same pooling stage 3 uses to bridge the two sizes.

Reference mode (`preprocess.mode: reference`, set by `protocol: paper`) is the paper code's recipe
(prdit.data.paper_recipe): LIDC-IDRI-like inputs (DICOM/NIfTI) by cubic-spline zoom to 1 mm, integer
centre crop to 256^3, HU floor -1000 and the cube's 0.999 quantile, per-volume min-max; RAD-ChestCT
(.npz) cropped to 256^3 at native spacing, clipped to [-1000, 1000] and at the 0.995 quantile, min-max.
Smaller sizes are 2^k average pools of the 256^3 cube, mapped onto preprocess.reference_range. Cases the
reference skips (under 256 mm / voxels on an axis) are rejected with that reason in qc.csv.

Outputs in data/processed/<dataset>/<size>/: <case>.nii.gz (values in [-1, 1] read as float by any reader,
stored as int16 with scl_slope 1/1000; true spacing and orientation)
and <case>.npy (float16, the training cache); data/processed/<dataset>/qc.csv and qc.png.
Each case is computed once per (interim volume content, preprocess params) and kept in the per-case
cache (prdit.data.cache); the output folder is assembled from it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from prdit.data import paper_recipe
from prdit.data.cache import CaseCache, CaseJob, entry_key
from prdit.data.dicom import AIR_HU
from prdit.data.inputs import check_geometry
from prdit.data.paper_recipe import avg_pool2  # its one home; tests and benchmarks import it here
from prdit.data.qc import percentiles
from prdit.errors import PrditError
from prdit.hu import to_unit
from prdit.io import atomic_path

log = logging.getLogger(__name__)

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
UNIT_SCALE = 1000.0  # processed NIfTI: int16 = round(value * 1000), scl_slope = 1/1000
QC_COLUMNS = [
    "case",
    "patient_id",
    "status",
    "reason",
    "mode",
    "in_spacing",
    "in_shape_zyx",
    "sizes",
    "out_spacing",
    "outside_fraction",
    "v_p1",
    "v_p50",
    "v_p99",
    "seconds",
]


class CubeError(PrditError, ValueError):
    """A case whose cube would be wrong training data (outside the volume, constant): the reason says why."""


# --------------------------------------------------------------------------------------------
# The core resampling (also what benchmarks/preprocess.py measures)
# --------------------------------------------------------------------------------------------


def cube_grid(image: sitk.Image, size: int, spacing: float) -> tuple[list[float], list[float]]:
    """Origin and spacing of an axis-aligned size^3 grid centred on the image's centre."""
    centre = image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()])
    return [c - (size - 1) / 2 * spacing for c in centre], [spacing] * 3


def resample_cube(image: sitk.Image, size: int, spacing: float, window: tuple[float, float]) -> np.ndarray:
    """Window-clipped, anti-aliased linear resample of `image` onto a centred size^3 cube (HU, float32)."""
    lo, hi = window
    air = float(np.clip(AIR_HU, lo, hi))
    origin, out_spacing = cube_grid(image, size, spacing)
    in_spacing = np.asarray(image.GetSpacing())
    sigma = np.maximum(0.0, (spacing - in_spacing) / 2.0) / in_spacing  # input voxels, per axis (x, y, z)
    roi = _crop_to(image, origin, size, spacing, margin_vox=np.ceil(3 * sigma) + 2)
    if roi is None:
        return np.full((size,) * 3, air, np.float32)
    arr = sitk.GetArrayFromImage(roi).astype(np.float32, copy=False)
    np.clip(arr, lo, hi, out=arr)
    for axis in np.flatnonzero(sigma > 0.05):  # separable smoothing only along downsampled axes
        arr = ndimage.gaussian_filter1d(
            arr, float(sigma[axis]), axis=2 - int(axis), mode="nearest", truncate=3.0
        )
    smoothed = sitk.GetImageFromArray(arr)
    smoothed.CopyInformation(roi)
    del arr
    out = sitk.Resample(
        smoothed,
        [size] * 3,
        sitk.Transform(),
        sitk.sitkLinear,
        origin,
        out_spacing,
        IDENTITY,
        air,
        sitk.sitkFloat32,
    )
    return sitk.GetArrayFromImage(out)


def _crop_to(
    image: sitk.Image, origin, size: int, spacing: float, margin_vox: np.ndarray
) -> sitk.Image | None:
    """The sub-image covering the target cube plus a margin (None if they do not overlap)."""
    ext = (size - 1) * spacing
    corners = [
        [origin[0] + i * ext, origin[1] + j * ext, origin[2] + k * ext]
        for i in (0, 1)
        for j in (0, 1)
        for k in (0, 1)
    ]
    idx = np.array([image.TransformPhysicalPointToContinuousIndex(c) for c in corners])
    lo = np.maximum(np.floor(idx.min(0) - margin_vox), 0).astype(int)
    hi = np.minimum(np.ceil(idx.max(0) + margin_vox) + 1, image.GetSize()).astype(int)
    if np.any(hi <= lo):
        return None
    return sitk.RegionOfInterest(image, [int(v) for v in hi - lo], [int(v) for v in lo])


def cubes_default(
    image: sitk.Image, sizes: list[int], fov_mm: float, window: tuple[float, float]
) -> dict[int, tuple[np.ndarray, float]]:
    """{size: ([-1, 1] cube, spacing mm)}: the largest size resampled, the smaller ones 2x pools of it."""
    sizes = sorted(sizes, reverse=True)
    top = sizes[0]
    cube = to_unit(resample_cube(image, top, fov_mm / top, window), window, inplace=True)
    out = {top: (cube, fov_mm / top)}
    for s in sizes[1:]:
        if 2 * s == top:
            out[s] = (avg_pool2(cube), fov_mm / s)
        else:
            out[s] = (to_unit(resample_cube(image, s, fov_mm / s, window), window, inplace=True), fov_mm / s)
    return out


def cubes_reference(
    image: sitk.Image, sizes: list[int], recipe: str, out_range: tuple[float, float] = (-1.0, 1.0)
) -> dict[int, tuple[np.ndarray, float, list[float]]]:
    """{size: (cube in out_range, spacing mm, origin)} by the paper code's recipe of the dataset.

    `recipe` is paper_recipe.LIDC or RAD_CHESTCT (paper_recipe.recipe_of: chosen by the dataset, not the
    file format); a case the reference would skip raises paper_recipe.ReferenceSkip with the reason.
    """
    rad = recipe == paper_recipe.RAD_CHESTCT
    hu = sitk.GetArrayFromImage(image)
    in_spacing = tuple(float(s) for s in reversed(image.GetSpacing()))  # z, y, x
    if rad:  # RAD-ChestCT: crop at the native spacing, no resampling
        unit = paper_recipe.rad_unit_cube(hu)
        step = np.ones(3)  # input voxels per cube voxel, per axis (z, y, x)
        nominal = in_spacing[-1]
    else:
        zoomed = paper_recipe.zoom_shape(hu.shape, in_spacing)
        unit = paper_recipe.lidc_unit_cube(hu, in_spacing)
        step = np.array([(n - 1) / max(m - 1, 1) for n, m in zip(hu.shape, zoomed)])
        nominal = paper_recipe.LIDC_SPACING_MM
    shape = hu.shape if rad else zoomed
    del hu
    starts = np.array([(n - paper_recipe.CROP) // 2 for n in shape], float)
    out = {}
    for size, cube in paper_recipe.pooled(unit, sizes, out_range).items():
        factor = paper_recipe.CROP // size
        first = (starts + (factor - 1) / 2) * step  # the first output voxel's centre, input index (z, y, x)
        origin = image.TransformContinuousIndexToPhysicalPoint([float(v) for v in first[::-1]])
        out[size] = (cube, nominal * factor, list(origin))
    return out


# --------------------------------------------------------------------------------------------
# One case (the stage itself: prdit.stages.preprocess)
# --------------------------------------------------------------------------------------------


def preprocess_case(job: PreprocessJob) -> dict:
    """One interim HU NIfTI -> NIfTI + float16 .npy per size; returns its QC row. `job.recipe` (mode
    reference): the dataset's paper recipe, None = by format (`recipe: auto`); `job.reference_range`
    None = (-1, 1)."""
    case, path, sizes, mode = job.case, job.path, job.sizes, job.mode
    reference_range = (-1.0, 1.0) if job.reference_range is None else job.reference_range
    image = sitk.ReadImage(path)
    check_geometry(Path(path), image)  # a NaN origin would put the cube outside the volume: all air
    if not np.allclose(image.GetDirection(), IDENTITY, atol=1e-6):
        image = sitk.DICOMOrient(image, "LPS")
    if mode == "reference":
        recipe = job.recipe or paper_recipe.AUTO_RECIPE[job.fmt]
        cubes = cubes_reference(image, sizes, recipe, tuple(reference_range))
    else:
        cubes = {
            s: (cube, sp, _cube_origin(image, s, sp))
            for s, (cube, sp) in cubes_default(image, sizes, job.fov_mm, job.window).items()
        }
    top = max(cubes)
    outside = 0.0 if mode == "reference" else _outside_fraction(image, top, cubes[top][1])
    check_cubes(path, cubes, outside)
    for size, (cube, spacing, origin) in cubes.items():
        folder = Path(job.out_root) / str(size)
        write_unit_nifti(folder / f"{case}.nii.gz", cube, spacing, origin)
        with atomic_path(folder / f"{case}.npy") as tmp, open(tmp, "wb") as fh:
            np.save(fh, cube.astype(np.float16))
    cube, spacing, _ = cubes[top]
    return {
        "case": case,
        "patient_id": job.patient_id,
        "mode": mode,
        "in_spacing": " ".join(f"{s:.4g}" for s in image.GetSpacing()),
        "in_shape_zyx": "x".join(map(str, reversed(image.GetSize()))),
        "sizes": " ".join(map(str, sorted(cubes))),
        "out_spacing": " ".join(f"{cubes[s][1]:.4g}" for s in sorted(cubes)),
        "outside_fraction": float(f"{outside:.6g}"),  # 0.99997 stays < 1
        **percentiles(cube, prefix="v"),
    }


def check_cubes(path: str, cubes: dict[int, tuple], outside: float) -> None:
    """CubeError naming the input when the cube lies outside the volume or a cube is constant or not finite.

    Written so that NaN fails every test: no such cube is ever written as a training case."""
    if not outside < 1.0:
        raise CubeError(f"{path}: the cube lies entirely outside the volume (outside fraction {outside:g})")
    for size, (cube, *_) in sorted(cubes.items()):
        lo, hi = float(np.min(cube)), float(np.max(cube))
        if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
            raise CubeError(f"{path}: the {size}^3 cube is constant or not finite (min {lo:g}, max {hi:g})")


def write_unit_nifti(path: Path, cube: np.ndarray, spacing: float, origin) -> None:
    """Write a [-1, 1] LPS-aligned cube as NIfTI: int16 with scl_slope 1/1000, so every reader gets floats.

    Quantisation is 0.001 (1 HU in the default window), like the float16 cache; storing int16 instead
    of float32 makes the file about half the size and twice as fast to compress.
    """
    ox, oy, oz = (float(v) for v in origin)
    affine = np.array(
        [[-spacing, 0, 0, -ox], [0, -spacing, 0, -oy], [0, 0, spacing, oz], [0, 0, 0, 1]]
    )  # LPS -> RAS
    data = np.rint(cube.transpose(2, 1, 0) * UNIT_SCALE).astype(np.int16)
    img = nib.Nifti1Image(data, affine)
    img.header.set_slope_inter(1.0 / UNIT_SCALE, 0.0)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(img, tmp)


def _cube_origin(image: sitk.Image, size: int, spacing: float) -> list[float]:
    return cube_grid(image, size, spacing)[0]


def _outside_fraction(image: sitk.Image, size: int, spacing: float) -> float:
    """Fraction of the output cube's volume outside the input volume (padded with air), voxel edge to edge."""
    origin, _ = cube_grid(image, size, spacing)
    frac = 1.0
    for axis in range(3):
        lo = image.TransformContinuousIndexToPhysicalPoint([-0.5] * 3)[axis]
        hi = image.TransformContinuousIndexToPhysicalPoint([s - 0.5 for s in image.GetSize()])[axis]
        lo, hi = min(lo, hi), max(lo, hi)
        a, b = origin[axis] - spacing / 2, origin[axis] + (size - 0.5) * spacing
        frac *= max(0.0, min(b, hi) - max(a, lo)) / (b - a)
    return 1.0 - frac


@dataclass(frozen=True)
class PreprocessJob(CaseJob):
    """One interim volume to preprocess (preprocess_case reads it). `reference_range` is set in reference
    mode only and `recipe` only where it is not the format's old choice, and each is in the key only then
    (OPTIONAL), so every entry made before they existed stays valid."""

    path: str
    out_root: str
    sizes: list[int]
    mode: str
    fmt: str
    fov_mm: float
    window: tuple[float, float]
    reference_range: tuple[float, float] | None = None
    recipe: str | None = None

    KEY = ("case", "patient_id", "sizes", "mode", "fmt", "fov_mm", "window", "reference_range", "recipe")
    INPUTS = ("path",)
    OUTPUTS = ("out_root",)
    OPTIONAL = ("reference_range", "recipe")

    def run(self) -> dict:
        return preprocess_case(self)


def case_key(job: CaseJob, used: dict[str, Any], cache: CaseCache) -> str:
    """What decides one case's outputs: preprocess params (`used`), the job's key fields, and its interim
    volume's content."""
    content = cache.content_hashes(job.case, job.input_files())[0]
    return entry_key("preprocess", used, job.key_fields(), input=content)
