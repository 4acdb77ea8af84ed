"""Shared by the download tests (tests/unit/acquire/): the sources and download sections that point at a
FakeServer, the manifest a download writes, Zenodo payloads and a TCIA manifest header."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from prdit import config
from tests.support.fake_servers import FakeServer
from tests.support.project import params_with

TCIA_OUT = Path("data/raw/lidc-idri")
ZEN_OUT = Path("data/raw/rad-chestct")


def overrides(server: FakeServer, **extra: dict) -> dict:
    tcia = {
        "base_url": server.tcia_url,
        "collection": server.collection,
        "modality": "CT",
        "workers": 2,
        "retries": 3,
        "patients": [],
        "limit": None,
    }
    zen = {"base_url": server.zenodo_url, "record": server.record, "workers": 2, "retries": 3, "limit": None}
    tcia.update(extra.get("tcia", {}))
    zen.update(extra.get("zenodo", {}))
    return {
        "sources": {
            "lidc-idri": {"format": "dicom", "path": str(TCIA_OUT), "download": "lidc-idri"},
            "rad-chestct": {"format": "npz", "path": str(ZEN_OUT), "download": "rad-chestct"},
        },
        "download": {"lidc-idri": tcia, "rad-chestct": zen},
    }


def load(server: FakeServer, **extra: dict) -> config.Params:
    return params_with(overrides(server, **extra))


def npz_bytes(seed: int, shape=(20, 32, 32)) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(seed)
    np.savez_compressed(buf, ct=rng.integers(-1000, 1000, shape).astype(np.int16))
    return buf.getvalue()


def manifest(path: Path) -> dict[str, dict[str, str]]:
    with open(path / "manifest.csv", newline="") as fh:
        return {row["series"]: row for row in csv.DictReader(fh)}


MANIFEST_HEADER = """downloadServerUrl=https://nbia.cancerimagingarchive.net/nbia-download/servlet/DownloadServlet
includeAnnotation=true
noOfrRetry=4
databasketId=manifest-1700000000000.tcia
manifestVersion=3.0
ListOfSeriesToDownload=
"""
