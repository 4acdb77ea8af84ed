"""download: none — the user's own data is inventoried into data/raw/<ds>/manifest.csv, never touched."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from prdit.acquire.http import DownloadError
from prdit.stages.download import run as run_download
from tests.support.project import params_with


def params_for(path: Path):
    return params_with(
        {
            "datasets": ["mine"],
            "sources": {"mine": {"format": "nifti", "path": str(path), "download": "none"}},
        },
    )


def test_user_data_is_inventoried_not_modified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "elsewhere"
    (data / "a").mkdir(parents=True)
    (data / "a" / "x.nii.gz").write_bytes(b"1234")
    (data / "b.nii.gz").write_bytes(b"12")
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in data.rglob("*") if p.is_file()}
    assert run_download(params_for(data), "mine") == 0
    manifest = tmp_path / "data/raw/mine/manifest.csv"
    rows = {r["series"]: r for r in csv.DictReader(open(manifest))}
    assert rows["a"]["files"] == "1" and rows["a"]["bytes"] == "4"
    assert rows["."]["files"] == "1" and rows["."]["bytes"] == "2"
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in data.rglob("*") if p.is_file()} == before
    first = manifest.read_text()
    (data / "a" / "x.nii.gz").write_bytes(
        b"12345"
    )  # a changed input changes the manifest: downstream re-runs
    run_download(params_for(data), "mine")
    assert manifest.read_text() != first
    os.utime(data / "b.nii.gz", ns=(1, 1))
    again = manifest.read_text()
    run_download(params_for(data), "mine")
    assert manifest.read_text() != again


def test_missing_or_empty_user_data_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DownloadError, match="does not exist"):
        run_download(params_for(tmp_path / "nope"), "mine")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DownloadError, match="no files found"):
        run_download(params_for(tmp_path / "empty"), "mine")
