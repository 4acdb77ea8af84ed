"""`prdit fetch-weights` against an HTTP server this test runs on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path

import pytest

from prdit.evaluate.fetch import FetchError, run_fetch_weights
from tests.conftest import ROOT, make_project, tool_env

PAYLOAD = b"MedicalNet stand-in " * 5000


class _Handler(http.server.BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self):  # noqa: N802
        type(self).hits += 1
        if self.path != "/resnet_50.pth":
            self.send_error(404, "no such file")
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        self.wfile.write(PAYLOAD)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Handler.hits = 0
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


SHA = hashlib.sha256(PAYLOAD).hexdigest()


def test_download_verifies_and_places_the_file(server, tmp_path):
    out = tmp_path / "models" / "resnet_50.pth"
    assert run_fetch_weights(f"{server}/resnet_50.pth", out, SHA) == out
    assert out.read_bytes() == PAYLOAD
    run_fetch_weights(f"{server}/resnet_50.pth", out, SHA.upper())  # present and verified: no second download
    assert _Handler.hits == 1
    assert [p.name for p in out.parent.iterdir()] == ["resnet_50.pth"]


def test_wrong_checksum_leaves_no_file(server, tmp_path):
    out = tmp_path / "resnet_50.pth"
    with pytest.raises(FetchError, match="sha256 mismatch"):
        run_fetch_weights(f"{server}/resnet_50.pth", out, "0" * 64)
    assert list(tmp_path.iterdir()) == []


def test_http_error_and_unreachable_host_are_clear(server, tmp_path):
    with pytest.raises(FetchError, match="HTTP 404"):
        run_fetch_weights(f"{server}/missing.pth", tmp_path / "w.pth", SHA)
    with pytest.raises(FetchError, match="download failed"):
        run_fetch_weights("http://127.0.0.1:9/w.pth", tmp_path / "w.pth", SHA, timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_without_checksum_the_file_is_kept_and_reported(server, tmp_path, caplog):
    out = run_fetch_weights(f"{server}/resnet_50.pth", Path(tmp_path / "w.pth"), None)
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
                    "url": f"{server}/resnet_50.pth",
                }
            }
        )
    )
    assert main(["fetch-weights", "--params", str(ROOT / "params.yaml"), "--params", str(override)]) == 0
    assert (tmp_path / "models/medicalnet/resnet_50.pth").read_bytes() == PAYLOAD
    override.write_text(
        yaml.safe_dump(
            {"evaluate": {"weights": "w.pth", "sha256": "1" * 64, "url": f"{server}/resnet_50.pth"}}
        )
    )
    assert main(["fetch-weights", "--params", str(ROOT / "params.yaml"), "--params", str(override)]) == 1
    assert "sha256 mismatch" in capsys.readouterr().err  # a clear one-line error, no traceback
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
        {"evaluate": {"weights": weights, "url": f"{server}/resnet_50.pth", "sha256": SHA}},
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
    hits = _Handler.hits
    assert "Nothing to be done" in snakemake(weights)
    assert _Handler.hits == hits and "rule fetch_weights:" not in snakemake("-n", "all")
