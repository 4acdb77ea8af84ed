"""Splits are patient-level, deterministic, independent of file order, and keep a training patient."""

from __future__ import annotations

import pandas as pd
import pytest

from prdit.data.splits import assign
from prdit.stages.split import run as run_split
from tests.support.project import params_with


def test_assign_counts_and_determinism():
    patients = [f"P{i:03d}" for i in range(50)]
    a = assign(patients, seed=0, val_fraction=0.2, test_fraction=0.1)
    assert a == assign(list(reversed(patients)), seed=0, val_fraction=0.2, test_fraction=0.1)
    counts = pd.Series(a).value_counts()
    assert (counts["train"], counts["val"], counts["test"]) == (35, 10, 5)
    assert a != assign(patients, seed=1, val_fraction=0.2, test_fraction=0.1)


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_small_datasets_keep_training_data(n):
    split = assign([f"p{i}" for i in range(n)], seed=0, val_fraction=0.2, test_fraction=0.2)
    values = list(split.values())
    assert "train" in values
    if n >= 3:
        assert "val" in values and "test" in values


def test_adding_patients_moves_few(tmp_path):
    base = assign([f"p{i}" for i in range(100)], 0, 0.2, 0.2)
    more = assign([f"p{i}" for i in range(110)], 0, 0.2, 0.2)
    moved = sum(base[k] != more[k] for k in base)
    assert moved <= 10


def test_run_split_is_patient_level(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    qc = tmp_path / "data" / "processed" / "d" / "qc.csv"
    qc.parent.mkdir(parents=True)
    rows = [{"case": f"c{i}", "patient_id": f"p{i // 2}", "status": "ok"} for i in range(20)]
    rows.append({"case": "bad", "patient_id": "p99", "status": "rejected"})
    pd.DataFrame(rows).to_csv(qc, index=False)
    p = params_with(
        {"sources": {"d": {"format": "dicom", "path": "x", "download": "none"}}},
    )
    run_split(p, "d")
    out = tmp_path / "data" / "splits" / "d"
    parts = {s: (out / f"{s}.txt").read_text().split() for s in ("train", "val", "test")}
    everything = sum(parts.values(), [])
    assert sorted(everything) == sorted(f"c{i}" for i in range(20))  # rejected cases never appear
    for _s, cases in parts.items():
        for c in cases:
            twin = f"c{int(c[1:]) ^ 1}"
            assert twin in cases  # both cases of a patient in the same split
    first = {s: (out / f"{s}.txt").read_bytes() for s in parts}
    run_split(p, "d")
    assert first == {s: (out / f"{s}.txt").read_bytes() for s in parts}
