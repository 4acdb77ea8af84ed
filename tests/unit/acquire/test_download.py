"""`prdit download` against local fakes of TCIA's NBIA API and Zenodo's REST API that behave like the real
services (no Range on NBIA, Range ignored by Zenodo's content endpoint, 400 for unknown parameters,
restricted records), with injected faults."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from prdit import config
from prdit.acquire import archive, http, tcia
from prdit.stages.download import run as run_download
from tests.support.downloads import MANIFEST_HEADER, TCIA_OUT, ZEN_OUT, load, manifest, npz_bytes, overrides
from tests.support.fake_servers import FakeServer, zip_bytes
from tests.support.project import ROOT, params_with


def stray_files(root: Path) -> list[Path]:
    """Files that look complete but are not part of a verified series/file (anything but .part/manifest)."""
    return [
        p
        for p in root.rglob("*")
        if p.is_file() and not p.name.endswith(".part") and p.name != "manifest.csv"
    ]


# ---------------------------------------------------------------------------------------------------
# TCIA
# ---------------------------------------------------------------------------------------------------


def test_tcia_downloads_then_rerun_only_lists(env, server, dicom):
    p = load(server)
    assert run_download(p, "lidc-idri") == 0
    rows = manifest(TCIA_OUT)
    assert set(rows) == set(dicom)
    for uid, s in dicom.items():
        folder = TCIA_OUT / s["patient"] / s["study"] / uid
        assert sorted(f.name for f in folder.iterdir()) == sorted(s["files"])
        assert all((folder / name).read_bytes() == data for name, data in s["files"].items())
        assert rows[uid]["status"] == "ok" and rows[uid]["files"] == "20"
        assert rows[uid]["checksum"].startswith("sha256:")
    assert not (TCIA_OUT / ".download").exists()

    uid = sorted(dicom)[0]
    stale = TCIA_OUT / dicom[uid]["patient"] / dicom[uid]["study"] / f".{uid}.x1y2.tmp"  # a killed extraction
    stale.mkdir()
    (stale / "1-001.dcm").write_bytes(b"half")
    assert {r.path.rsplit("/", 1)[1] for r in server.log} == {"getSeries", "getImageWithMD5Hash"}
    n = len(server.log)
    assert run_download(p, "lidc-idri") == 0
    assert [r.path.rsplit("/", 1)[1] for r in server.log[n:]] == ["getSeries"]
    assert not stale.exists()

    (TCIA_OUT / "manifest.csv").unlink()  # lost manifest: rebuilt from the files, still no download
    n = len(server.log)
    assert run_download(p, "lidc-idri") == 0
    assert [r.path.rsplit("/", 1)[1] for r in server.log[n:]] == ["getSeries"]
    assert manifest(TCIA_OUT) == rows


def test_tcia_transient_faults_are_retried(env, server, dicom):
    uids = sorted(dicom)
    server.fault(uids[0], "drop", "drop")
    server.fault(uids[1], "429")
    server.fault(uids[2], "500", "503")
    server.fault(uids[3], "drop", "429")
    assert run_download(load(server), "lidc-idri") == 0
    rows = manifest(TCIA_OUT)
    assert all(rows[u]["status"] == "ok" for u in uids)
    # NBIA builds the zip per request and ignores Range: a dropped series is asked for whole again
    zip_size = len(server.series_zip(uids[0], md5=True))
    got = server.requests("getImage", uids[0])
    assert [(r.range, r.status) for r in got] == [(None, 200)] * 3
    assert [r.sent < zip_size for r in got] == [True, True, False]
    # 429: the client waited at least Retry-After before asking again
    t429, t_next = (r.t for r in server.requests("getImage", uids[1]))
    assert t_next - t429 >= server.retry_after * 0.95
    assert [r.status for r in server.requests("getImage", uids[2])] == [500, 503, 200]
    assert [r.status for r in server.requests("getImage", uids[3])] == [200, 429, 200]
    for uid in (uids[0], uids[3]):
        s = dicom[uid]
        folder = TCIA_OUT / s["patient"] / s["study"] / uid
        assert {f.name: f.read_bytes() for f in folder.iterdir()} == s["files"]


@pytest.mark.parametrize(
    "fault, why",
    [("truncate", "not a readable zip archive"), ("bad-md5", "MD5 mismatch for 1 image(s), e.g. 1-001.dcm")],
)
def test_tcia_bad_archive_is_fetched_once_more_then_failed(env, server, dicom, fault, why):
    once, always = sorted(dicom)[:2]
    server.fault(once, fault)
    server.fault(always, fault, fault)
    assert run_download(load(server), "lidc-idri") == 1
    rows = manifest(TCIA_OUT)
    assert rows[once]["status"] == "ok" and len(server.requests("getImage", once)) == 2
    assert rows[always]["status"] == "failed"
    assert always in rows[always]["message"] and why in rows[always]["message"]
    assert "Traceback" not in rows[always]["message"] and "\n" not in rows[always]["message"]
    assert not (TCIA_OUT / dicom[always]["patient"]).exists()
    assert sum(r["status"] == "ok" for r in rows.values()) == 3  # the failure did not stop the others
    assert not list(TCIA_OUT.rglob("*.zip*"))
    # md5hashes.csv served its purpose: a series folder holds only the images
    s = dicom[once]
    assert sorted(f.name for f in (TCIA_OUT / s["patient"] / s["study"] / once).iterdir()) == sorted(
        s["files"]
    )
    # the next run fetches only the failed series
    n = len(server.log)
    assert run_download(load(server), "lidc-idri") == 0
    assert {r.query.get("SeriesInstanceUID") for r in server.log[n:] if "getImage" in r.path} == {always}


@pytest.mark.parametrize(
    "entries, links, why",
    [
        ({"1-001.dcm": b"x", "../../escaped.dcm": b"evil"}, None, "'..'"),
        ({"1-001.dcm": b"x", "/tmp/prdit-escaped-abs.dcm": b"evil"}, None, "absolute"),
        ({"1-001.dcm": b"x", "C:\\escaped.dcm": b"evil"}, None, "absolute"),
        ({"1-001.dcm": b"x"}, {"link.dcm": "../../../etc/passwd"}, "link pointing outside"),
    ],
)
def test_tcia_unsafe_archive_is_refused(env, server, dicom, entries, links, why):
    uid = sorted(dicom)[0]
    s = dicom[uid]
    server.add_series(
        s["patient"], s["study"], uid, entries, image_count=None, zip_data=zip_bytes(entries, links)
    )
    assert run_download(load(server), "lidc-idri") == 1
    rows = manifest(TCIA_OUT)
    assert rows[uid]["status"] == "failed" and why in rows[uid]["message"] and uid in rows[uid]["message"]
    assert sum(r["status"] == "ok" for r in rows.values()) == 3
    assert not (TCIA_OUT / s["patient"]).exists()
    assert not list(env.rglob("escaped*")) and not Path("/tmp/prdit-escaped-abs.dcm").exists()
    assert [r.status for r in server.requests("getImage", uid)] == [200]  # refused for good, not re-fetched


def test_archive_link_inside_is_skipped(tmp_path):
    z = tmp_path / "a.zip"
    z.write_bytes(zip_bytes({"d/1.dcm": b"one", "2.dcm": b"two"}, {"d/l.dcm": "../2.dcm"}))
    got = archive.extract(z, tmp_path / "out")
    assert got.files == [Path("2.dcm"), Path("d/1.dcm")] and got.bytes == 6
    assert not (tmp_path / "out" / "d" / "l.dcm").exists()


def test_archive_crc_damage_is_detected(tmp_path):
    data = bytearray(zip_bytes({"1.dcm": b"A" * 5000}))
    z = tmp_path / "a.zip"
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        start = zf.infolist()[0].header_offset + 30 + len("1.dcm")
    data[start + 2] ^= 0xFF
    z.write_bytes(bytes(data))
    with pytest.raises(archive.DamagedArchiveError):
        archive.extract(z, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_tcia_image_count_must_match_listing(env, server, dicom):
    uid = sorted(dicom)[1]
    server.series[uid]["ImageCount"] = 25
    assert run_download(load(server), "lidc-idri") == 1
    row = manifest(TCIA_OUT)[uid]
    assert row["status"] == "failed" and "20 DICOM files" in row["message"] and "25" in row["message"]


def test_tcia_empty_archive_fails(env, server, dicom):
    uid = sorted(dicom)[0]
    server.series[uid]["zip"] = zip_bytes({})
    server.series[uid]["ImageCount"] = None
    assert run_download(load(server), "lidc-idri") == 1
    row = manifest(TCIA_OUT)[uid]
    assert row["status"] == "failed" and "no DICOM files" in row["message"]
    assert not (TCIA_OUT / dicom[uid]["patient"]).exists()


def test_tcia_gives_up_after_retries(env, server, dicom):
    uid = sorted(dicom)[2]
    server.fault(uid, *["503"] * 10)
    assert run_download(load(server, tcia={"retries": 2}), "lidc-idri") == 1
    row = manifest(TCIA_OUT)[uid]
    assert (
        row["status"] == "failed"
        and "giving up after 2 retries" in row["message"]
        and "503" in row["message"]
    )
    assert len(server.requests("getImage", uid)) == 3


def test_tcia_patients_and_limit(env, server, dicom):
    patients = ["LIDC-IDRI-0002", "LIDC-IDRI-0004", "LIDC-IDRI-9999"]
    assert run_download(load(server), "lidc-idri", patients=patients) == 1  # the unknown patient fails
    listed = [r.query.get("PatientID") for r in server.requests("getSeries")]
    assert listed == patients
    rows = manifest(TCIA_OUT)
    ok = sorted(r["patient"] for r in rows.values() if r["status"] == "ok")
    assert ok == ["LIDC-IDRI-0002", "LIDC-IDRI-0004"]
    assert any(r["status"] == "failed" and "LIDC-IDRI-9999" in r["message"] for r in rows.values())

    n = len(server.log)
    assert run_download(load(server, tcia={"limit": 3}), "lidc-idri", patients=[]) == 0
    fetched = {r.query["SeriesInstanceUID"] for r in server.log[n:] if "getImage" in r.path}
    assert {dicom[u]["patient"] for u in fetched} == {"LIDC-IDRI-0001", "LIDC-IDRI-0003"}  # 0002 was there


def test_tcia_killed_series_restarts_and_finished_ones_stay(env, server, dicom):
    """A series zip cut off by a kill is fetched again from its first byte; the others are never asked for."""
    assert run_download(load(server), "lidc-idri") == 0
    uid = sorted(dicom)[1]
    s = dicom[uid]
    folder = TCIA_OUT / s["patient"] / s["study"] / uid
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()  # as if the run had been killed before extracting this series
    part = TCIA_OUT / tcia.STAGING / f"{uid}.zip.part"
    part.parent.mkdir()
    part.write_bytes(server.series_zip(uid, md5=True)[:5000])
    n = len(server.log)
    assert run_download(load(server), "lidc-idri") == 0
    again = [r for r in server.log[n:] if "getImage" in r.path]
    assert [(r.query["SeriesInstanceUID"], r.range, r.status) for r in again] == [(uid, None, 200)]
    assert again[0].sent == len(server.series_zip(uid, md5=True))
    assert {f.name: f.read_bytes() for f in folder.iterdir()} == s["files"]
    assert not part.parent.exists()


def test_tcia_without_md5_uses_getimage(env, server, dicom):
    assert run_download(load(server, tcia={"md5": False, "limit": 1}), "lidc-idri") == 0
    got = server.requests("getImage")
    assert [r.path.rsplit("/", 1)[1] for r in got] == ["getImage"]
    assert got[0].query == {"SeriesInstanceUID": sorted(dicom)[0], "NewFileNames": "Yes"}


def test_nbia_answers_400_with_a_reason_that_reaches_the_user(server):
    """Like the real NBIA, the fake refuses unknown parameters; the client names the server's reason."""
    url = server.tcia_url + "/getSeries"
    with pytest.raises(http.HTTPStatusError, match="HTTP 400.*Unrecognized parameter.*Colection") as err:
        http.get_json(url, params={"Colection": "LIDC-IDRI"}, what="listing")
    assert err.value.status == 400 and "\n" not in str(err.value)
    with pytest.raises(http.HTTPStatusError, match="not in public domain"):
        http.get_json(server.tcia_url + "/getImage", params={"SeriesInstanceUID": "1.2.3"}, what="x")


def test_a_share_token_never_reaches_messages(tmp_path):
    """requests quotes the URL, query included, in its errors; those go to logs and manifest.csv."""
    dead = "http://127.0.0.1:9/api/records/1/files"
    fast = http.RetryPolicy(retries=0)
    with pytest.raises(http.DownloadError) as listing:
        http.get_json(dead, params={"token": "s3cret-link"}, policy=fast, what="listing")
    with pytest.raises(http.DownloadError) as content:
        http.download(
            dead + "/a/content",
            tmp_path / "a",
            request=http.Request(params={"token": "s3cret-link"}),
            policy=fast,
        )
    for err in (listing, content):
        assert "token=***" in str(err.value) and "s3cret-link" not in str(err.value)


def test_tcia_manifest_selects_the_series(env, server, dicom):
    uids = sorted(dicom)
    server.add_series(
        "LIDC-IDRI-0001",
        dicom[uids[0]]["study"],
        "1.3.6.1.4.1.9328.0.2",
        dicom[uids[0]]["files"],
        modality="DX",
    )
    cohort = env / "cohort.tcia"
    cohort.write_text(MANIFEST_HEADER + f"{uids[1]}\n1.3.6.1.4.1.9328.0.2\n\n{uids[3]}\n9.9.9\n{uids[1]}\n")
    assert run_download(load(server), "lidc-idri", manifest=cohort) == 1  # 9.9.9 is not in the collection
    fetched = {r.query["SeriesInstanceUID"] for r in server.requests("getImage")}
    assert fetched == {uids[1], uids[3], "1.3.6.1.4.1.9328.0.2"}  # the manifest decides, DX included
    listing = server.requests("getSeries")
    assert [r.query for r in listing] == [{"Collection": "LIDC-IDRI"}]
    rows = manifest(TCIA_OUT)
    assert rows["9.9.9"]["status"] == "failed" and "cohort.tcia" in rows["9.9.9"]["message"]
    assert sorted(u for u, r in rows.items() if r["status"] == "ok") == sorted(fetched)

    p = load(server, tcia={"manifest": str(cohort)})  # the same from params.yaml; a finished series stays
    n = len(server.log)
    assert run_download(p, "lidc-idri") == 1
    assert not [r for r in server.log[n:] if "getImage" in r.path]


@pytest.mark.parametrize(
    "text, why",
    [
        ("downloadServerUrl=x\n1.2.3\n", "no 'ListOfSeriesToDownload=' line"),
        (MANIFEST_HEADER, "lists no series"),
        (MANIFEST_HEADER + "../../etc\nSeries UID\n", "lists no series"),  # non-UID lines only
    ],
)
def test_bad_tcia_manifest_is_one_clear_line(env, server, text, why):
    cohort = env / "bad.tcia"
    cohort.write_text(text)
    with pytest.raises(tcia.ManifestError, match=why) as err:
        run_download(load(server), "lidc-idri", manifest=cohort)
    assert str(cohort) in str(err.value) and not server.log


def test_tcia_manifest_for_another_source_is_refused(env, zenodo):
    cohort = env / "cohort.tcia"
    cohort.write_text(MANIFEST_HEADER + "1.2.3\n")
    with pytest.raises(tcia.ManifestError, match="selects TCIA series, not rad-chestct"):
        run_download(load(zenodo), "rad-chestct", manifest=cohort)
    assert not zenodo.log


def test_disk_space_is_checked_before_downloading(env, server, dicom):
    for s in server.series.values():
        s["FileSize"] = 10**17  # 100 PB each
    with pytest.raises(http.DownloadError, match="not enough disk space"):
        run_download(load(server), "lidc-idri")
    assert not server.requests("getImage")


# ---------------------------------------------------------------------------------------------------
# Zenodo
# ---------------------------------------------------------------------------------------------------


def test_zenodo_faults_and_rerun(env, zenodo):
    zenodo.fault("trn00001.npz", "drop", "429")
    zenodo.fault("trn00002.npz", "500", "drop", "503")
    assert run_download(load(zenodo), "rad-chestct") == 0
    rows = manifest(ZEN_OUT)
    assert set(rows) == set(zenodo.files)
    for key, data in zenodo.files.items():
        assert (ZEN_OUT / key).read_bytes() == data
        assert rows[key]["checksum"] == "md5:" + hashlib.md5(data).hexdigest() and rows[key]["status"] == "ok"
    assert rows["trn00001.npz"]["patient"] == "trn00001"
    # the client asks for the rest with Range; Zenodo sends the whole file again, which is written whole
    got = zenodo.requests(target="trn00002.npz")
    assert [r.status for r in got] == [500, 200, 503, 200]
    assert (
        got[1].range is None
        and got[3].range.startswith("bytes=")
        and got[3].sent == len(zenodo.files["trn00002.npz"])
    )

    n = len(zenodo.log)
    assert run_download(load(zenodo), "rad-chestct") == 0
    assert [r.path for r in zenodo.log[n:]] == [f"/api/records/{zenodo.record}"]


def test_zenodo_wrong_checksum(env, zenodo):
    zenodo.published_checksum["trn00002.npz"] = "md5:" + "0" * 32
    assert run_download(load(zenodo), "rad-chestct") == 1
    row = manifest(ZEN_OUT)["trn00002.npz"]
    assert (
        row["status"] == "failed"
        and "checksum mismatch" in row["message"]
        and "trn00002.npz" in row["message"]
    )
    assert not (ZEN_OUT / "trn00002.npz").exists() and not (ZEN_OUT / "trn00002.npz.part").exists()
    assert len(zenodo.requests(target="trn00002.npz")) == 2  # fetched once more from scratch, then given up
    assert (ZEN_OUT / "trn00001.npz").exists()

    del zenodo.published_checksum["trn00002.npz"]  # the record gets fixed: the rerun fetches only that file
    n = len(zenodo.log)
    assert run_download(load(zenodo), "rad-chestct") == 0
    assert [r.path.split("/")[-2] for r in zenodo.log[n + 1 :]] == ["trn00002.npz"]


def test_zenodo_replaced_file_on_disk_is_fetched_again(env, zenodo):
    assert run_download(load(zenodo), "rad-chestct") == 0
    (ZEN_OUT / "manifest.csv").unlink()
    (ZEN_OUT / "trn00003.npz").write_bytes(b"x" * len(zenodo.files["trn00003.npz"]))  # same size, other bytes
    n = len(zenodo.log)
    assert run_download(load(zenodo), "rad-chestct") == 0
    assert [r.path.split("/")[-2] for r in zenodo.log[n + 1 :]] == ["trn00003.npz"]
    assert (ZEN_OUT / "trn00003.npz").read_bytes() == zenodo.files["trn00003.npz"]


def test_zenodo_patients_and_limit(env, zenodo):
    assert run_download(load(zenodo, zenodo={"limit": 1}), "rad-chestct") == 0
    assert sorted(p.name for p in ZEN_OUT.iterdir()) == ["Summary_3.csv", "manifest.csv", "trn00001.npz"]
    assert run_download(load(zenodo), "rad-chestct", patients=["trn00003", "nope"]) == 1
    assert (ZEN_OUT / "trn00003.npz").exists() and not (ZEN_OUT / "trn00002.npz").exists()
    assert manifest(ZEN_OUT)["nope.npz"]["status"] == "failed"


def test_zenodo_unsafe_key_is_refused(env, zenodo):
    zenodo.add_file("../../escaped.npz", b"evil")
    assert run_download(load(zenodo), "rad-chestct") == 1
    assert not list(env.rglob("escaped*"))
    assert "not a plain file name" in manifest(ZEN_OUT)["../../escaped.npz"]["message"]


def restricted(server: FakeServer) -> FakeServer:
    server.restricted = True
    server.files.clear()
    server.add_file("trn00001.npz", npz_bytes(1))
    return server


def test_restricted_record_without_access_is_one_clear_line(env, zenodo, capsys):
    """No token: the CLI says in one line that access was not granted, where to ask, and what to set."""
    import yaml

    from prdit.cli import main

    restricted(zenodo)
    over = env / "over.yaml"
    over.write_text(yaml.safe_dump(overrides(zenodo)))
    argv = [
        "download",
        "--params",
        str(ROOT / "params.yaml"),
        "--params",
        str(over),
        "--dataset",
        "rad-chestct",
    ]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    for part in ("restricted and access was not granted", "HTTP 403", "ZENODO_TOKEN", "ZENODO_SHARE_TOKEN"):
        assert part in err
    assert f"/records/{zenodo.record}" in err and not list(ZEN_OUT.glob("*.npz*"))


def test_restricted_record_with_a_personal_access_token(env, zenodo, monkeypatch):
    restricted(zenodo)
    monkeypatch.setenv("ZENODO_TOKEN", zenodo.personal_token)
    assert run_download(load(zenodo), "rad-chestct") == 0
    assert (ZEN_OUT / "trn00001.npz").read_bytes() == zenodo.files["trn00001.npz"]
    assert [r.path.rsplit("/", 1)[-1] for r in zenodo.log] == [zenodo.record, "files", "content"]
    assert all(r.auth == f"Bearer {zenodo.personal_token}" and "token" not in r.query for r in zenodo.log)


def test_restricted_record_with_a_share_link(env, zenodo, monkeypatch):
    restricted(zenodo)
    link = f"https://zenodo.org/records/{zenodo.record}?token={zenodo.share_token}"
    monkeypatch.setenv("ZENODO_SHARE_TOKEN", link)  # the whole link as received; its token is used
    assert run_download(load(zenodo), "rad-chestct") == 0
    assert (ZEN_OUT / "trn00001.npz").read_bytes() == zenodo.files["trn00001.npz"]
    assert all(r.query.get("token") == zenodo.share_token and r.auth is None for r in zenodo.log)


def test_restricted_record_with_a_token_not_granted(env, zenodo, monkeypatch):
    restricted(zenodo)
    monkeypatch.setenv("ZENODO_SHARE_TOKEN", "expired")
    with pytest.raises(http.DownloadError, match="ZENODO_SHARE_TOKEN was not granted access"):
        run_download(load(zenodo), "rad-chestct")


def test_public_record_sends_no_credentials_it_was_not_given(env, zenodo):
    assert run_download(load(zenodo, zenodo={"limit": 1}), "rad-chestct") == 0
    assert all(r.auth is None and "token" not in r.query for r in zenodo.log)


# The first line gives SIGINT back its KeyboardInterrupt, as in a terminal: a process started in the
# background by a non-interactive shell (how CI and `make test &` run the suite) inherits SIGINT
# *ignored*, Python then installs no handler, and the Ctrl-C test's child ran to the end and exited 0.
KILL_SCRIPT = """
import signal; signal.signal(signal.SIGINT, signal.default_int_handler)
import json, sys
from prdit import config
from prdit.acquire import http
from prdit.stages.download import run as run_download
http.BACKOFF_S = 0.01
p = config.load(sys.argv[1], overrides=json.loads(sys.argv[2]))
sys.exit(run_download(p, "rad-chestct"))
"""


def start_download(env: Path, server: FakeServer) -> subprocess.Popen:
    args = [sys.executable, "-c", KILL_SCRIPT, str(ROOT / "params.yaml"), json.dumps(overrides(server))]
    with open(env / "child.log", "wb") as log:  # a file, not a pipe that could fill up
        return subprocess.Popen(
            args, cwd=env, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL, stderr=log
        )


def wait_for_bytes(server: FakeServer, key: str, n: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while server.bytes_sent(key) < n and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, Path("child.log").read_text()[-2000:]  # the tests run in `env`


@pytest.mark.parametrize("ranges", [False, True], ids=["zenodo-ignores-range", "server-honours-range"])
def test_killed_download_keeps_finished_files_and_restarts_or_resumes_the_partial_one(env, zenodo, ranges):
    big = np.random.default_rng(7).bytes(3 << 20)  # incompressible 3 MiB
    zenodo.files.clear()
    zenodo.add_file("Summary_3.csv", b"VolumeAcc,Split\ntrn09999,train\n")
    zenodo.add_file("trn09999.npz", big)
    zenodo.zenodo_ranges = ranges
    zenodo.rate = 512 << 10  # 6 s for the big file: time to kill it halfway
    proc = start_download(env, zenodo)
    wait_for_bytes(zenodo, "trn09999.npz", 1 << 20, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    part = ZEN_OUT / "trn09999.npz.part"
    assert not (ZEN_OUT / "trn09999.npz").exists()  # nothing looks complete
    have = part.stat().st_size
    assert (256 << 10) <= have < len(big)
    assert (ZEN_OUT / "Summary_3.csv").read_bytes() == zenodo.files["Summary_3.csv"]

    zenodo.rate = None
    n = len(zenodo.log)
    assert run_download(load(zenodo), "rad-chestct") == 0
    again = [r for r in zenodo.log[n:] if r.path.endswith("/content")]
    assert [r.path.split("/")[-2] for r in again] == ["trn09999.npz"]  # the finished file is never re-fetched
    assert again[0].range == f"bytes={have}-"
    if ranges:
        assert again[0].status == 206 and again[0].sent == len(big) - have
    else:
        assert again[0].status == 200 and again[0].sent == len(big)
    assert (ZEN_OUT / "trn09999.npz").read_bytes() == big and not part.exists()


def test_ctrl_c_stops_the_transfer_and_keeps_the_part(env, zenodo):
    big = np.random.default_rng(8).bytes(3 << 20)
    zenodo.files.clear()
    zenodo.add_file("trn09998.npz", big)
    zenodo.rate = 256 << 10  # 12 s for the whole file
    proc = start_download(env, zenodo)
    wait_for_bytes(zenodo, "trn09998.npz", 256 << 10, proc)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) != 0  # interrupted, not finished
    # the worker stopped after its current block: the connection closed before the end of the file
    assert zenodo.bytes_sent("trn09998.npz") < len(big)
    assert 0 < (ZEN_OUT / "trn09998.npz.part").stat().st_size < len(big)
    assert not (ZEN_OUT / "trn09998.npz").exists()
    assert manifest(ZEN_OUT).get("trn09998.npz", {}).get("status") != "ok"


# ---------------------------------------------------------------------------------------------------
# Downloaded data flows through ingest
# ---------------------------------------------------------------------------------------------------


def test_downloaded_data_flows_through_ingest(env, zenodo, dicom):
    from prdit.stages import ingest

    zenodo.files.clear()
    for i in range(2):
        zenodo.add_file(f"trn{i + 1:05d}.npz", npz_bytes(i, shape=(24, 40, 40)))
    p = load(zenodo, tcia={"limit": 2})
    assert run_download(p, "lidc-idri") == 0
    assert run_download(p, "rad-chestct") == 0
    small = {**overrides(zenodo, tcia={"limit": 2}), "ingest": {"min_extent_mm": [1.0, 1.0, 1.0]}}
    p = config.load(ROOT / "params.yaml", overrides=small)  # the fake services' volumes are a few cm wide
    for ds, n in (("lidc-idri", 2), ("rad-chestct", 2)):
        ingest.run(p, ds)
        assert len(list(Path("data/interim", ds).glob("*.nii.gz"))) == n, ds


def test_other_source_kinds(env, server, monkeypatch):
    p = params_with({**overrides(server), "phantom": {"patients": 1, "matrix": 32}})
    assert run_download(p, "phantom") == 0  # download: phantom writes the synthetic set
    assert (Path(p.sources["phantom"].path) / "manifest.csv").is_file()
    assert list(Path(p.sources["phantom"].path).rglob("*.dcm"))
    assert not server.log

    mine = env / "elsewhere"
    source = {"format": "dicom", "path": str(mine), "download": "none"}
    p = config.load(ROOT / "params.yaml", overrides={"sources": {"mine": source}})
    with pytest.raises(http.DownloadError, match="does not exist"):
        run_download(p, "mine")
    mine.mkdir()
    (mine / "scan.nii.gz").write_bytes(b"x")
    assert run_download(p, "mine") == 0
    assert (Path("data/raw/mine/manifest.csv")).is_file()


def test_retry_wait_honours_server_hints(monkeypatch):
    import email.utils

    import requests

    def response(status: int, **headers: str) -> requests.Response:
        r = requests.Response()
        r.status_code = status
        r.headers.update(headers)
        return r

    policy = http.RetryPolicy(retries=3, backoff_s=2.0, max_wait_s=100)
    assert policy.wait(1, response(429, **{"Retry-After": "7"})) == 7
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= policy.wait(1, response(503, **{"Retry-After": later})) <= 31
    assert 40 <= policy.wait(1, response(429, **{"X-RateLimit-Reset": str(int(time.time()) + 45)})) <= 46
    assert policy.wait(1, response(429, **{"Retry-After": "9999"})) == 100  # capped
    waits = [
        policy.wait(3, response(503)) for _ in range(50)
    ]  # backoff 2 * 2**2 = 8 s, jittered down to half
    assert all(4 <= w <= 8 for w in waits) and len(set(waits)) > 1
