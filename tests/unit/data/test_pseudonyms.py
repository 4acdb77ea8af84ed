"""Issue 29.10: a user's own DICOM (hospital record numbers in PatientID) leaves no source identifier in
any output, log or the MLflow store; the mapping back is kept only beside the interim data."""

from __future__ import annotations

import gzip
import logging
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from prdit import paths
from prdit.data import pseudonyms
from prdit.data.dicom_writer import SeriesHeader, write_ct_series
from prdit.hu import to_hu as unit_to_hu
from prdit.io import write_nifti
from prdit.stages.download import run as run_download
from prdit.stages.evaluate import run as run_evaluate
from prdit.stages.ingest import pseudonymised, write_plan
from prdit.stages.ingest import run as run_ingest
from prdit.stages.preprocess import run as run_preprocess
from prdit.stages.split import run as run_split
from tests.support.project import params_with

# the third fails when read (one slice of another matrix), the last has no usable series
MRNS = ["MRN-778899", "MRN-778900", "MRN-778901", "MRN-778902"]
UID_ROOT = "1.2.826.0.1.3680043.10.778"


def _series(
    folder: Path, mrn: str, tag: int, slices: int, study: str, series: str, n: int = 40, **kw
) -> None:
    ps, dz = 240.0 / n, 5.0
    half = (n - 1) / 2 * ps
    zs = 100.0 - np.arange(slices) * dz
    yy, xx = np.mgrid[:n, :n]
    body = ((yy - n / 2) ** 2 + (xx - n / 2) ** 2 < (n / 2.5) ** 2) * 1000.0 - 1000.0
    hu = np.repeat(body[None].astype(np.float32), slices, 0)
    hu[:, n // 2 - 2 : n // 2 + 2, n // 2 - 2 : n // 2 + 2] = 100.0 * tag
    ipp = np.stack([np.full(slices, -half), np.full(slices, -half), zs], 1)
    write_ct_series(
        folder,
        hu,
        ipp,
        (1, 0, 0, 0, 1, 0),
        (ps, ps),
        SeriesHeader(
            slice_thickness=dz, patient_id=mrn, study_uid=study, series_uid=series, series_number=tag
        ),
        **kw,
    )


def build(raw: Path) -> list[str]:
    """Four patients in folders named by their MRN; returns every identifying value written."""
    secrets = []
    for i, mrn in enumerate(MRNS):
        number = mrn.split("-")[1]
        study = f"{UID_ROOT}.{number}.1"
        chosen = f"{UID_ROOT}.{number}.2"
        slices = 5 if mrn == MRNS[-1] else 40  # the last: fewer than ingest.min_slices, rejected
        _series(raw / mrn / "study" / "ct", mrn, 2, slices, study, chosen)
        secrets += [mrn, study, chosen]
        if i == 2:  # slice 10 rewritten with another matrix: the case fails in the reader, naming the file
            _series(raw / mrn / "study" / "ct", mrn, 2, 1, study, chosen, n=32, names=["IM00010.dcm"])
        if i == 0:  # a second, shorter series: skipped ("not selected"), in series.csv
            other = f"{UID_ROOT}.{number}.3"
            _series(raw / mrn / "study" / "ct-short", mrn, 3, 30, study, other)
            secrets.append(other)
    return secrets


def params(raw: Path, **source):
    return params_with(
        {
            "sources": {"mine": {"format": "dicom", "path": str(raw), "download": "none", **source}},
            "datasets": ["mine"],
            "ingest": {"min_extent_mm": [50.0, 50.0, 50.0]},
            "preprocess": {"size": 16, "highres_size": 32},
            "split": {"val_fraction": 0.34, "test_fraction": 0.0},
        }
    )


def _text(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        try:
            data += gzip.decompress(data)
        except OSError:
            pass
    return data


def test_no_source_identifier_in_any_output_log_or_mlflow(tmp_path, monkeypatch, caplog):
    raw = tmp_path / "raw"
    secrets = build(raw)
    work = tmp_path / "project"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("PRDIT_TRACKING", raising=False)  # MLflow on: sqlite:///mlflow.db in the project
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    caplog.set_level(logging.DEBUG)
    p = params(raw)
    assert run_download(p, "mine") == 0  # download: none inventories the raw folders
    assert run_ingest(p, "mine", threads=1) == 0
    run_preprocess(p, "mine")
    run_split(p, "mine")
    # the evaluation's report and memorisation audit name training cases: samples that copy them
    train = (work / "data/splits/mine/train.txt").read_text().split()
    for i in range(4):
        cube = sitk.GetArrayFromImage(sitk.ReadImage(str(work / f"data/processed/mine/16/{train[0]}.nii.gz")))
        noisy = cube + 0.01 * i * np.random.default_rng(i).normal(size=cube.shape)
        write_nifti(work / f"samples/mine/16/{i}.nii.gz", unit_to_hu(noisy, p.preprocess.window), (16.0,) * 3)
    run_evaluate(params_with({**p.raw, "evaluate": {"bootstrap": 5, "ms_ssim_pairs": 2}}), "mine", 16)
    assert any(train[0] in f.read_text(errors="ignore") for f in (work / "reports").rglob("*") if f.is_file())

    assert (work / "mlflow.db").is_file()
    assert list(work.rglob("artifacts/series.csv"))  # the MLflow artifact store is searched too
    interim = work / "data/interim/mine"
    allowed = {
        interim / pseudonyms.IDENTIFIERS,
        interim / pseudonyms.IDENTIFIERS_SERIES,
        work / "data/raw/mine/manifest.csv",  # the raw input's own inventory (its folder names)
    }
    leaks = []
    for path in sorted(work.rglob("*")):
        if not path.is_file() or path in allowed:
            continue
        if path.name.startswith("dicom-headers") or path.name == "inputs.sha256.json":
            # ingest's cache of what the raw input is (headers; file paths and hashes): project state
            assert path.relative_to(work).parts[:2] == (".prdit", "cache")
            continue
        data = _text(path)
        leaks += [f"{path.relative_to(work)}: {s}" for s in secrets if s.encode() in data]
    for record in caplog.records:
        leaks += [f"log: {record.getMessage()}" for s in secrets if s in record.getMessage()]
    assert not leaks, leaks
    qc = pd.read_csv(interim / "qc.csv", keep_default_na=False)
    assert len(qc) == 4 and (qc["status"] == "ok").sum() == 2
    assert all(c.startswith("case-") for c in qc["case"])
    assert all(pid.startswith("patient-") for pid in qc["patient_id"])
    # the mapping, beside the interim data only
    ids = pd.read_csv(interim / pseudonyms.IDENTIFIERS, keep_default_na=False)
    assert sorted(ids["source_patient_id"]) == MRNS
    assert set(ids["case"]) == set(qc["case"])
    skipped = pd.read_csv(interim / pseudonyms.IDENTIFIERS_SERIES, keep_default_na=False)
    assert f"{UID_ROOT}.778899.3" in set(skipped["series_uid"])
    # the split still groups by patient, now by the patient pseudonym
    listed = [
        c for s in ("train", "val", "test") for c in (work / f"data/splits/mine/{s}.txt").read_text().split()
    ]
    assert sorted(listed) == sorted(qc.loc[qc["status"] == "ok", "case"])

    key = work / ".prdit/pseudonym.key"
    assert len(key.read_bytes()) == 32 and stat.S_IMODE(key.stat().st_mode) == 0o600

    # deterministic for the project: a second ingest names every case the same
    again = pd.read_csv(interim / "qc.csv", keep_default_na=False)
    assert run_ingest(p, "mine", threads=1) == 0
    assert list(pd.read_csv(interim / "qc.csv", keep_default_na=False)["case"]) == list(again["case"])


def test_sharded_ingest_keeps_the_mapping(tmp_path, monkeypatch):
    """--write-plan, shard jobs and the assembly (as Snakemake runs them) name the cases the same."""
    raw = tmp_path / "raw"
    secrets = build(raw)
    monkeypatch.chdir(tmp_path)
    p = params_with({**params(raw).raw, "ingest": {**params(raw).raw["ingest"], "shards": 2}})
    plan = tmp_path / "plan.json"
    assert write_plan(p, "mine", plan) == 0
    for shard in (0, 1):
        assert run_ingest(p, "mine", shard=shard, plan_file=plan) == 0
    assert run_ingest(p, "mine", plan_file=plan) == 0
    interim = tmp_path / "data/interim/mine"
    sharded = pd.read_csv(interim / "qc.csv", keep_default_na=False)
    ids = pd.read_csv(interim / pseudonyms.IDENTIFIERS, keep_default_na=False)
    assert set(ids["case"]) == set(sharded["case"]) and sorted(ids["source_patient_id"]) == MRNS
    for name in ("qc.csv", "series.csv"):
        assert not [s for s in secrets if s in (interim / name).read_text()], name
    assert run_ingest(p, "mine") == 0  # without shards: the same names
    assert list(pd.read_csv(interim / "qc.csv", keep_default_na=False)["case"]) == list(sharded["case"])


def test_case_ids_modes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert pseudonymised(params(tmp_path), "mine")  # your own DICOM
    assert not pseudonymised(params(tmp_path, case_ids="source"), "mine")  # asked for
    lidc = params_with(
        {"sources": {"mine": {"format": "dicom", "path": "data/raw/mine", "download": "lidc-idri"}}}
    )
    assert not pseudonymised(lidc, "mine")  # public pseudonyms; the paper split follows them
    assert not pseudonymised(params_with(), "phantom")
    assert pseudonyms.mode("auto", "none", "nifti") == "source"  # a file export names its own cases
    assert pseudonyms.mode("pseudonym", "lidc-idri", "dicom") == "pseudonym"
    ps = pseudonyms.Pseudonyms(pseudonyms.load_key(paths.pseudonym_key()))
    other = pseudonyms.Pseudonyms(bytes(32))
    assert ps.case("MRN-1", "1.2") == pseudonyms.Pseudonyms(pseudonyms.load_key(paths.pseudonym_key())).case(
        "MRN-1", "1.2"
    )
    assert ps.case("MRN-1", "1.2") != other.case("MRN-1", "1.2") != ps.case("MRN-1", "1.3")


def test_source_ids_on_request(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    build(raw)
    monkeypatch.chdir(tmp_path)
    assert run_ingest(params(raw, case_ids="source"), "mine") == 0
    qc = pd.read_csv(tmp_path / "data/interim/mine/qc.csv", keep_default_na=False)
    assert sorted(qc["case"]) == MRNS
    assert not (tmp_path / "data/interim/mine" / pseudonyms.IDENTIFIERS).exists()


@pytest.mark.parametrize("size", [31, 0])
def test_a_damaged_key_stops(tmp_path, size):
    key = tmp_path / "k"
    key.write_bytes(b"x" * size)
    with pytest.raises(Exception, match="not a pseudonym key"):
        pseudonyms.load_key(key)
