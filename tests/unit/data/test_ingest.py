"""`prdit ingest` over a messy corpus: every case ok or rejected with its reason, the batch goes on."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from prdit.data.qc import run_cases
from prdit.stages.ingest import run as run_ingest
from tests.support import dicom_corpus as corpus
from tests.support.project import ROOT, params_with

CORPUS_EXTENT = [100.0, 100.0, 100.0]  # the corpus' series cover 192 x 192 x 120 mm, less than a chest CT


def params(source: Path, fmt: str = "dicom", min_extent_mm: list[float] | None = CORPUS_EXTENT, **ingest):
    """params.yaml with the corpus as dataset; min_extent_mm=None keeps params.yaml's chest-CT minimum."""
    if min_extent_mm is not None:
        ingest["min_extent_mm"] = min_extent_mm
    return params_with(
        {
            "sources": {
                "corpus": {"format": fmt, "path": str(source), "download": "none", "case_ids": "source"}
            },
            "ingest": ingest,
        }
    )


def tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    work = tmp_path_factory.mktemp("work")
    raw = corpus.build(tmp_path_factory.mktemp("raw"))
    before = tree_digest(raw)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRDIT_TRACKING", "off")
        mp.chdir(work)
        status = run_ingest(params(raw), "corpus", threads=2)
        strict = run_ingest(params(raw), "corpus", threads=1, strict=True)
    return work / "data" / "interim" / "corpus", raw, before, status, strict


def test_every_case_is_ok_or_rejected_as_expected(ingested):
    out, *_ = ingested
    qc = pd.read_csv(out / "qc.csv", keep_default_na=False).set_index("case")
    assert set(qc.index) == set(corpus.EXPECT)
    for case, (status, words) in corpus.EXPECT.items():
        row = qc.loc[case]
        assert row["status"] == status, (case, row["reason"])
        if status == "rejected":
            assert words in row["reason"], (case, row["reason"])
            assert not (out / f"{case}.nii.gz").exists()
        else:
            assert words in row["notes"], (case, row["notes"])
            assert (out / f"{case}.nii.gz").is_file()
    good = qc.loc["good"]
    assert (int(good["slices"]), float(good["spacing_z"]), good["orientation"]) == (30, 4.0, "LPS")
    assert float(good["hu_p1"]) == -1000 and float(good["seconds"]) > 0


def test_outputs_are_hu_int16_with_true_geometry(ingested):
    out, *_ = ingested
    image = sitk.ReadImage(str(out / "feet-first.nii.gz"))
    assert image.GetPixelID() == sitk.sitkInt16
    assert image.GetSpacing() == pytest.approx((4.0, 4.0, 4.0))
    index = image.TransformPhysicalPointToIndex(corpus.MARKER_C.tolist())
    assert image[index] == corpus.MARKER_HU


def test_skipped_series_and_files_are_recorded(ingested):
    out, *_ = ingested
    skipped = pd.read_csv(out / "series.csv", keep_default_na=False)
    text = "\n".join(skipped["path"] + " | " + skipped["reason"])
    for words in ("README.txt | not a DICOM file", "localizer", "modality SR", "not selected"):
        assert words in text
    for name, (modality, _) in corpus.NON_IMAGE_OBJECTS.items():
        assert f"other-objects/objects/{name} | modality {modality} (not CT)" in text
    assert "other-objects/objects/sc.dcm | multi-frame (20 frames in 1 file(s)) SOP class Multi-frame" in text


def test_raw_input_untouched_no_identity_leaks_and_exit_codes(ingested):
    out, raw, before, status, strict = ingested
    assert tree_digest(raw) == before
    for f in out.iterdir():
        if f.suffix == ".csv":
            text = f.read_text()
            assert "Synthetic^" not in text and "19700101" not in text
    assert (out / "qc.png").is_file()
    assert status == 0 and strict == 1


def test_exit_status_is_nonzero_when_no_case_succeeds(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    corpus.write(raw / "p1" / "s", corpus.axial(n=1), "p1", "ct")
    (raw / "notes.txt").write_text("hello")
    monkeypatch.chdir(tmp_path)
    assert run_ingest(params(raw), "corpus") == 1
    qc = pd.read_csv(tmp_path / "data" / "interim" / "corpus" / "qc.csv")
    assert qc["status"].tolist() == ["rejected"] and "fewer than" in qc["reason"][0]


def test_npz_and_nifti_inputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ct = np.full((20, 24, 28), -1000, np.int16)
    ct[5:15, 6:18, 7:21] = 50
    (tmp_path / "npz").mkdir()
    np.savez_compressed(tmp_path / "npz" / "trn00001.npz", ct=ct)
    np.savez_compressed(tmp_path / "npz" / "bad.npz", volume=ct)
    assert run_ingest(params(tmp_path / "npz", "npz", min_extent_mm=[1, 1, 1]), "corpus") == 0
    qc = pd.read_csv(tmp_path / "data" / "interim" / "corpus" / "qc.csv", keep_default_na=False).set_index(
        "case"
    )
    assert qc.loc["trn00001", "status"] == "ok" and float(qc.loc["trn00001", "spacing_z"]) == 0.8
    assert qc.loc["bad", "status"] == "rejected" and "no 'ct' array" in qc.loc["bad", "reason"]
    image = sitk.ReadImage(str(tmp_path / "data" / "interim" / "corpus" / "trn00001.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), ct)

    nifti = tmp_path / "nifti"
    nifti.mkdir()
    src = sitk.GetImageFromArray(ct.astype(np.float32))
    src.SetSpacing((0.7, 0.7, 2.5))
    src.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))  # RAS-stored, as many NIfTI writers do
    sitk.WriteImage(src, str(nifti / "case-a.nii.gz"))
    assert run_ingest(params(nifti, "nifti", min_extent_mm=[1, 1, 1]), "corpus") == 0
    image = sitk.ReadImage(str(tmp_path / "data" / "interim" / "corpus" / "case-a.nii.gz"))
    assert image.GetDirection() == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert image.GetSpacing() == pytest.approx((0.7, 0.7, 2.5))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), ct[:, ::-1, ::-1])


def _die_on_boom(case: str) -> dict:
    if case == "boom":
        os._exit(3)  # a worker killed mid-case, as by the out-of-memory killer
    if case == "raise":
        raise RuntimeError("bad pixels")
    return {"case": case, "value": len(case)}


def test_pool_survives_a_dying_worker_and_exceptions():
    jobs = [{"case": c} for c in ("a", "boom", "raise", "bb", "ccc")]
    rows = run_cases(_die_on_boom, jobs, threads=2, desc="test")
    assert [r["case"] for r in rows] == ["a", "boom", "raise", "bb", "ccc"]
    assert [r["status"] for r in rows] == ["ok", "rejected", "rejected", "ok", "ok"]
    assert "worker process died" in rows[1]["reason"] and rows[2]["reason"] == "RuntimeError: bad pixels"
    assert rows[4]["value"] == 3


# --------------------------------------------------------------------------------------------
# Coverage: too little anatomy is rejected with its extent; fractions exact
# --------------------------------------------------------------------------------------------


def _qc(work: Path) -> pd.DataFrame:
    return pd.read_csv(work / "data/interim/corpus/qc.csv", keep_default_na=False).set_index("case")


def test_a_series_covering_too_little_is_rejected_with_its_extent(tmp_path, monkeypatch):
    """The issue's example: 5 slices of 8 x 8 x 12.5 mm pass min_slices=2 but are no chest CT."""
    monkeypatch.setenv("PRDIT_TRACKING", "off")
    monkeypatch.chdir(tmp_path)
    raw = tmp_path / "raw"
    corpus.write(raw / "tiny" / "s", corpus.axial(n=5, dz=2.5, rows=8, ps=1.0, z0=-5.0), "tiny", "ct")
    corpus.write(raw / "chest" / "s", corpus.axial(n=40, dz=4.0, rows=64, ps=4.0, z0=-80.0), "chest", "ct")
    assert run_ingest(params(raw, min_extent_mm=None, min_slices=2), "corpus") == 0
    qc = _qc(tmp_path)
    assert qc.loc["tiny", "status"] == "rejected"
    assert (
        "covers 8.0 x 8.0 x 12.5 mm (x, y, z), less than ingest.min_extent_mm=[200, 200, 150]"
        in (qc.loc["tiny", "reason"])
    )
    assert "along x and y and z" in qc.loc["tiny", "reason"]
    assert not (tmp_path / "data/interim/corpus/tiny.nii.gz").exists()
    assert qc.loc["chest", "status"] == "ok" and qc.loc["chest", "extent_mm"] == "256.0 256.0 160.0"


def test_outside_fraction_is_exact_not_rounded_to_one():
    from prdit.data.preprocess import _outside_fraction

    image = sitk.Image(8, 8, 5, sitk.sitkInt16)
    image.SetSpacing((1.0, 1.0, 2.5))
    fraction = _outside_fraction(image, 64, 4.0)
    assert fraction == pytest.approx(1 - 8 * 8 * 12.5 / 256**3, rel=1e-12) and fraction < 1
    image = sitk.Image(64, 64, 64, sitk.sitkInt16)
    image.SetSpacing((4.0, 4.0, 4.0))
    assert _outside_fraction(image, 64, 4.0) == pytest.approx(0.0, abs=1e-12)  # edge to edge: fully inside


def test_thin_or_empty_nifti_is_rejected(tmp_path, monkeypatch):
    """Fault probe: a 64 x 64 x 2 NIfTI used to be ingested as ok (all air) and reach training."""
    monkeypatch.setenv("PRDIT_TRACKING", "off")
    monkeypatch.chdir(tmp_path)
    nifti = tmp_path / "nifti"
    nifti.mkdir()
    thin = sitk.Image(64, 64, 2, sitk.sitkInt16) - 1000
    sitk.WriteImage(thin, str(nifti / "thin.nii.gz"))
    air = sitk.Image(64, 64, 48, sitk.sitkInt16) - 1000
    air.SetSpacing((4.0, 4.0, 4.0))
    sitk.WriteImage(air, str(nifti / "air.nii.gz"))
    body = sitk.GetImageFromArray(corpus.truth_hu(_grid((48, 64, 64), 4.0)).astype(np.int16))
    body.SetSpacing((4.0, 4.0, 4.0))
    sitk.WriteImage(body, str(nifti / "body.nii.gz"))
    assert run_ingest(params(nifti, "nifti", min_extent_mm=None), "corpus") == 0
    qc = _qc(tmp_path)
    assert (
        qc.loc["thin", "status"] == "rejected"
        and "2 slice(s), fewer than ingest.min_slices" in (qc.loc["thin", "reason"])
    )
    assert qc.loc["air", "status"] == "rejected" and "no tissue" in qc.loc["air", "reason"]
    assert qc.loc["body", "status"] == "ok"
    assert run_ingest(params(nifti, "nifti", min_extent_mm=None, min_slices=2), "corpus") == 0
    assert "covers 64.0 x 64.0 x 2.0 mm" in _qc(tmp_path).loc["thin", "reason"]


def _grid(shape: tuple[int, int, int], spacing: float) -> np.ndarray:
    """LPS points [z, y, x, 3] of a grid centred on the origin."""
    axes = [(np.arange(n) - (n - 1) / 2) * spacing for n in shape]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    return np.stack([x, y, z], -1)


# --------------------------------------------------------------------------------------------
# Failures before any work: one line, no traceback, no folder, no run
# --------------------------------------------------------------------------------------------


@pytest.fixture
def no_runs(monkeypatch):
    """Fail the test if a stage opens a tracking run (a check that fails first must leave no FAILED run)."""
    from prdit import tracking

    opened = []

    def stage_run(*args, **kwargs):
        opened.append(kwargs.get("stage"))
        raise AssertionError("a tracking run was opened")

    monkeypatch.setattr(tracking, "stage_run", stage_run)
    return opened


def _cli(tmp_path: Path, capsys, source: Path, command: str, fmt: str = "dicom") -> tuple[int, str]:
    from prdit.cli import main

    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())  # a project root
    extra = tmp_path / "extra.yaml"
    extra.write_text(
        f"sources:\n  corpus: {{format: {fmt}, path: '{source}', download: none, case_ids: source}}\ndatasets: [corpus]\n"
    )
    status = main(
        [command, "--params", str(ROOT / "params.yaml"), "--params", str(extra), "--dataset", "corpus"]
    )
    return status, capsys.readouterr().err


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip() and " INFO " not in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_missing_dataset_path_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys, no_runs):
    monkeypatch.chdir(tmp_path)
    status, err = _cli(tmp_path, capsys, tmp_path / "no-such-folder", "ingest")
    line = _one_line(err)
    assert status == 1
    assert f"sources.corpus.path: {tmp_path / 'no-such-folder'} does not exist" in line
    assert "prdit download --dataset corpus" in line
    assert not (tmp_path / "data").exists() and not no_runs


def test_preprocess_before_ingest_is_one_line(tmp_path, monkeypatch, capsys, no_runs):
    monkeypatch.chdir(tmp_path)
    status, err = _cli(tmp_path, capsys, tmp_path, "preprocess")
    line = _one_line(err)
    assert (
        status == 1
        and "data/interim/corpus/qc.csv: not found; run `prdit ingest --dataset corpus` first" in line
    )
    assert not (tmp_path / "data").exists() and not no_runs


def test_a_folder_without_dicom_says_so(tmp_path, monkeypatch, capsys, no_runs):
    monkeypatch.chdir(tmp_path)
    raw = tmp_path / "raw"
    (raw / "sub").mkdir(parents=True)
    for i in range(3):
        (raw / "sub" / f"note{i}.txt").write_text("not an image\n")
    (raw / "empty.dcm").write_bytes(b"")
    status, err = _cli(tmp_path, capsys, raw, "ingest")
    line = _one_line(err)
    assert status == 1 and f"No DICOM found under {raw} (4 files looked at, 4 not DICOM)" in line
    assert not (tmp_path / "data").exists() and not no_runs
    status, err = _cli(tmp_path, capsys, raw, "ingest", fmt="nifti")
    assert status == 1 and f"No nifti input found under {raw} (4 files looked at" in _one_line(err)
