"""Other methods' generated volumes (params.yaml `baselines:`) as HU cubes in our array convention.

A baseline folder holds one volume per file: NIfTI (.nii, .nii.gz) or NumPy (.npy, or .npz holding exactly
one array); files with other suffixes are ignored (and counted in the evaluation's notes). Each volume is
brought to the convention of `prdit sample`'s output as `prdit.io.read_nifti` reads it: a float32
[z, y, x] array whose axes run towards patient Left, Posterior, Superior (LPS, an identity direction), in
HU. Then the evaluation treats it exactly as one of our samples (`prdit.hu.to_unit`).

- NIfTI files carry their geometry: they are reoriented with SimpleITK.DICOMOrient to LPS (a permutation
  and flips of the voxel grid, no resampling; a residual oblique rotation is ignored). `axes` does not
  apply to them.
- .npy/.npz arrays have no geometry: `axes` says what their axes are (a permutation of "xyz"), and they
  are transposed to zyx.
- `flip` (axes x, y, z) then reverses those axes, for either kind (e.g. a NIfTI written with a wrong
  header, or an array stored feet-first).
- `values` "hu": used as they are; (low, high): mapped linearly onto preprocess.window (low -> window
  low, high -> window high).

Nothing is resized, rescaled, squeezed or clipped to make a file fit: a volume that is not 3-D (a
singleton channel axis included), not size^3, not finite, outside its declared value range (beyond float
rounding), or declared HU but lying within [-1, 1] (normalised data) is a BaselineError naming the file.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from prdit import hu
from prdit.errors import PrditError
from prdit.evaluate.volumes import GeneratedSet

SUFFIXES = (".nii.gz", ".nii", ".npy", ".npz")
ORIENTATION = "LPS"  # an identity direction in SimpleITK: what prdit sample writes (io.write_nifti)
ROUNDING_ULPS = 4  # a few float operations of a method's own normalisation, each off by <= 1 rounding


class BaselineError(PrditError, ValueError):
    """A baseline folder or file that does not match its declaration in params.yaml (one line, names it)."""


def _suffix(path: Path) -> str | None:
    return next((s for s in SUFFIXES if path.name.endswith(s)), None)


def volume_id(path: Path) -> str:
    """The volume's id in the metrics: its file name without the volume suffix."""
    suffix = _suffix(path)
    return path.name[: -len(suffix)] if suffix else path.name


def baseline_paths(folder: Path, key: str) -> tuple[list[Path], list[Path]]:
    """(volume files in numeric-then-name order, ignored other files) of a baseline folder.

    `key` (baselines.<name>.path) is named in the error for a missing or empty folder.
    """
    if not folder.is_dir():
        raise BaselineError(f"{key}: {folder} is not a folder (give the folder of the method's volumes)")
    files = [f for f in folder.iterdir() if f.is_file()]
    vols = [f for f in files if _suffix(f)]
    if not vols:
        raise BaselineError(f"{key}: {folder} holds no volumes ({', '.join(SUFFIXES)})")

    def order(p: Path) -> tuple[int, int, str]:
        m = re.fullmatch(r"\d+", volume_id(p))
        return (0, int(volume_id(p)), p.name) if m else (1, 0, p.name)

    return sorted(vols, key=order), sorted(set(files) - set(vols))


def read_array(path: Path, axes: str) -> np.ndarray:
    """The raw values of one file as a [z, y, x] array (NIfTI reoriented to LPS, arrays transposed from `axes`)."""
    suffix = _suffix(path)
    if suffix in (".nii", ".nii.gz"):
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise BaselineError(f"{path}: not a readable NIfTI file ({_first_line(exc)})") from None
        shape = image.GetSize()[::-1] + (
            (image.GetNumberOfComponentsPerPixel(),) if image.GetNumberOfComponentsPerPixel() > 1 else ()
        )
        if len(shape) != 3:
            raise BaselineError(f"{path}: {_not_3d(shape)}")
        return sitk.GetArrayFromImage(sitk.DICOMOrient(image, ORIENTATION))
    try:
        loaded = np.load(path, allow_pickle=False)
        if suffix == ".npz":
            with loaded:
                if len(loaded.files) != 1:
                    raise BaselineError(
                        f"{path}: holds {len(loaded.files)} arrays {loaded.files}; a baseline .npz holds one"
                    )
                arr = loaded[loaded.files[0]]
        else:
            arr = loaded
    except BaselineError:
        raise
    except (OSError, ValueError) as exc:
        raise BaselineError(f"{path}: not a readable {suffix} file ({_first_line(exc)})") from None
    if arr.ndim != 3:
        raise BaselineError(f"{path}: {_not_3d(arr.shape)}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise BaselineError(f"{path}: voxels of type {arr.dtype}; numbers expected")
    return np.transpose(arr, [axes.index(a) for a in "zyx"])


def _not_3d(shape: Sequence[int]) -> str:
    return (
        f"expected a 3-D volume, got shape {tuple(shape)} ({len(shape)}-D); nothing is squeezed: "
        "save each volume without batch or channel axes"
    )


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[-1].strip()


def rounding_tolerance(arr: np.ndarray, bound: float) -> float:
    """How far float rounding can carry a value past `bound`: a few units of the array's roundoff there.

    Integer arrays are exact (0). A method that maps its output into its range in float (scale, shift,
    clip at its own precision) can overshoot by one rounding per operation.
    """
    if not np.issubdtype(arr.dtype, np.floating):
        return 0.0
    return ROUNDING_ULPS * float(np.finfo(arr.dtype).eps) * max(abs(bound), 1.0)


def to_hu(
    arr: np.ndarray, path: Path, values: str | tuple[float, float], window: Sequence[float]
) -> np.ndarray:
    """Check `arr` against its declared `values` and map it to HU (float32): "hu" as is, (lo, hi) onto the window."""
    lo_v, hi_v = float(np.min(arr)), float(np.max(arr))
    if not (np.isfinite(lo_v) and np.isfinite(hi_v)):
        raise BaselineError(f"{path}: contains NaN or inf voxels")
    if values == "hu":
        tol = rounding_tolerance(arr, 1.0)
        if lo_v >= -1 - tol and hi_v <= 1 + tol:
            raise BaselineError(
                f"{path}: declared HU but every voxel lies in [{lo_v:.4g}, {hi_v:.4g}] within [-1, 1]: "
                "normalised data; declare its range (values: [low, high])"
            )
        return np.asarray(arr, dtype=np.float32)
    low, high = float(values[0]), float(values[1])
    if lo_v < low - rounding_tolerance(arr, low) or hi_v > high + rounding_tolerance(arr, high):
        raise BaselineError(
            f"{path}: values span [{lo_v:.6g}, {hi_v:.6g}], outside the declared range [{low:g}, {high:g}] "
            "(baselines.<name>.values); nothing is rescaled"
        )
    w_lo, w_hi = float(window[0]), float(window[1])
    x = np.asarray(arr, dtype=np.float64)
    return (w_lo + (x - low) / (high - low) * (w_hi - w_lo)).astype(np.float32)


def read_hu(
    path: Path,
    size: int,
    values: str | tuple[float, float],
    window: Sequence[float],
    axes: str = "zyx",
    flip: Sequence[str] = (),
) -> np.ndarray:
    """One baseline file as a checked float32 [z, y, x] HU cube, in the convention of our samples."""
    arr = read_array(path, axes)
    for a in flip:
        arr = np.flip(arr, "zyx".index(a))
    if arr.shape != (size, size, size):
        raise BaselineError(
            f"{path}: expected a {size}^3 volume, got shape {arr.shape} (as zyx); nothing is resized"
        )
    return np.ascontiguousarray(to_hu(arr, path, values, window))


def read_unit(
    path: Path,
    size: int,
    values: str | tuple[float, float],
    window: Sequence[float],
    axes: str = "zyx",
    flip: Sequence[str] = (),
) -> np.ndarray:
    """One baseline file as the evaluation reads a sample: [-1, 1] float32 [z, y, x] under the window."""
    return hu.to_unit(read_hu(path, size, values, window, axes, flip), window)


def baseline_set(
    name: str,
    folder: str | Path,
    size: int,
    values: str | tuple[float, float],
    window: Sequence[float],
    axes: str = "zyx",
    flip: Sequence[str] = (),
    num_samples: int | None = None,
) -> GeneratedSet:
    """The generated set of baseline `name` for the evaluation: its files (the first `num_samples`, as for
    our samples), their ids, the reader, and what is recorded in the metrics."""
    folder = Path(folder)
    vols, ignored = baseline_paths(folder, f"baselines.{name}.path")
    vols = vols[:num_samples]
    source = {
        "kind": "baseline",
        "name": name,
        "path": str(folder),
        "values": values if values == "hu" else [float(v) for v in values],
        "axes": axes,
        "flip": list(flip),
    }
    return GeneratedSet(
        paths=vols,
        ids=[volume_id(p) for p in vols],
        read=partial(read_unit, size=size, values=values, window=tuple(window), axes=axes, flip=tuple(flip)),
        source=source,
        ignored=[str(p) for p in ignored],
    )
