"""`prdit fetch-weights` through the acquisition client, against a weights host this test runs on 127.0.0.1."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from prdit.acquire import http
from prdit.acquire.weights import fetch_weights
from tests.support.fake_servers import FakeServer
from tests.support.project import ROOT, make_project, tool_env

PAYLOAD = b"MedicalNet stand-in " * 5000
SHA = hashlib.sha256(PAYLOAD).hexdigest()
FAST = http.RetryPolicy(retries=1, backoff_s=0.01)


class _Weights:
    """The fake's weights host, with the URL of the one published file and a count of its requests."""

    def __init__(self, srv: FakeServer):
        self.srv = srv
        self.url = f"{srv.weights_url}/resnet_50.pth"

    @property
    def hits(self) -> int:
        return len(self.srv.requests(target="resnet_50.pth"))

    def __str__(self) -> str:
        return self.srv.weights_url


@pytest.fixture
def server():
    with FakeServer() as srv:
        srv.weights["resnet_50.pth"] = PAYLOAD
        yield _Weights(srv)


def test_download_verifies_and_places_the_file(server, tmp_path):
    out = tmp_path / "models" / "resnet_50.pth"
    assert fetch_weights(server.url, out, SHA) == out
    assert out.read_bytes() == PAYLOAD
    fetch_weights(server.url, out, SHA.upper())  # present and verified: no second download
    assert server.hits == 1
    assert [p.name for p in out.parent.iterdir()] == ["resnet_50.pth"]


def test_wrong_checksum_leaves_no_file(server, tmp_path):
    out = tmp_path / "resnet_50.pth"
    with pytest.raises(http.DownloadError, match="checksum mismatch"):
        fetch_weights(server.url, out, "0" * 64, policy=FAST)
    assert list(tmp_path.iterdir()) == []


def test_a_partial_file_is_resumed_where_the_host_allows(server, tmp_path):
    out = tmp_path / "resnet_50.pth"
    http.part_path(out).write_bytes(PAYLOAD[:40000])  # left by a dropped connection or Ctrl-C
    fetch_weights(server.url, out, SHA)
    [req] = server.srv.requests(target="resnet_50.pth")
    assert (req.range, req.status, req.sent) == ("bytes=40000-", 206, len(PAYLOAD) - 40000)
    assert out.read_bytes() == PAYLOAD and not http.part_path(out).exists()


def test_dropped_connection_is_retried(server, tmp_path, monkeypatch):
    monkeypatch.setattr(http, "BACKOFF_S", 0.01)
    server.srv.fault("resnet_50.pth", "drop", "503")
    out = fetch_weights(server.url, tmp_path / "w.pth", SHA)
    assert out.read_bytes() == PAYLOAD
    assert [r.status for r in server.srv.requests(target="resnet_50.pth")] == [200, 503, 206]


def test_http_error_and_unreachable_host_are_clear(server, tmp_path):
    with pytest.raises(http.DownloadError, match="HTTP 404"):
        fetch_weights(f"{server}/missing.pth", tmp_path / "w.pth", SHA, policy=FAST)
    with pytest.raises(http.DownloadError, match="giving up after 1 retries: connection failed"):
        fetch_weights("http://127.0.0.1:9/w.pth", tmp_path / "w.pth", SHA, policy=FAST)
    assert list(tmp_path.iterdir()) == []


def test_without_checksum_the_file_is_kept_and_reported(server, tmp_path, caplog):
    out = fetch_weights(server.url, Path(tmp_path / "w.pth"), None)
    assert out.read_bytes() == PAYLOAD
    assert SHA in caplog.text


def test_cli_fetch_weights_reads_url_path_and_checksum_from_params(server, tmp_path, monkeypatch, capsys):
    import yaml

    from prdit.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())  # a project root
    override = tmp_path / "weights.yaml"
    override.write_text(
        yaml.safe_dump(
            {
                "evaluate": {
                    "weights": "models/medicalnet/resnet_50.pth",
                    "sha256": SHA,
                    "url": server.url,
                }
            }
        )
    )
    assert main(["fetch-weights", "--params", str(ROOT / "params.yaml"), "--params", str(override)]) == 0
    assert (tmp_path / "models/medicalnet/resnet_50.pth").read_bytes() == PAYLOAD
    override.write_text(
        yaml.safe_dump({"evaluate": {"weights": "w.pth", "sha256": "1" * 64, "url": server.url}})
    )
    assert main(["fetch-weights", "--params", str(ROOT / "params.yaml"), "--params", str(override)]) == 1
    err = capsys.readouterr().err.strip()
    assert "checksum mismatch" in err and len(err.splitlines()) == 1  # a clear one-line error, no traceback
    assert not (tmp_path / "w.pth").exists()


def test_snakemake_fetches_configured_weights_once_and_protects_them(server, tmp_path):
    """With evaluate.weights set and absent, the DAG downloads it (rule fetch_weights, a local rule)
    before evaluation; the file is write-protected and a second run leaves it alone."""
    import os
    import stat
    import subprocess

    weights = "models/medicalnet/w.pth"
    project = make_project(
        tmp_path / "project",
        {"evaluate": {"weights": weights, "url": server.url, "sha256": SHA}},
    )

    def snakemake(*args: str) -> str:
        res = subprocess.run(
            ["snakemake", "--cores", "1", *args],
            cwd=project,
            capture_output=True,
            text=True,
            env=tool_env(PRDIT_TRACKING="off"),
        )
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        return res.stdout + res.stderr

    plan = snakemake("-n", "all")
    assert "rule fetch_weights:" in plan  # the evaluations depend on it
    out = snakemake(weights)
    assert "localrule fetch_weights:" in out  # on the submit host, like download
    path = project / weights
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SHA
    assert not os.stat(path).st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)  # protected
    hits = server.hits
    assert "Nothing to be done" in snakemake(weights)
    assert server.hits == hits and "rule fetch_weights:" not in snakemake("-n", "all")
