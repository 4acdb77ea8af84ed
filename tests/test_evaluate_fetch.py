"""`prdit fetch-weights` against an HTTP server this test runs on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path

import pytest

from prdit.evaluate.fetch import FetchError, run_fetch_weights

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
    monkeypatch.setenv("PRDIT_TRACKING", "off")
    root = Path(__file__).resolve().parent.parent
    override = tmp_path / "weights.yaml"
    override.write_text(yaml.safe_dump({"evaluate": {"weights": "models/medicalnet/resnet_50.pth", "sha256": SHA,
                                                     "url": f"{server}/resnet_50.pth"}}))
    assert main(["fetch-weights", "--params", str(root / "params.yaml"), "--params", str(override)]) == 0
    assert (tmp_path / "models/medicalnet/resnet_50.pth").read_bytes() == PAYLOAD
    override.write_text(yaml.safe_dump({"evaluate": {"weights": "w.pth", "sha256": "1" * 64,
                                                     "url": f"{server}/resnet_50.pth"}}))
    assert main(["fetch-weights", "--params", str(root / "params.yaml"), "--params", str(override)]) == 1
    assert "sha256 mismatch" in capsys.readouterr().err  # a clear one-line error, no traceback
    assert not (tmp_path / "w.pth").exists()
