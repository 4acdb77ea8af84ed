"""Fixtures of the download tests: real CT series, a project folder for the CLI, and fake TCIA / Zenodo
services serving them (tests/support/fake_servers.py)."""

from __future__ import annotations

import pytest

from prdit.acquire import http
from tests.support.downloads import npz_bytes
from tests.support.fake_servers import FakeServer, ct_series_files
from tests.support.project import ROOT


@pytest.fixture(scope="module")
def dicom(tmp_path_factory) -> dict[str, dict[str, bytes]]:
    """Four small real CT series, keyed by series UID."""
    tmp = tmp_path_factory.mktemp("dicom")
    out = {}
    for i in range(4):
        patient, study, series = f"LIDC-IDRI-{i + 1:04d}", f"1.3.6.1.4.1.9328.{i}", f"1.3.6.1.4.1.9328.{i}.1"
        out[series] = {
            "patient": patient,
            "study": study,
            "files": ct_series_files(tmp, patient, study, series, seed=i),
        }
    return out


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PRDIT_TRACKING", "off")
    monkeypatch.setattr(http, "BACKOFF_S", 0.01)
    monkeypatch.delenv("ZENODO_TOKEN", raising=False)
    monkeypatch.delenv("ZENODO_SHARE_TOKEN", raising=False)
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())  # a project root for the CLI
    return tmp_path


@pytest.fixture
def server(dicom):
    with FakeServer() as srv:
        for uid, s in dicom.items():
            srv.add_series(s["patient"], s["study"], uid, s["files"])
        yield srv


@pytest.fixture
def zenodo(server):
    for i in range(3):
        server.add_file(f"trn{i + 1:05d}.npz", npz_bytes(i))
    server.add_file("Summary_3.csv", b"VolumeAcc,Split\ntrn00001,train\n")
    return server
