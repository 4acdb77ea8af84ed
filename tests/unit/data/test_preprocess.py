"""Preprocess: geometry survives ingest + preprocess, sizes agree, no aliasing, reference recipe, loader."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch

from prdit import paths
from prdit.data.dataset import case_ids
from prdit.data.dicom_writer import SeriesHeader, uid, write_ct_series
from prdit.data.preprocess import avg_pool2, resample_cube
from prdit.stages._models import volume_dataset
from prdit.stages.ingest import run as run_ingest
from prdit.stages.preprocess import run as run_preprocess
from prdit.stages.split import run as run_split
from tests.support.project import params_with

CENTRE = np.array([14.0, -21.0, 9.0])  # LPS mm
RADIUS = 24.0
SPHERE_HU = 300.0


def write_sphere_series(
    folder: Path, patient: str, ps: float = 0.8, dz: float = 3.0, n: int = 256, slices: int = 50
):
    """Water-filled field of view with one sphere, anisotropic voxels, IPP z descending (head first)."""
    half = (n - 1) / 2 * ps
    xs = -half + np.arange(n) * ps
    zs = 60.0 - np.arange(slices) * dz
    x, y = np.meshgrid(xs, xs, indexing="xy")  # [row=y, col=x]
    hu = np.zeros((slices, n, n), np.float32)
    for k, z in enumerate(zs):
        # Supersample each pixel 3x3x3 so the written series carries true partial volume.
        acc = np.zeros((n, n), np.float32)
        for ox in (-ps / 3, 0, ps / 3):
            for oy in (-ps / 3, 0, ps / 3):
                for oz in (-dz / 3, 0, dz / 3):
                    d2 = (x + ox - CENTRE[0]) ** 2 + (y + oy - CENTRE[1]) ** 2 + (z + oz - CENTRE[2]) ** 2
                    acc += d2 <= RADIUS**2
        hu[k] = acc / 27 * SPHERE_HU
    ipp = np.stack([np.full(slices, -half), np.full(slices, -half), zs], 1)
    write_ct_series(
        folder,
        hu,
        ipp,
        (1, 0, 0, 0, 1, 0),
        (ps, ps),
        SeriesHeader(
            slice_thickness=dz,
            patient_id=patient,
            study_uid=uid(patient, "study"),
            series_uid=uid(patient, "series"),
        ),
    )


def params(raw: Path, **preprocess):
    over = {
        "sources": {"t": {"format": "dicom", "path": str(raw), "download": "none", "case_ids": "source"}},
        "preprocess": {"size": 64, "highres_size": 128, "fov_mm": 256.0, **preprocess},
        "ingest": {"min_extent_mm": [50.0, 50.0, 50.0]},  # the test spheres' fields of view are ~112 mm
    }
    return params_with(over)


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory):
    work = tmp_path_factory.mktemp("proj")
    raw = work / "raw"
    write_sphere_series(raw / "P1" / "s", "P1", n=140)
    write_sphere_series(raw / "P2" / "s", "P2", ps=0.7, dz=1.25, n=160, slices=120)
    (work / "data").mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRDIT_TRACKING", "off")
        mp.chdir(work)
        p = params(raw)
        assert run_ingest(p, "t") == 0
        assert run_preprocess(p, "t", threads=2) == 0
        run_split(p, "t")
    return work


def physical_grid(image: sitk.Image) -> np.ndarray:
    shape = image.GetSize()[::-1]
    z, y, x = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    d = np.asarray(image.GetDirection()).reshape(3, 3)
    return np.asarray(image.GetOrigin()) + (np.stack([x, y, z], -1) * image.GetSpacing()) @ d.T


@pytest.mark.parametrize("case", ["P1", "P2"])
@pytest.mark.parametrize("size", [64, 128])
def test_sphere_volume_centroid_and_hu_survive(preprocessed, case, size):
    image = sitk.ReadImage(str(preprocessed / "data" / "processed" / "t" / str(size) / f"{case}.nii.gz"))
    voxel = 256.0 / size
    assert image.GetSpacing() == pytest.approx((voxel,) * 3)
    hu = (sitk.GetArrayFromImage(image) + 1.0) / 2.0 * 2000.0 - 1000.0
    inside = np.clip(hu / SPHERE_HU, 0, 1) * (
        np.linalg.norm(physical_grid(image) - CENTRE, axis=-1) < RADIUS + 3 * voxel
    )
    volume = inside.sum() * voxel**3  # partial-volume weighted
    radius = (3 * volume / (4 * np.pi)) ** (1 / 3)
    assert abs(radius - RADIUS) < voxel
    centroid = (physical_grid(image) * inside[..., None]).sum((0, 1, 2)) / inside.sum()
    assert np.linalg.norm(centroid - CENTRE) < voxel
    centre_hu = hu[tuple(reversed(image.TransformPhysicalPointToIndex(CENTRE.tolist())))]
    assert abs(centre_hu - SPHERE_HU) < 10


def test_base_size_is_the_average_pool_of_highres_and_caches_match(preprocessed):
    out = preprocessed / "data" / "processed" / "t"
    hi = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "128" / "P1.nii.gz")))
    lo = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "64" / "P1.nii.gz")))
    np.testing.assert_allclose(lo, avg_pool2(hi), atol=1.1e-3)  # both quantised to 1e-3 in the NIfTI
    cache = np.load(out / "64" / "P1.npy")
    assert cache.dtype == np.float16 and cache.shape == (64, 64, 64)
    np.testing.assert_allclose(cache.astype(np.float32), lo, atol=1e-3)
    assert lo.min() >= -1 and lo.max() <= 1 and lo.min() == -1  # air padding outside the field of view


def test_nifti_affine_is_true_spacing_in_ras(preprocessed):
    img = nib.load(preprocessed / "data" / "processed" / "t" / "128" / "P1.nii.gz")
    assert np.allclose(np.diag(img.affine)[:3], [-2.0, -2.0, 2.0])  # LPS grid -> RAS affine, 2 mm voxels
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")


def test_qc_table_and_montage(preprocessed):
    qc = pd.read_csv(preprocessed / "data" / "processed" / "t" / "qc.csv", dtype=str, keep_default_na=False)
    assert qc["status"].tolist() == ["ok", "ok"]
    assert qc["sizes"].tolist() == ["64 128"] * 2
    assert (preprocessed / "data" / "processed" / "t" / "qc.png").is_file()


def test_downsampling_does_not_alias():
    # Stripes at the input's Nyquist frequency must vanish, not fold into a coarse pattern.
    stripes = np.where(np.arange(160) % 2 == 0, 300.0, -300.0).astype(np.float32)
    vol = np.broadcast_to(stripes, (40, 160, 160)).copy()
    image = sitk.GetImageFromArray(vol)
    image.SetSpacing((0.8, 0.8, 3.2))
    out = resample_cube(image, 24, 4.4, (-1000.0, 1000.0))
    inner = out[4:-4, 4:-4, 4:-4]
    assert abs(float(inner.mean())) < 5 and float(inner.std()) < 5
    naive = sitk.GetArrayFromImage(
        sitk.Resample(
            image, [24] * 3, sitk.Transform(), sitk.sitkLinear, out_origin(image, 24, 4.4), [4.4] * 3
        )
    )
    assert float(naive[4:-4, 4:-4, 4:-4].std()) > 50  # what smoothing prevents


def out_origin(image: sitk.Image, size: int, spacing: float) -> list[float]:
    centre = image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()])
    return [c - (size - 1) / 2 * spacing for c in centre]


def test_reference_mode_skips_cases_under_the_256_mm_crop(preprocessed, monkeypatch):
    """Both test cases cover 204.8 mm in-plane: the reference recipe cannot crop 256^3 at 1 mm."""
    monkeypatch.setenv("PRDIT_TRACKING", "off")
    monkeypatch.chdir(preprocessed)
    p = params(preprocessed / "raw", mode="reference", size=32, highres_size=64)
    assert run_preprocess(p, "t") == 1
    qc = pd.read_csv(preprocessed / "data" / "processed" / "t" / "qc.csv", keep_default_na=False)
    assert set(qc["status"]) == {"rejected"}
    assert all("under 256 mm" in r for r in qc["reason"])
    run_preprocess(params(preprocessed / "raw"), "t")  # restore the default outputs for other tests


def test_volume_dataset_reads_the_cache(preprocessed, monkeypatch):
    monkeypatch.chdir(preprocessed)
    ids = [c for split in ("train", "val", "test") for c in case_ids(paths.splits("t", split), "t")]
    assert sorted(ids) == ["P1", "P2"]
    ds = volume_dataset("t", 64, "train")
    x = ds[0]
    assert x.dtype == torch.float16 and x.shape == (1, 64, 64, 64) and -1 <= x.min() and x.max() <= 1
    with pytest.raises(FileNotFoundError, match="split file"):
        volume_dataset("nope", 64, "train")


def test_a_broken_case_does_not_stop_the_others(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    interim = tmp_path / "data" / "interim" / "t"
    interim.mkdir(parents=True)
    hu = np.full((10, 12, 12), -1000, np.int16)
    hu[3:7, 4:8, 4:8] = 40  # some tissue: an all-air (constant) cube is rejected as no training case
    img = sitk.GetImageFromArray(hu)
    img.SetSpacing((4.0, 4.0, 4.0))
    sitk.WriteImage(img, str(interim / "a.nii.gz"))
    (interim / "b.nii.gz").write_bytes(b"not a nifti")
    pd.DataFrame({"case": ["a", "b"], "patient_id": ["a", "b"], "status": ["ok", "ok"]}).to_csv(
        interim / "qc.csv", index=False
    )
    p = params(tmp_path, size=16, highres_size=None)
    assert run_preprocess(p, "t") == 0
    assert run_preprocess(p, "t", strict=True) == 1
    qc = pd.read_csv(tmp_path / "data" / "processed" / "t" / "qc.csv", keep_default_na=False).set_index(
        "case"
    )
    assert qc.loc["a", "status"] == "ok" and qc.loc["b", "status"] == "rejected"
    assert qc.loc["b", "reason"]


def test_reference_mode_for_rad_chestct_npz_rejects_a_volume_under_the_crop(tmp_path, monkeypatch):
    monkeypatch.setenv("PRDIT_TRACKING", "off")
    monkeypatch.chdir(tmp_path)
    ct = np.full((160, 150, 150), -1000, np.int16)  # smaller than the 256^3 crop at native spacing
    ct[10:150, 10:140, 10:140] = 40
    (tmp_path / "raw").mkdir()
    np.savez_compressed(tmp_path / "raw" / "trn00001.npz", ct=ct)
    over = {
        "sources": {"rad": {"format": "npz", "path": "raw", "download": "none"}},
        "preprocess": {"mode": "reference", "size": 64, "highres_size": 128},
        "ingest": {"min_extent_mm": [50.0, 50.0, 50.0]},  # a 120 mm test volume
    }
    p = params_with(over)
    assert run_ingest(p, "rad") == 0 and run_preprocess(p, "rad") == 1
    qc = pd.read_csv(tmp_path / "data" / "processed" / "rad" / "qc.csv", keep_default_na=False)
    assert qc.loc[0, "status"] == "rejected" and "native axis z is 160 voxels" in qc.loc[0, "reason"]
