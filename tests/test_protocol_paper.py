"""`protocol: paper`: the reference implementation's conventions, pinned on small inputs.

The expected preprocessing figures in tests/fixtures/paper_recipe_reference.json were computed once, outside
this repository, by running the reference code's own functions (github Fredy-Zhang/PRDiT; the file names
which) on the volumes of tests/paper_volumes.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import paper_volumes as pv
import pytest
import SimpleITK as sitk

from prdit.config import load
from prdit.data.preprocess import cubes_reference, preprocess_case, run_preprocess

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "paper_recipe_reference.json").read_text())
F16 = 2.0**-12 + 1e-6  # float16 rounding of values in [-1, 1] (half a unit in the last place at 0.5..1)


def assert_matches(v: np.ndarray, fig: dict, tol: float) -> None:
    """v ([z, y, x]) agrees with the reference's figures to `tol` at every recorded number."""
    assert list(v.shape) == fig["shape"]
    v = v.astype(np.float64)
    got = v[tuple(pv.probe_indices(v.shape[0]).T)]
    assert np.abs(got - np.array(fig["probe_values"])).max() <= tol
    assert np.abs(v.mean(axis=(1, 2)) - np.array(fig["slice_means_z"])).max() <= tol
    for key in ("mean", "std", "min", "max"):
        assert float(getattr(v, key)()) == pytest.approx(fig[key], abs=tol), key


def write_lidc_nifti(path: Path, vol_zyx: np.ndarray, spacing_xyz) -> None:
    sx, sy, sz = spacing_xyz
    nib.save(nib.Nifti1Image(vol_zyx.transpose(2, 1, 0), np.diag([-sx, -sy, sz, 1.0])), path)


def test_reference_preprocessing_equals_the_reference_recipe_at_128_and_256(tmp_path):
    src = tmp_path / "case.nii.gz"
    write_lidc_nifti(src, pv.lidc_zyx(), pv.LIDC_SPACING_XYZ)
    row = preprocess_case(
        "case", "case", str(src), str(tmp_path), [128, 256], "reference", "nifti", 256.0, (-1000.0, 1000.0)
    )
    assert row["sizes"] == "128 256"
    for size in (128, 256):
        cache = np.load(tmp_path / str(size) / "case.npy")
        assert cache.dtype == np.float16
        assert_matches(cache, FIXTURE[f"lidc_{size}"], F16)
        stored = sitk.ReadImage(str(tmp_path / str(size) / "case.nii.gz"))
        assert stored.GetSpacing() == pytest.approx((256 / size,) * 3)
        assert_matches(sitk.GetArrayFromImage(stored), FIXTURE[f"lidc_{size}"], 5e-4 + 1e-6)  # int16/1000


def test_reference_preprocessing_of_rad_chestct_in_both_ranges():
    image = sitk.GetImageFromArray(pv.rad_zyx())
    image.SetSpacing((0.8, 0.8, 0.8))
    unit = cubes_reference(image, [128, 256], "npz", (0.0, 1.0))  # the reference loader as run: [0, 1]
    signed = cubes_reference(image, [128, 256], "npz", (-1.0, 1.0))
    for size in (128, 256):
        cube, spacing, _ = unit[size]
        assert spacing == pytest.approx(0.8 * 256 / size)
        assert_matches(cube, FIXTURE[f"rad_{size}"], 1e-5)
        np.testing.assert_allclose(signed[size][0], 2 * cube - 1, atol=1e-6)


def test_a_case_under_256_mm_is_rejected_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("PRDIT_TRACKING", "off")
    monkeypatch.chdir(tmp_path)
    interim = tmp_path / "data" / "interim" / "t"
    interim.mkdir(parents=True)
    short = pv.chest_zyx((80, 130, 130), seed=3)  # z: 80 x 2.5 mm = 200 mm long
    write_lidc_nifti(interim / "short.nii.gz", short, (2.0, 2.0, 2.5))
    pd.DataFrame({"case": ["short"], "patient_id": ["short"], "status": ["ok"]}).to_csv(
        interim / "qc.csv", index=False
    )
    over = {
        "datasets": ["t"],
        "sources": {"t": {"format": "nifti", "path": "raw", "download": "none"}},
        "preprocess": {"mode": "reference", "size": 32, "highres_size": 64},
    }
    p = load(ROOT / "params.yaml", overrides=over)
    assert run_preprocess(p, "t") == 1  # no case succeeded
    qc = pd.read_csv(tmp_path / "data" / "processed" / "t" / "qc.csv", keep_default_na=False)
    row = qc.set_index("case").loc["short"]
    assert row["status"] == "rejected"
    assert "under 256 mm" in row["reason"] and "z is 200 mm" in row["reason"]
    assert not (tmp_path / "data" / "processed" / "t" / "32" / "short.npy").exists()
