"""Synthetic chest CT anatomy, written as real DICOM series: the default dataset, deterministic by seed.

Each patient gets its own anatomy (body outline and fat, lungs with vessel and airway trees,
spine, ribs, sternum, heart, aorta, nodules), field of view, slice thickness, rescale and noise.
One axial CT series plus one localizer per patient, in the usual
<patient>/<study>/<series>/<instance>.dcm layout, plus a manifest.csv with checksums. The DICOM
encoding itself lives in prdit.data.dicom_writer.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from prdit.data.dicom_writer import SeriesHeader, uid, write_ct_series
from prdit.io import atomic_dir, atomic_path, sha256_file
from prdit.progress import progress

if TYPE_CHECKING:
    from prdit.config import Phantom

log = logging.getLogger(__name__)

AIR = -1000.0


# --------------------------------------------------------------------------------------------
# Anatomy
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grid:
    """Voxel centres of one patient's series in a body frame: x left+, y posterior+, s caudal+ (mm)."""

    nx: int
    ny: int
    nz: int
    ps: float  # in-plane pixel spacing
    dz: float  # slice spacing

    @property
    def x(self) -> np.ndarray:
        return ((np.arange(self.nx) - (self.nx - 1) / 2) * self.ps).astype(np.float32)[None, None, :]

    @property
    def y(self) -> np.ndarray:
        return ((np.arange(self.ny) - (self.ny - 1) / 2) * self.ps).astype(np.float32)[None, :, None]

    @property
    def s(self) -> np.ndarray:
        return (np.arange(self.nz) * self.dz).astype(np.float32)[:, None, None]


def _soft(signed_mm: np.ndarray, width: float) -> np.ndarray:
    """Partial-volume fraction from a signed distance (positive inside) and an edge width."""
    return np.clip(signed_mm / width + 0.5, 0.0, 1.0)


def _paint(vol: np.ndarray, frac: np.ndarray, hu: float | np.ndarray, where: tuple = ()) -> None:
    """Blend tissue `hu` into vol by the fraction (in place); `where` restricts to a sub-block."""
    target = vol[where] if where else vol
    target += frac * (hu - target)


def _segment_fraction(g: Grid, p0: np.ndarray, p1: np.ndarray, r: float) -> tuple[tuple, np.ndarray] | None:
    """Fraction of a capsule (segment p0-p1, radius r; points as (x, y, s) mm) inside its bounding box."""
    lo = np.minimum(p0, p1) - r - g.ps
    hi = np.maximum(p0, p1) + r + g.ps
    ix = np.clip(
        [np.floor(lo[0] / g.ps + (g.nx - 1) / 2), np.ceil(hi[0] / g.ps + (g.nx - 1) / 2) + 1], 0, g.nx
    ).astype(int)
    iy = np.clip(
        [np.floor(lo[1] / g.ps + (g.ny - 1) / 2), np.ceil(hi[1] / g.ps + (g.ny - 1) / 2) + 1], 0, g.ny
    ).astype(int)
    iz = np.clip([np.floor(lo[2] / g.dz), np.ceil(hi[2] / g.dz) + 1], 0, g.nz).astype(int)
    if ix[0] >= ix[1] or iy[0] >= iy[1] or iz[0] >= iz[1]:
        return None
    box = (slice(*iz), slice(*iy), slice(*ix))
    px = g.x[..., ix[0] : ix[1]] - p0[0]
    py = g.y[:, iy[0] : iy[1]] - p0[1]
    pz = g.s[iz[0] : iz[1]] - p0[2]
    v = p1 - p0
    t = np.clip((px * v[0] + py * v[1] + pz * v[2]) / max(float(v @ v), 1e-9), 0.0, 1.0)
    dist = np.sqrt((px - t * v[0]) ** 2 + (py - t * v[1]) ** 2 + (pz - t * v[2]) ** 2)
    return box, _soft(r - dist, min(g.ps, g.dz))


def _tree(
    rng: np.random.Generator,
    root: np.ndarray,
    direction: np.ndarray,
    length: float,
    radius: float,
    generations: int,
    spread: float,
) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Segments (p0, p1, radius) of a random bifurcating tree."""
    segments = []
    stack = [(root, direction / np.linalg.norm(direction), length, radius, generations)]
    while stack:
        p0, d, ln, r, gen = stack.pop()
        p1 = p0 + d * ln
        segments.append((p0, p1, r))
        if gen <= 1:
            continue
        normal = np.cross(d, rng.normal(size=3))
        normal /= np.linalg.norm(normal) + 1e-9
        for sign in (-1.0, 1.0):
            ang = sign * spread * rng.uniform(0.6, 1.2)
            child = d * math.cos(ang) + normal * math.sin(ang)
            stack.append((p1, child / np.linalg.norm(child), ln * rng.uniform(0.65, 0.85), r * 0.72, gen - 1))
    return segments


@dataclass(frozen=True)
class _Cavity:
    """One patient's thoracic cavity (mm): centre (cx, cy), semi-axes (ac, bc), lung apex and cranio-caudal
    length (s_apex, length); `edge` is the partial-volume width."""

    cx: float
    cy: float
    ac: float
    bc: float
    s_apex: float
    length: float
    edge: float


@dataclass(frozen=True)
class _Heart:
    """Centre (hx, hy, hs) and semi-axes hr (x, y, s) of the heart (mm)."""

    hx: float
    hy: float
    hs: float
    hr: np.ndarray


def _ellipse(g: Grid, sa: float, sb: float, ox: float, oy: float) -> np.ndarray:
    """Signed in-plane distance (mm, positive inside) to the ellipse with semi-axes sa, sb centred at ox, oy."""
    rho = np.sqrt(((g.x - ox) / sa) ** 2 + ((g.y - oy) / sb) ** 2)
    return (1.0 - rho) * min(sa, sb)


def _tube(vol: np.ndarray, g: Grid, p0, p1, r: float, hu: float, mask: np.ndarray | None = None) -> None:
    """Paint the capsule p0-p1 of radius r (mm) with `hu`, restricted to `mask` where given."""
    hit = _segment_fraction(g, np.asarray(p0, float), np.asarray(p1, float), r)
    if hit is not None:
        box, frac = hit
        if mask is not None:
            frac = frac * mask[box]
        _paint(vol, frac, hu, box)


def chest_anatomy(rng: np.random.Generator, g: Grid) -> np.ndarray:
    """HU volume [slice from the top, row (anterior->posterior), column (right->left)] of one chest."""
    vol = np.full((g.nz, g.ny, g.nx), AIR, np.float32)
    c = _body_wall(rng, g, vol)
    lungs, lung_hu = _lungs(rng, g, c)
    heart = _heart(rng, g, vol, c, lungs, lung_hu)
    s_carina = _airways_and_vessels(rng, g, vol, c, lungs)
    yv_r = rng.uniform(15, 19)  # vertebral body radius; the descending aorta runs beside it
    yv = c.cy + c.bc - yv_r - 6.0
    _aorta(rng, g, vol, c, heart, s_carina, (yv_r, yv))
    level = _spine(rng, g, vol, c, yv_r, yv)
    _ribs(rng, g, vol, c, level)
    _sternum_and_liver(g, vol, c, lungs)
    _nodules(rng, g, vol, lungs)
    return _scanner(rng, vol)


def _body_wall(rng: np.random.Generator, g: Grid, vol: np.ndarray) -> _Cavity:
    """Body outline (elliptic cylinder), subcutaneous fat, muscle wall; the cavity and the lungs' extent."""
    edge = min(g.ps, g.dz)
    a, b = rng.uniform(125, 160), rng.uniform(90, 115)
    cx, cy = rng.normal(0, 4), rng.uniform(-8, 8)
    fat = rng.uniform(6, 22)
    wall = rng.uniform(10, 16)
    _paint(vol, _soft(_ellipse(g, a, b, cx, cy), edge), -100.0)  # fat
    _paint(vol, _soft(_ellipse(g, a - fat, b - fat, cx, cy), edge), 45.0)  # muscle
    ac, bc = a - fat - wall, b - fat - wall  # cavity
    _paint(vol, _soft(_ellipse(g, ac, bc, cx, cy), edge), 35.0)  # mediastinum / abdomen soft tissue
    s_apex = rng.uniform(10, 35)
    length = rng.uniform(190, 240)
    return _Cavity(cx, cy, ac, bc, s_apex, length, edge)


def _lungs(rng: np.random.Generator, g: Grid, c: _Cavity) -> tuple[np.ndarray, float]:
    """Lung fraction (ellipses in-plane, an apical dome, a diaphragm dome, split by the mediastinum), lung HU."""
    x, y, s = g.x, g.y, g.s
    lung_hu = rng.uniform(-880, -820)
    lungs = np.zeros((g.nz, g.ny, g.nx), np.float32)
    for side in (-1.0, 1.0):  # patient right (x < 0), left
        lx, ly = c.cx + side * 0.5 * c.ac, c.cy + 0.04 * c.bc
        rx, ry = 0.47 * c.ac, 0.85 * c.bc
        u = np.clip((s - c.s_apex) / c.length, 0.0, 1.0)
        w = np.sqrt(np.clip(u / 0.3, 0.02, 1.0))
        rho = np.sqrt(((x - lx) / rx) ** 2 + ((y - ly) / ry) ** 2) / w
        base = c.s_apex + c.length - (10.0 if side < 0 else 0.0) - 35.0 * (1.0 - np.clip(rho, 0, 1) ** 2)
        inside = np.minimum((1.0 - rho) * min(rx, ry) * w, np.minimum(base - s, s - c.s_apex))
        medial = side * (x - c.cx) - rng.uniform(8, 14)
        lungs = np.maximum(lungs, _soft(np.minimum(inside, medial), c.edge))
    return lungs, lung_hu


def _heart(
    rng: np.random.Generator, g: Grid, vol: np.ndarray, c: _Cavity, lungs: np.ndarray, lung_hu: float
) -> _Heart:
    """Heart with pericardial fat, carved out of the left-anterior lung (in place); paints the lungs too."""
    x, y, s = g.x, g.y, g.s
    hx, hy = c.cx + c.ac * rng.uniform(0.08, 0.2), c.cy - c.bc * rng.uniform(0.15, 0.3)
    hs = c.s_apex + c.length * rng.uniform(0.62, 0.72)
    hr = np.array([rng.uniform(50, 65), rng.uniform(40, 52), rng.uniform(45, 60)])
    hrho = np.sqrt(((x - hx) / hr[0]) ** 2 + ((y - hy) / hr[1]) ** 2 + ((s - hs) / hr[2]) ** 2)
    above_diaphragm = _soft(c.s_apex + c.length - 30.0 - s, c.edge)
    lungs *= 1.0 - _soft((1.0 - hrho) * hr.min() + 5.0, c.edge) * above_diaphragm
    gradient = 40.0 * np.clip((y - c.cy) / c.bc, -1, 1)  # dependent (posterior) lung is denser
    _paint(vol, lungs, lung_hu + gradient)
    _paint(vol, _soft((1.0 - hrho) * hr.min() + 3.0, c.edge) * above_diaphragm, -90.0)
    _paint(vol, _soft((1.0 - hrho) * hr.min(), c.edge) * above_diaphragm, 40.0)
    return _Heart(hx, hy, hs, hr)


def _airways_and_vessels(
    rng: np.random.Generator, g: Grid, vol: np.ndarray, c: _Cavity, lungs: np.ndarray
) -> float:
    """Pulmonary vessel trees from each hilum, then the airway tree (wall, then lumen); returns the carina's s."""
    cx, cy = c.cx, c.cy
    s_hilum = c.s_apex + 0.42 * c.length
    s_carina = c.s_apex + rng.uniform(0.28, 0.36) * c.length
    ty = cy - 0.05 * c.bc
    _tube(vol, g, (cx, ty, -20.0), (cx, ty, s_carina), rng.uniform(7.5, 10.0), 35.0)
    airway = [((cx, ty, -20.0), (cx, ty, s_carina), 8.5)]
    for side in (-1.0, 1.0):
        hilum = np.array([cx + side * 0.3 * c.ac, cy, s_hilum])
        for d in (
            [side * 0.3, -0.1, -1.0],
            [side * 1.0, -0.5, -0.3],
            [side * 1.0, 0.4, 0.1],
            [side * 0.6, -0.4, 0.8],
            [side * 0.5, 0.6, 0.9],
            [side * 0.2, 0.8, 0.3],
        ):
            for p0, p1, r in _tree(rng, hilum, np.asarray(d) + rng.normal(0, 0.15, 3), 36.0, 3.6, 5, 0.5):
                _tube(vol, g, p0, p1, r, 40.0, lungs)
        bronchus = np.array([cx + side * 0.25 * c.ac, cy - 0.12 * c.bc, s_hilum - 8.0])
        airway.append(((cx, ty, s_carina), tuple(bronchus), 6.0))
        for d in ([side * 0.4, -0.2, -1.0], [side * 1.0, 0.0, 0.3], [side * 0.3, 0.4, 1.0]):
            airway += _tree(rng, bronchus, np.asarray(d) + rng.normal(0, 0.15, 3), 30.0, 3.6, 3, 0.5)
    for p0, p1, r in airway:
        _tube(vol, g, p0, p1, r + 1.5, 30.0, lungs)
    for p0, p1, r in airway:
        _tube(vol, g, p0, p1, r, AIR)
    return s_carina


def _aorta(
    rng: np.random.Generator,
    g: Grid,
    vol: np.ndarray,
    c: _Cavity,
    heart: _Heart,
    s_carina: float,
    vertebra: tuple[float, float],
) -> None:
    """Aorta: ascending from the heart, arch, descending left of the spine (vertebra: radius, centre y)."""
    yv_r, yv = vertebra
    s_arch = s_carina - rng.uniform(15, 25)
    asc = (heart.hx - 25.0, heart.hy - 5.0, heart.hs - heart.hr[2] * 0.6)
    top = (c.cx - 5.0, c.cy - 0.2 * c.bc, s_arch)
    desc0 = (c.cx + yv_r + 12.0, yv - yv_r - 5.0, s_arch + 10.0)
    r_ao = rng.uniform(11, 15)
    for p0, p1 in ((asc, top), (top, desc0), (desc0, (desc0[0], desc0[1], g.nz * g.dz + 20.0))):
        _tube(vol, g, p0, p1, r_ao, 45.0)


def _spine(rng: np.random.Generator, g: Grid, vol: np.ndarray, c: _Cavity, yv_r: float, yv: float) -> float:
    """Spine: vertebral bodies with cortex and discs, canal and spinous processes; returns the level height."""
    x, y, s, cx, edge = g.x, g.y, g.s, c.cx, c.edge
    level = rng.uniform(22, 28)
    phase = rng.uniform(0, level)
    in_disc = np.mod(s - phase, level) < 5.0
    vr = np.sqrt((x - cx) ** 2 + (y - yv) ** 2)
    _paint(vol, _soft(yv_r - vr, edge) * np.ones_like(s), np.where(in_disc, 90.0, 600.0))
    _paint(vol, _soft(yv_r - 2.0 - vr, edge) * ~in_disc, 220.0)
    cyc = yv + yv_r + 9.0
    canal = np.sqrt((x - cx) ** 2 + (y - cyc) ** 2)
    _paint(vol, _soft(12.0 - canal, edge) * ~in_disc, 450.0)
    _paint(vol, _soft(7.0 - canal, edge) * np.ones_like(s), 15.0)
    spinous = np.minimum(4.0 - np.abs(x - cx), np.minimum(y - cyc - 8.0, cyc + 26.0 - y))
    _paint(vol, _soft(spinous, edge) * ~in_disc, 450.0)
    return level


def _ribs(rng: np.random.Generator, g: Grid, vol: np.ndarray, c: _Cavity, level: float) -> None:
    """Ribs: follow the cavity wall, descending anteriorly; costal cartilage at the front."""
    ex, ey = (g.x - c.cx) / (c.ac + 4.0), (g.y - c.cy) / (c.bc + 4.0)
    rho = np.sqrt(ex**2 + ey**2)[0]
    theta = np.arccos(np.clip(ey[0] / np.maximum(rho, 1e-6), -1, 1))  # 0 posterior, pi anterior
    radial = (rho - 1.0) * 0.5 * (c.ac + c.bc)
    band = (np.abs(radial) < 6.0) & (theta > 0.12)
    th, rad = theta[band], radial[band]
    ribs = np.zeros((g.nz, th.size), np.float32)
    cart = np.zeros_like(ribs)
    drop = rng.uniform(110, 150)
    s_rib0 = c.s_apex + rng.uniform(-5, 10)
    for i in range(12):
        s_i = s_rib0 + i * level + drop * (th / np.pi)
        f = np.minimum(_soft(3.5 - np.abs(rad), c.edge), _soft(6.0 - np.abs(g.s[:, :, 0] - s_i), c.edge))
        bone = th < 0.8 * np.pi
        ribs = np.maximum(ribs, f * bone)
        cart = np.maximum(cart, f * (~bone & (th < 0.92 * np.pi)))
    flat = vol.reshape(g.nz, -1)
    idx = np.flatnonzero(band.ravel())
    flat[:, idx] += ribs * (550.0 - flat[:, idx]) + cart * (120.0 - flat[:, idx])


def _sternum_and_liver(g: Grid, vol: np.ndarray, c: _Cavity, lungs: np.ndarray) -> None:
    """Sternum (anterior midline plate down to the xiphoid) and the liver under the right hemidiaphragm."""
    x, y, s, cx, cy = g.x, g.y, g.s, c.cx, c.cy
    sternum = np.minimum(15.0 - np.abs(x - cx), np.minimum(y - (cy - c.bc - 10.0), (cy - c.bc + 2.0) - y))
    s_range = np.minimum(s - (c.s_apex - 5.0), c.s_apex + 0.7 * c.length - s)
    _paint(vol, _soft(np.minimum(sternum, s_range), c.edge), 400.0)
    liver = np.minimum(-(x - cx) - 5.0, s - (c.s_apex + c.length - 30.0))
    _paint(vol, _soft(liver, c.edge) * _soft(_ellipse(g, c.ac, c.bc, cx, cy), c.edge) * (1.0 - lungs), 60.0)


def _nodules(rng: np.random.Generator, g: Grid, vol: np.ndarray, lungs: np.ndarray) -> None:
    """Nodules: solid or ground-glass spheres centred in the lungs."""
    x, y, s = g.x, g.y, g.s
    centres = np.argwhere(lungs > 0.99)
    for _ in range(int(rng.integers(1, 5)) if centres.size else 0):
        k, j, i = centres[rng.integers(len(centres))]
        c = np.array([x[0, 0, i], y[0, j, 0], s[k, 0, 0]], float)
        hu = rng.uniform(-20, 80) if rng.random() < 0.75 else rng.uniform(-600, -400)
        _tube(vol, g, c, c, rng.uniform(3, 10), hu)


def _scanner(rng: np.random.Generator, vol: np.ndarray) -> np.ndarray:
    """Scanner blur and correlated noise."""
    vol = ndimage.gaussian_filter(vol, sigma=(0.3, 0.6, 0.6), mode="nearest")
    noise = ndimage.gaussian_filter(rng.normal(0, 1, vol.shape).astype(np.float32), sigma=(0, 0.7, 0.7))
    vol += noise * (rng.uniform(10, 25) / max(float(noise.std()), 1e-6))
    return vol


# --------------------------------------------------------------------------------------------
# One patient, the dataset
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PatientSeries:
    """What was written for one patient (for the manifest and the tests)."""

    patient_id: str
    folder: Path
    pixel_spacing: float
    slice_spacing: float
    shape_zyx: tuple[int, int, int]
    origin: tuple[float, float, float]  # IPP of the first (most cranial) slice


def write_patient(
    root: Path,
    index: int,
    seed: int,
    matrix: int,
    fov_mm: Sequence[float],
    slice_mm: Sequence[float],
    z_extent_mm: float,
) -> PatientSeries:
    """Generate and write one phantom patient (axial series + localizer) under root."""
    rng = np.random.default_rng([seed, index])
    patient_id = f"PHANTOM-{index + 1:04d}"
    ps = round(rng.uniform(*fov_mm) / matrix, 4)
    dz = round(rng.uniform(*slice_mm), 2)
    nz = max(int(round(z_extent_mm / dz)), 2)
    grid = Grid(matrix, matrix, nz, ps, dz)
    hu = chest_anatomy(rng, grid)

    table = rng.uniform(-15, 15)
    z_top = round(rng.uniform(-200, -100), 2)
    half = (matrix - 1) / 2 * ps
    ipp = np.stack([np.full(nz, -half), np.full(nz, -half + table), z_top - np.arange(nz) * dz], 1)
    radius = matrix / 2 * ps
    circle = (grid.x[0] ** 2 + grid.y[0] ** 2) > radius**2  # outside the reconstruction circle
    intercept = -1024.0 if rng.random() < 0.7 else 0.0

    study = uid(seed, patient_id, "study")
    series = uid(seed, patient_id, "series")
    folder = root / patient_id / "study-1" / "series-2"
    write_ct_series(
        folder,
        hu,
        ipp,
        (1, 0, 0, 0, 1, 0),
        (ps, ps),
        SeriesHeader(
            patient_id=patient_id,
            study_uid=study,
            series_uid=series,
            slice_thickness=dz,
            intercept=intercept,
            padding_mask=circle[None],
        ),
    )
    _write_localizer(root / patient_id / "study-1" / "series-1", hu, grid, ipp[0], patient_id, study, seed)
    return PatientSeries(patient_id, folder, ps, dz, hu.shape, tuple(ipp[0]))


def _write_localizer(
    folder: Path, hu: np.ndarray, g: Grid, first: np.ndarray, patient_id: str, study: str, seed: int
) -> None:
    """A coronal scout (mean attenuation along y), the kind of series discovery must skip."""
    scout = hu.mean(axis=1)[None]  # [1, slice (head->feet), column]
    write_ct_series(
        folder,
        scout,
        np.array([[first[0], 0.0, first[2]]]),
        (1, 0, 0, 0, 0, -1),
        (g.dz, g.ps),
        SeriesHeader(
            patient_id=patient_id,
            study_uid=study,
            series_uid=uid(seed, patient_id, "scout"),
            slice_thickness=g.ps,
            image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
            series_number=1,
        ),
    )


def write_phantom(cfg: Phantom, out: Path) -> dict[str, int]:
    """Write cfg.patients synthetic DICOM patients (cfg: params `phantom`) to `out` (atomically); return
    counts for tracking."""
    out = Path(out)
    with atomic_dir(out) as tmp:
        written = [
            write_patient(tmp, i, cfg.seed, cfg.matrix, cfg.fov_mm, cfg.slice_thickness_mm, cfg.z_extent_mm)
            for i in progress(range(cfg.patients), desc="phantom patients", total=cfg.patients)
        ]
        _write_manifest(tmp, written)
    log.info("wrote %d phantom patients to %s", len(written), out)
    return {"patients": len(written), "slices": sum(w.shape_zyx[0] for w in written)}


def _write_manifest(root: Path, written: list[PatientSeries]) -> None:
    with atomic_path(root / "manifest.csv") as tmp, open(tmp, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["patient_id", "file", "sha256", "pixel_spacing_mm", "slice_spacing_mm"])
        for w in written:
            for f in sorted(w.folder.parent.parent.rglob("*.dcm")):
                out.writerow(
                    [
                        w.patient_id,
                        f.relative_to(root).as_posix(),
                        sha256_file(f),
                        w.pixel_spacing,
                        w.slice_spacing,
                    ]
                )
