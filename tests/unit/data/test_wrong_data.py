"""Issue 29 points 1-5: input that would become wrong training data is rejected with its reason, never `ok`.

Each test fails on the code before the fix (7a1bd12); real DICOM / NIfTI / model files, no mocks."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk
import torch

from prdit import paths
from prdit.data import dicom
from prdit.data.ingest import check_content
from prdit.errors import MissingInputError, PrditError
from prdit.stages.ingest import run as run_ingest
from tests.support import dicom_corpus as corpus
from tests.support.project import params_with

EXTENT = [100.0, 100.0, 100.0]  # the corpus' series cover 192 x 192 x 120 mm
# pydicom warns when it writes or reads 'NaN' / 'inf' in a DS element: those files are the point here
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR DS")


def _params(source: Path, fmt: str = "dicom", **ingest):
    return params_with(
        {
            "sources": {
                "corpus": {"format": fmt, "path": str(source), "download": "none", "case_ids": "source"}
            },
            "ingest": {"min_extent_mm": EXTENT, **ingest},
        }
    )


def _ingest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, raw: Path, fmt: str = "dicom") -> pd.DataFrame:
    """Run `prdit ingest` on raw (in-process, one worker) and return its qc.csv by case."""
    monkeypatch.chdir(tmp_path)
    assert run_ingest(_params(raw, fmt), "corpus") == 0  # the good case is ok: one bad case costs no other
    return pd.read_csv(tmp_path / "data/interim/corpus/qc.csv", keep_default_na=False).set_index("case")


def _rejected(qc: pd.DataFrame, case: str, words: str, tmp_path: Path) -> str:
    row = qc.loc[case]
    assert row["status"] == "rejected", (case, row["notes"])
    assert words in row["reason"] and "\n" not in row["reason"], row["reason"]
    assert not (tmp_path / f"data/interim/corpus/{case}.nii.gz").exists()
    return row["reason"]


def _edit(path: Path, **values) -> None:
    """Set (or with None delete) DICOM attributes of one file, written back as a real DICOM file."""
    ds = pydicom.dcmread(path)
    for key, value in values.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)


# --------------------------------------------------------------------------------------------
# 1. Rescale checked per slice
# --------------------------------------------------------------------------------------------


def test_one_slice_without_rescale_among_rescaled_slices_is_rejected(tmp_path, monkeypatch):
    """The issue's case: slice 13 has no RescaleSlope/Intercept (the others -1024): it was read 1024 HU too
    bright, `ok` with only a note."""
    raw = tmp_path / "raw"
    corpus.write(raw / "good" / "ct", corpus.axial(), "good", "ct")
    files = corpus.write(raw / "mixed" / "ct", corpus.axial(), "mixed", "ct")
    _edit(files[12], RescaleSlope=None, RescaleIntercept=None)
    qc = _ingest(tmp_path, monkeypatch, raw)
    reason = _rejected(qc, "mixed", "RescaleSlope/RescaleIntercept missing in 1 of 30 slice(s)", tmp_path)
    assert "IM00013.dcm" in reason and "intercept -1024" in reason and "HU scale" in reason
    assert qc.loc["good", "status"] == "ok"


def test_one_slice_not_in_hu_among_slices_without_rescale_is_rejected(tmp_path):
    """No slice has rescale; 29 are HU, one holds raw values (HU + 1024): the series-wide percentile passed."""
    files = corpus.write(tmp_path / "ct", corpus.axial(), "p", "ct", intercept=0.0)
    for f in files:
        _edit(f, RescaleSlope=None, RescaleIntercept=None)
    ds = pydicom.dcmread(files[20])
    ds.PixelData = (ds.pixel_array.astype(np.int32) + 1024).astype(np.int16).tobytes()
    ds.save_as(files[20], enforce_file_format=True)
    with pytest.raises(dicom.SeriesError, match=r"1 of 30 slice\(s\) do not look like HU \(IM00021\.dcm"):
        dicom.read_files(files)
    image, report = dicom.read_files(files[:20])  # the same slices without the raw one: taken as HU
    assert report.assumed_rescale and float(sitk.GetArrayViewFromImage(image).min()) == -1000


# --------------------------------------------------------------------------------------------
# 2. Invalid slope
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("slope", ["0", "NaN", "inf", "-1"])
def test_invalid_rescale_slope_is_rejected_naming_the_file(tmp_path, slope):
    """RescaleSlope 0 was read as 1 (`float(slope or 1.0)`); NaN / inf made NaN voxels, -1 an inverted scale."""
    files = corpus.write(tmp_path / "ct", corpus.axial(), "p", "ct")
    _edit(files[4], RescaleSlope=slope)
    with pytest.raises(
        dicom.SeriesError, match=r"IM00005\.dcm: RescaleSlope \S+ is not a positive finite number"
    ) as info:
        dicom.read_files(files)
    assert "\n" not in str(info.value)


def test_invalid_rescale_intercept_is_rejected(tmp_path):
    files = corpus.write(tmp_path / "ct", corpus.axial(), "p", "ct")
    _edit(files[4], RescaleIntercept="NaN")
    with pytest.raises(dicom.SeriesError, match=r"IM00005\.dcm: RescaleIntercept nan is not finite"):
        dicom.read_files(files)


# --------------------------------------------------------------------------------------------
# 3. Non-finite voxels (NIfTI, npz)
# --------------------------------------------------------------------------------------------


def _body(shape=(40, 48, 48), spacing=4.0) -> np.ndarray:
    axes = [(np.arange(n) - (n - 1) / 2) * spacing for n in shape]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    return corpus.truth_hu(np.stack([x, y, z], -1)).astype(np.float32)


def _nifti(path: Path, values: np.ndarray) -> None:
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((4.0, 4.0, 4.0))
    sitk.WriteImage(image, str(path))


def test_nan_or_infinite_voxels_are_rejected_with_the_count(tmp_path, monkeypatch):
    """NaN / inf voxels became 0 HU (water); an all-NaN volume passed the no-tissue test as a constant cube."""
    raw = tmp_path / "nifti"
    raw.mkdir()
    _nifti(raw / "good.nii.gz", _body())
    some = _body()
    some[3, 4, 5] = some[10, 11, 12] = some[20, 0, 0] = np.nan
    _nifti(raw / "some-nan.nii.gz", some)
    inf = _body()
    inf[1, 2, 3], inf[4, 5, 6] = np.inf, -np.inf
    _nifti(raw / "inf.nii.gz", inf)
    _nifti(raw / "all-nan.nii.gz", np.full((40, 48, 48), np.nan, np.float32))
    qc = _ingest(tmp_path, monkeypatch, raw, "nifti")
    assert qc.loc["good", "status"] == "ok"
    assert "some-nan.nii.gz: 3 NaN voxel(s) of 92160" in _rejected(
        qc, "some-nan", "not a volume in HU", tmp_path
    )
    assert "inf.nii.gz: 2 infinite voxel(s)" in _rejected(qc, "inf", "not a volume in HU", tmp_path)
    assert "92160 NaN voxel(s) of 92160 (100.000%" in _rejected(qc, "all-nan", "NaN", tmp_path)


def test_nan_voxels_in_npz_are_rejected(tmp_path, monkeypatch):
    raw = tmp_path / "npz"
    raw.mkdir()
    np.savez_compressed(raw / "good.npz", ct=_body(), spacing=np.array([4.0, 4.0, 4.0]))
    bad = _body()
    bad[5] = np.nan
    np.savez_compressed(raw / "bad.npz", ct=bad, spacing=np.array([4.0, 4.0, 4.0]))
    np.savez_compressed(raw / "nan-spacing.npz", ct=_body(), spacing=np.array([4.0, np.nan, 4.0]))
    qc = _ingest(tmp_path, monkeypatch, raw, "npz")
    assert qc.loc["good", "status"] == "ok"
    assert "bad.npz: 2304 NaN voxel(s) of 92160" in _rejected(qc, "bad", "not a volume in HU", tmp_path)
    _rejected(qc, "nan-spacing", "is not three positive numbers", tmp_path)


# --------------------------------------------------------------------------------------------
# 4. Non-finite positions
# --------------------------------------------------------------------------------------------


def test_nan_image_position_is_rejected_before_itk(tmp_path, monkeypatch, capfd):
    """One NaN ImagePositionPatient: z spacing 1.0, origin NaN, both cubes all air, `ok`. Every position
    NaN: 'no tissue' and 24 vnl_svd blocks from ITK."""
    raw = tmp_path / "raw"
    corpus.write(raw / "good" / "ct", corpus.axial(), "good", "ct")
    files = corpus.write(raw / "one-nan" / "ct", corpus.axial(), "one-nan", "ct")
    _edit(files[7], ImagePositionPatient=["-94", "NaN", "-32"])
    for f in corpus.write(raw / "all-nan" / "ct", corpus.axial(), "all-nan", "ct"):
        _edit(f, ImagePositionPatient=["NaN", "NaN", "NaN"])
    orientation = corpus.write(raw / "nan-orientation" / "ct", corpus.axial(), "nan-orientation", "ct")
    _edit(orientation[3], ImageOrientationPatient=["1", "0", "0", "0", "NaN", "0"])
    capfd.readouterr()
    qc = _ingest(tmp_path, monkeypatch, raw)
    assert qc.loc["good", "status"] == "ok"
    reason = _rejected(
        qc, "one-nan", "IM00008.dcm: ImagePositionPatient (-94, nan, -32) is not finite", tmp_path
    )
    assert "no tissue" not in reason
    _rejected(qc, "all-nan", "IM00001.dcm: ImagePositionPatient (nan, nan, nan) is not finite", tmp_path)
    _rejected(qc, "nan-orientation", "IM00004.dcm: ImageOrientationPatient (1, 0, 0, 0, nan, 0)", tmp_path)
    out, err = capfd.readouterr()
    assert "vnl_svd" not in out + err


def test_extent_and_tissue_checks_cannot_pass_on_nan():
    image = sitk.GetImageFromArray(_body().astype(np.int16))
    image.SetSpacing((4.0, 4.0, 4.0))
    assert check_content(image, EXTENT) == pytest.approx((192.0, 192.0, 160.0))
    image.SetOrigin((0.0, float("nan"), 0.0))
    with pytest.raises(dicom.SeriesError, match="geometry not finite"):
        check_content(image, EXTENT)


def test_preprocess_rejects_a_volume_with_a_nan_origin(tmp_path):
    """What a NaN position used to leave in data/interim: preprocessed into two all-air cubes, `ok`."""
    from prdit.data.preprocess import PreprocessJob, preprocess_case

    image = sitk.GetImageFromArray(_body().astype(np.int16))
    image.SetSpacing((4.0, 4.0, 4.0))
    image.SetOrigin((float("nan"), 0.0, 0.0))
    sitk.WriteImage(image, str(tmp_path / "case.nii.gz"))
    job = dict(
        case="case",
        patient_id="case",
        path=str(tmp_path / "case.nii.gz"),
        out_root=str(tmp_path / "out"),
        sizes=[16, 32],
        mode="default",
        fmt="nifti",
        fov_mm=256.0,
        window=(-1000.0, 1000.0),
    )
    with pytest.raises(PrditError, match=r"case\.nii\.gz: geometry not usable"):
        preprocess_case(PreprocessJob(**job))
    assert not (tmp_path / "out").exists()
    image.SetOrigin((0.0, 0.0, 0.0))
    sitk.WriteImage(image, str(tmp_path / "case.nii.gz"))
    assert preprocess_case(PreprocessJob(**job))["sizes"] == "16 32"


# --------------------------------------------------------------------------------------------
# 5. A model file of the wrong stage
# --------------------------------------------------------------------------------------------


def _model_file(path: Path, name: str, size: int, stage: str | None) -> None:
    from prdit.model import create, save

    torch.manual_seed(0)
    save(path, create(name, size), meta={} if stage is None else {"stage": stage, "dataset": "phantom"})


@pytest.mark.parametrize(
    ("name", "stage", "why"),
    [
        ("PRDiT-T/8/0", "local", "its meta.stage is 'local'"),
        ("PRDiT-T/8/0", None, "its architecture PRDiT-T/8/0 has depth 0 (a stage-1 local model)"),
        ("PRDiT-T/8/1", "global", None),  # the right model: samples
    ],
)
def test_sample_checks_the_model_stage_before_writing(tmp_path, monkeypatch, name, stage, why):
    """A stage-1 model.pt copied where sampling expects the stage-2 model was sampled over the good samples."""
    from prdit.stages.sample import run as run_sample

    monkeypatch.chdir(tmp_path)
    model = Path(paths.model_file("phantom", "global"))
    _model_file(model, name, 16, stage)
    good = Path(paths.samples("phantom", 16))
    good.mkdir(parents=True)
    (good / "0.nii.gz").write_bytes(b"the good samples")
    p = params_with(
        {
            "preprocess": {"size": 16, "highres_size": None, "fov_mm": 256.0},
            "sample": {"n": 1, "steps": 2, "k": 2, "batch_size": 1},
        }
    )
    if why is None:
        assert run_sample(p, "phantom", 16) == 0
        assert (good / "0.nii.gz").read_bytes() != b"the good samples"
        return
    expected = f"{model}: expected the global model at 16^3, but {why}"
    with pytest.raises(PrditError, match=re.escape(expected)) as info:
        run_sample(p, "phantom", 16)
    assert "\n" not in str(info.value)
    assert [f.name for f in good.iterdir()] == ["0.nii.gz"]
    assert (good / "0.nii.gz").read_bytes() == b"the good samples"
    assert not paths.partial(good).exists()


def test_sample_rejects_a_model_of_another_size(tmp_path, monkeypatch):
    from prdit.stages.sample import run as run_sample

    monkeypatch.chdir(tmp_path)
    model = Path(paths.model_file("phantom", "global"))
    _model_file(model, "PRDiT-T/8/1", 32, "global")
    p = params_with({"preprocess": {"size": 16, "highres_size": None}, "sample": {"n": 1}})
    with pytest.raises(PrditError, match=f"{model}: expected the global model at 16\\^3, but it works at 32"):
        run_sample(p, "phantom", 16)


def test_sample_without_a_model_names_the_command_that_trains_it(tmp_path, monkeypatch):
    from prdit.stages.sample import run as run_sample

    monkeypatch.chdir(tmp_path)
    p = params_with({"preprocess": {"size": 16, "highres_size": None}, "sample": {"n": 1}})
    model = paths.model_file("phantom", "global")
    with pytest.raises(MissingInputError) as info:
        run_sample(p, "phantom", 16)
    assert str(info.value) == (
        f"{model}: model file not found (run `prdit train --dataset phantom --stage global` first)"
    )
    assert not Path(paths.samples("phantom", 16)).exists()  # nothing written


def test_train_checks_the_parent_stage(tmp_path, monkeypatch):
    """_models.build: a stage-1 file where the highres stage expects its stage-2 parent is named, not trained on."""
    from prdit.stages import _models

    monkeypatch.chdir(tmp_path)
    parent = _models.parent_path("phantom", "highres")
    _model_file(parent, "PRDiT-T/8/0", 16, "local")
    p = params_with({"preprocess": {"size": 16, "highres_size": 32}})
    with pytest.raises(
        PrditError, match=f"{parent}: expected the global model at 16\\^3, but its meta.stage"
    ):
        _models.build(p, "phantom", "highres")
    local = _models.parent_path("phantom", "global")
    _model_file(local, "PRDiT-T/8/1", 16, "global")  # a stage-2 file where stage 2 expects its stage-1 parent
    with pytest.raises(PrditError, match=f"{local}: expected the local model at 16\\^3, but its meta.stage"):
        _models.build(p, "phantom", "global")
