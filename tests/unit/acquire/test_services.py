"""Issue 26: downloads and weights as the real services behave (the paper DAG's weights step, Zenodo's
client filter, empty NBIA listings, NBIA's LICENSE entry and MD5-less series, manifest header lines,
bare-hex Zenodo checksums), against the fakes in tests/support/fake_servers.py."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from prdit import config, paths, protocol
from prdit.acquire import http, tcia, weights
from prdit.acquire.weights import PaperWeightsError
from prdit.config import ConfigError
from prdit.stages import fetch_weights as stage
from prdit.stages.download import run as run_download
from prdit.stages.fetch_weights import run as run_fetch_weights
from tests.support.downloads import MANIFEST_HEADER, TCIA_OUT, ZEN_OUT, load, manifest, overrides
from tests.support.fake_servers import LICENSE_TEXT, FakeServer
from tests.support.project import ROOT

PAPER_CONFIGS = ["lidc-128.yaml", "lidc-256.yaml", "rad-chestct-256.yaml"]
PAYLOAD = b"MedicalNet stand-in " * 3000
OTHER = b"another network " * 3000


def paper(tmp_path: Path, **evaluate: object) -> config.Params:
    ev = {"weights": str(tmp_path / "models/medicalnet/resnet_50.pth"), **evaluate}
    return config.load(ROOT / "params.yaml", overrides={"protocol": "paper", "evaluate": ev})


def flat(text: str) -> str:
    return " ".join(text.replace("`", "").split())


# 1. the paper DAG's weights step


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_configs_fetch_the_pinned_public_resnet_50(name):
    """`prdit fetch-weights` (rule fetch_weights) has a URL pinned by sha256 under every paper config."""
    p = config.load([ROOT / "params.yaml", ROOT / "configs" / name])
    assert p.protocol == "paper" and Path(p.evaluate.weights).name == "resnet_50.pth"
    assert p.evaluate.url == weights.PAPER_URL and p.evaluate.url.endswith("/resnet_50.pth")
    pinned = "5b6189cafbee2f5604a7279b62bc163365aa6a86a377e1dc260a14275cacbd84"
    assert p.evaluate.sha256 == weights.PAPER_SHA256 == pinned


def test_paper_fetch_with_a_url_downloads_and_verifies(env, server, tmp_path):
    server.weights["resnet_50.pth"] = PAYLOAD
    p = paper(
        tmp_path,
        url=f"{server.weights_url}/resnet_50.pth",
        sha256=hashlib.sha256(PAYLOAD).hexdigest(),
    )
    assert run_fetch_weights(p) == 0
    assert Path(p.evaluate.weights).read_bytes() == PAYLOAD


def test_manual_step_is_the_same_in_the_error_the_readme_and_reproducing():
    step = protocol.MANUAL_WEIGHTS_STEP
    assert "MedicalNet_pytorch_files2.zip" in step and "tar" not in step
    for doc in ("README.md", "docs/reproducing.md"):
        text = flat((ROOT / doc).read_text())
        assert flat(step) in text, doc
        assert "tar -tzf" not in text and "tar -xzf" not in text, doc  # Tencent's archive is a zip


def test_paper_without_url_stops_with_the_manual_step_in_one_line(tmp_path):
    p = paper(tmp_path, url=None, sha256=None)
    with pytest.raises(PaperWeightsError) as err:
        run_fetch_weights(p)
    assert protocol.MANUAL_WEIGHTS_STEP in str(err.value) and "\n" not in str(err.value)
    assert not Path(p.evaluate.weights).exists()


# 2. the default 23-dataset weights: their own name, pinned; the paper check compares content


def test_default_weights_have_their_own_name_and_pins():
    assert (
        paths.medicalnet(weights.DEFAULT_NAME).name
        == "resnet_50_23dataset.pth"
        == Path(weights.DEFAULT_URL).name
    )
    assert weights.DEFAULT_SHA256 == "ff48a62219073fb977fd3f4ddfb8dc1367f0ec156c8d6f6c37e205bd683a246e"
    assert weights.DEFAULT_SIZE == 184_885_051


def test_default_download_is_verified_against_the_pin(server, tmp_path, monkeypatch):
    """A default download whose bytes are not the pinned file never takes its name."""
    server.weights["resnet_50_23dataset.pth"] = PAYLOAD
    monkeypatch.setattr(weights, "DEFAULT_URL", f"{server.weights_url}/resnet_50_23dataset.pth")
    out = tmp_path / "resnet_50_23dataset.pth"
    with pytest.raises(http.DownloadError, match="size mismatch: published 184885051"):
        weights.fetch_weights(None, out, policy=http.RetryPolicy(retries=0))
    assert not out.exists() and not http.part_path(out).exists()


def test_default_download_never_takes_the_paper_name(server, tmp_path, monkeypatch):
    """Under any protocol: the 23-dataset file is not saved as resnet_50.pth (the old DEFAULT_OUT)."""
    server.weights["resnet_50_23dataset.pth"] = PAYLOAD
    monkeypatch.setattr(weights, "DEFAULT_URL", f"{server.weights_url}/resnet_50_23dataset.pth")
    target = tmp_path / "models/medicalnet/resnet_50.pth"
    p = config.load(ROOT / "params.yaml", overrides={"evaluate": {"weights": str(target)}})
    with pytest.raises(PaperWeightsError, match="saved under its own name .resnet_50_23dataset.pth"):
        run_fetch_weights(p)
    assert not target.exists() and not server.requests(target="resnet_50_23dataset.pth")


def test_paper_config_refuses_the_23_dataset_checksum():
    with pytest.raises(ConfigError, match="evaluate.sha256.*23-dataset"):
        config.load(
            ROOT / "params.yaml",
            overrides={
                "protocol": "paper",
                "evaluate": {"weights": "models/medicalnet/resnet_50.pth", "sha256": weights.DEFAULT_SHA256},
            },
        )


def test_paper_refuses_23_dataset_content_under_the_paper_name(env, server, tmp_path, monkeypatch):
    """The 23-dataset file saved as resnet_50.pth (what the old default did) is told by its sha256."""
    monkeypatch.setattr(stage, "DEFAULT_SHA256", hashlib.sha256(PAYLOAD).hexdigest(), raising=False)
    server.weights["resnet_50.pth"] = OTHER
    p = paper(tmp_path, url=f"{server.weights_url}/resnet_50.pth", sha256=None)
    target = Path(p.evaluate.weights)
    target.parent.mkdir(parents=True)
    target.write_bytes(PAYLOAD)
    with pytest.raises(PaperWeightsError, match="is the 23-dataset MedicalNet"):
        run_fetch_weights(p)
    assert target.read_bytes() == PAYLOAD  # left as it was, nothing fetched
    assert not server.requests(target="resnet_50.pth")


def test_paper_refuses_a_url_that_serves_the_23_dataset_file(env, server, tmp_path, monkeypatch):
    monkeypatch.setattr(stage, "DEFAULT_SHA256", hashlib.sha256(PAYLOAD).hexdigest(), raising=False)
    server.weights["resnet_50.pth"] = PAYLOAD
    p = paper(tmp_path, url=f"{server.weights_url}/resnet_50.pth", sha256=None)
    with pytest.raises(http.DownloadError, match="is the 23-dataset MedicalNet"):
        run_fetch_weights(p)
    assert not Path(p.evaluate.weights).exists()


# 3. Zenodo's client filter


def test_user_agent_names_prdit_its_version_and_project():
    agent = http.user_agent()
    assert agent.startswith("prdit/0.1.0 ") and http.PROJECT_URL in agent
    assert "python-requests" not in agent.lower()


def test_a_filter_that_blocks_python_requests_lets_prdit_through(env, zenodo):
    zenodo.blocked_agents = ("python-requests",)
    assert run_download(load(zenodo), "rad-chestct") == 0
    assert all(r.agent and r.agent.startswith("prdit/") for r in zenodo.log)


@pytest.mark.parametrize("token", [False, True], ids=["no-token", "with-token"])
def test_an_html_403_is_the_filter_not_the_owners(env, zenodo, capsys, monkeypatch, token):
    from prdit.cli import main

    if token:
        monkeypatch.setenv("ZENODO_TOKEN", zenodo.personal_token)
    zenodo.blocked_agents = ("prdit", "python-requests")  # whatever this client calls itself
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
    assert "client filter" in err and "not by the record's owners" in err
    assert "access was not granted" not in err and "<html" not in err.lower()


def test_a_403_before_any_token_was_checked_is_the_filter(env, zenodo, monkeypatch):
    """A record's metadata is public: a plain 403 for it without credentials is not about access."""

    def forbidden(*args: object, **kw: object) -> None:
        raise http.HTTPStatusError("Zenodo record 4242: HTTP 403 Forbidden", 403)

    monkeypatch.setattr(http, "get_json", forbidden)
    with pytest.raises(http.DownloadError, match="before any token was checked.*client filter") as err:
        run_download(load(zenodo), "rad-chestct")
    assert "access was not granted" not in str(err.value)


# 4. empty NBIA listings


def test_an_empty_collection_listing_is_an_error(env, server):
    with pytest.raises(http.DownloadError, match="0 series for collection 'LIDC-IRDI', modality 'CT'"):
        run_download(load(server, tcia={"collection": "LIDC-IRDI"}), "lidc-idri")
    with pytest.raises(http.DownloadError, match="0 series for collection 'LIDC-IDRI', modality 'TC'"):
        run_download(load(server, tcia={"modality": "TC"}), "lidc-idri")


def test_a_patient_with_no_series_to_fetch_is_a_failed_row(env, server, dicom):
    """With a manifest, a --patients entry none of whose series it lists gets nothing: a failure."""
    uids = sorted(dicom)
    cohort = env / "cohort.tcia"
    cohort.write_text(MANIFEST_HEADER + f"{uids[0]}\n")
    other = dicom[uids[1]]["patient"]
    assert run_download(load(server), "lidc-idri", manifest=cohort, patients=[other]) == 1
    [row] = [r for r in manifest(TCIA_OUT).values() if r["patient"] == other]
    assert row["status"] == "failed" and f"patient {other}" in row["message"]


# 5. the smaller points


def test_fake_nbia_is_mounted_where_v4_is():
    with FakeServer() as srv:
        assert urlparse(srv.tcia_url).path == "/nbia-api/services/v4"
    real = config.load(ROOT / "params.yaml").download["lidc-idri"].base_url
    assert urlparse(real).path == "/nbia-api/services/v4"


def test_getimage_license_entry_is_not_kept_among_the_dicom_files(env, server, dicom):
    uid = sorted(dicom)[0]
    assert zipfile.ZipFile(io.BytesIO(server.series_zip(uid, md5=False))).namelist()[0] == "LICENSE"
    assert run_download(load(server, tcia={"md5": False, "limit": 1}), "lidc-idri") == 0
    row = manifest(TCIA_OUT)[uid]
    folder = TCIA_OUT / row["path"]
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(dicom[uid]["files"]) and int(row["files"]) == len(names)
    assert not any(p.read_bytes() == LICENSE_TEXT for p in TCIA_OUT.rglob("*") if p.is_file())


def test_a_series_without_md5s_falls_back_to_getimage(env, server, dicom):
    uid = sorted(dicom)[0]
    server.series[uid]["no_md5"] = True
    assert run_download(load(server, tcia={"limit": 1}), "lidc-idri") == 0
    paths = [r.path.rsplit("/", 1)[1] for r in server.requests(target=uid)]
    assert paths == ["getImageWithMD5Hash", "getImage"]
    row = manifest(TCIA_OUT)[uid]
    assert row["status"] == "ok" and "not MD5-verified" in row["message"]
    assert sorted(p.name for p in (TCIA_OUT / row["path"]).iterdir()) == sorted(dicom[uid]["files"])


def test_manifest_header_lines_are_skipped_and_counted(env, server, dicom, caplog):
    uids = sorted(dicom)
    cohort = env / "cohort.tcia"
    cohort.write_text(MANIFEST_HEADER + f"Series Instance UID\n{uids[0]}\n# a note\n{uids[2]}\n")
    assert tcia.read_tcia_manifest(cohort) == [uids[0], uids[2]]
    assert "skipped 2 line(s)" in caplog.text
    assert run_download(load(server), "lidc-idri", manifest=cohort) == 0


def test_bare_hex_zenodo_checksum_is_an_md5(env, zenodo):
    key = "trn00002.npz"
    md5 = hashlib.md5(zenodo.files[key]).hexdigest()
    zenodo.published_checksum[key] = md5  # the legacy deposit API's form
    assert run_download(load(zenodo), "rad-chestct") == 0
    assert manifest(ZEN_OUT)[key]["checksum"] == f"md5:{md5}"
    (ZEN_OUT / "manifest.csv").unlink()  # a rerun rebuilds rows from the files, inside the listing loop
    assert run_download(load(zenodo), "rad-chestct") == 0
    zenodo.published_checksum[key] = "0" * 32
    (ZEN_OUT / "manifest.csv").unlink()
    assert run_download(load(zenodo), "rad-chestct") == 1  # a wrong bare md5 is still caught
