"""`prdit ingest` over a messy corpus: every case ok or rejected with its reason, the batch goes on."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import dicom_corpus as corpus
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from prdit.data.ingest import run_ingest
from prdit.data.qc import run_cases
from tests.conftest import params_with


def params(source: Path, fmt: str = "dicom"):
    return params_with(
        {"sources": {"corpus": {"format": fmt, "path": str(source), "download": "none"}}},
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
    assert run_ingest(params(tmp_path / "npz", "npz"), "corpus") == 0
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
    assert run_ingest(params(nifti, "nifti"), "corpus") == 0
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
