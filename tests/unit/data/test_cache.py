"""The case is the unit of caching and resumption of ingest and preprocess (prdit/data/cache.py).

Real code paths: the `prdit` CLI (what DVC runs) on synthetic phantom DICOM, and a real `snakemake`
run with the cases spread over shard jobs. The number of cases each run computed is read from the
line every run logs: "<n> case(s) computed, <m> reused from the cache".
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pydicom
import pytest
import yaml

from prdit.data.cache import CaseCache
from tests.support.project import ROOT, make_project, tool_env

COUNTS = re.compile(r"(ingest|preprocess) (.+?): (\d+) case\(s\) computed, (\d+) reused from the cache")


def prdit(cwd: Path, *args: str) -> str:
    res = subprocess.run(
        ["prdit", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=tool_env(PRDIT_TRACKING="off"),
        timeout=600,
    )
    assert res.returncode == 0, (
        f"prdit {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
    )
    return res.stdout + res.stderr


def counts(output: str) -> tuple[int, int]:
    """(computed, reused) of one prdit ingest/preprocess run (or the sum over shard-job logs)."""
    found = [(int(c), int(r)) for _, _, c, r in COUNTS.findall(output)]
    assert found, output[-3000:]
    return sum(c for c, _ in found), sum(r for _, r in found)


def write_params(cwd: Path, raw: Path, **sections) -> list[str]:
    over = {
        # source names: the runs compared are separate projects (each would have its own pseudonym key)
        "sources": {"t": {"format": "dicom", "path": str(raw), "download": "none", "case_ids": "source"}},
        "preprocess": {"size": 16, "highres_size": 32},
    }
    for name, values in sections.items():
        over[name] = {**over.get(name, {}), **values}
    (cwd / "over.yaml").write_text(yaml.safe_dump(over))
    (cwd / "params.yaml").write_text((ROOT / "params.yaml").read_text())  # a project root
    return ["--params", "params.yaml", "--params", "over.yaml"]


def run_stages(cwd: Path, args: list[str], threads: int = 2) -> tuple[tuple[int, int], tuple[int, int]]:
    ingest = counts(prdit(cwd, "ingest", *args, "--dataset", "t", "--threads", str(threads)))
    preprocess = counts(prdit(cwd, "preprocess", *args, "--dataset", "t", "--threads", str(threads)))
    return ingest, preprocess


def digests(folder: Path) -> dict[str, str]:
    """sha256 of every output file; qc.csv without the timing column (seconds differ run to run)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if not p.is_file():
            continue
        if p.name == "qc.csv":
            text = (
                pd.read_csv(p, dtype=str, keep_default_na=False).drop(columns="seconds").to_csv(index=False)
            )
            out[p.relative_to(folder).as_posix()] = hashlib.sha256(text.encode()).hexdigest()
        else:
            out[p.relative_to(folder).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight synthetic patients as DICOM (one folder each), written once by `prdit phantom`."""
    d = tmp_path_factory.mktemp("phantoms")
    (d / "o.yaml").write_text(
        yaml.safe_dump({"phantom": {"patients": 8, "matrix": 48, "z_extent_mm": 240.0}})
    )
    (d / "params.yaml").write_text((ROOT / "params.yaml").read_text())  # a project root
    prdit(d, "phantom", "--params", "params.yaml", "--params", "o.yaml", "--out", "raw")
    return d / "raw"


def patients(raw: Path) -> list[Path]:
    return sorted(p for p in raw.iterdir() if p.is_dir())


def test_new_case_changed_params_and_cache_hits(phantoms: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    for p in patients(phantoms)[:4]:
        shutil.copytree(p, raw / p.name)
    work = tmp_path / "work"
    work.mkdir()
    args = write_params(work, raw)
    assert run_stages(work, args) == ((4, 0), (4, 0))
    assert run_stages(work, args) == ((0, 4), (0, 4))  # nothing changed: nothing computed

    shutil.copytree(patients(phantoms)[4], raw / patients(phantoms)[4].name)  # a new patient arrives
    assert run_stages(work, args) == ((1, 4), (1, 4))
    for stage in ("interim", "processed"):
        qc = pd.read_csv(work / "data" / stage / "t" / "qc.csv", keep_default_na=False)
        assert len(qc) == 5 and (qc["status"] == "ok").all()  # the QC table still covers every case
    assert len(list((work / "data/processed/t/32").glob("*.npy"))) == 5

    # a changed ingest parameter re-ingests every case; preprocess sees identical volumes
    args = write_params(work, raw, ingest={"max_gap_factor": 1.6})
    assert run_stages(work, args) == ((5, 0), (0, 5))
    # a changed preprocess parameter re-processes every case; the scheduling-only `shards` changes nothing
    args = write_params(work, raw, ingest={"max_gap_factor": 1.6}, preprocess={"fov_mm": 250.0, "shards": 3})
    assert run_stages(work, args) == ((0, 5), (5, 0))
    # the cache keeps one version per case (a full run prunes the others)
    entries = list((work / ".prdit/cache/ingest/t").glob("*/*/row.json"))
    assert len(entries) == 5

    # a case whose raw files change is computed again, and only that one
    victim = patients(raw)[0]
    dcm = sorted(victim.rglob("*.dcm"))[0]
    dcm.write_bytes(dcm.read_bytes())  # rewritten, same bytes: still a hit (content, not mtime)
    assert run_stages(work, args)[0] == (0, 5)
    for f in sorted(victim.rglob("*.dcm")):  # one voxel of the patient's series edited
        ds = pydicom.dcmread(f)
        if ds.get("ImageType") and "LOCALIZER" not in ds.ImageType and ds.Rows > 32:
            pixels = ds.pixel_array.copy()
            pixels[10, 10] += 100
            ds.PixelData = pixels.tobytes()
            ds.save_as(f)
            break
    assert run_stages(work, args) == ((1, 4), (1, 4))


def cached_cases(work: Path, stage: str = "ingest") -> int:
    return CaseCache(stage, "t", work / ".prdit" / "cache").complete_entries()


def test_killed_ingest_resumes_with_the_rest_and_ends_identical(phantoms: Path, tmp_path: Path) -> None:
    work, ref = tmp_path / "work", tmp_path / "ref"
    work.mkdir()
    ref.mkdir()
    args = write_params(work, phantoms)
    write_params(ref, phantoms)
    total = len(patients(phantoms))

    # one case at a time, killed (SIGKILL, no clean-up) once half the cases are finished
    proc = subprocess.Popen(
        ["prdit", "ingest", *args, "--dataset", "t", "--threads", "1"],
        cwd=work,
        env=tool_env(PRDIT_TRACKING="off"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while cached_cases(work) < total // 2:
        assert proc.poll() is None, "ingest ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = cached_cases(work)
    assert total // 2 <= finished < total, finished
    assert not (work / "data/interim/t/qc.csv").exists()  # nothing that looks complete

    ingest, preprocess = run_stages(work, args)
    assert ingest == (total - finished, finished)  # the finished cases kept, only the rest computed
    assert preprocess == (total, 0)
    assert run_stages(ref, args) == ((total, 0), (total, 0))  # an uninterrupted run
    for stage in ("interim", "processed"):
        a, b = digests(work / "data" / stage / "t"), digests(ref / "data" / stage / "t")
        assert len(a) > total and a == b, stage


def test_killed_preprocess_resumes(phantoms: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    args = write_params(work, phantoms, preprocess={"size": 32, "highres_size": 64})
    total = len(patients(phantoms))
    assert counts(prdit(work, "ingest", *args, "--dataset", "t", "--threads", "2")) == (total, 0)
    proc = subprocess.Popen(
        ["prdit", "preprocess", *args, "--dataset", "t", "--threads", "1"],
        cwd=work,
        env=tool_env(PRDIT_TRACKING="off"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    entries = lambda: cached_cases(work, "preprocess")  # noqa: E731
    deadline = time.monotonic() + 300
    while entries() < 2:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = entries()
    assert counts(prdit(work, "preprocess", *args, "--dataset", "t", "--threads", "2")) == (
        total - finished,
        finished,
    )
    assert len(list((work / "data/processed/t/64").glob("*.nii.gz"))) == total


@pytest.mark.slow
def test_snakemake_shards_compute_only_the_new_case(tmp_path: Path) -> None:
    """`snakemake` with ingest.shards = preprocess.shards = 2: the cases spread over shard jobs, and a
    sixth phantom patient (the download rule rewrites every raw file) is the only case computed again."""
    project = make_project(
        tmp_path / "project",
        {"ingest": {"shards": 2}, "preprocess": {"shards": 2}, "phantom": {"patients": 5}},
    )
    target = "data/processed/phantom"

    def snakemake(*args: str) -> str:
        res = subprocess.run(
            ["snakemake", "--cores", "2", *args],
            cwd=project,
            capture_output=True,
            text=True,
            env=tool_env(),
            timeout=900,
        )
        assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
        return res.stdout + res.stderr

    def shard_counts(stage: str) -> tuple[int, int]:
        return counts("".join(p.read_text() for p in (project / "logs" / stage).glob("phantom.shard*.log")))

    out = snakemake(target)
    rules = re.findall(r"^(?:local)?rule (\w+):", out, re.M)
    assert sorted(rules) == sorted(
        [
            "download",
            "ingest_plan",
            "ingest_shard",
            "ingest_shard",
            "ingest",
            "preprocess_shard",
            "preprocess_shard",
            "preprocess",
        ]
    )
    assert shard_counts("ingest") == (5, 0) and shard_counts("preprocess") == (5, 0)
    assert counts((project / "logs/ingest/phantom.log").read_text()) == (
        0,
        5,
    )  # the assembly computes nothing
    assert "Nothing to be done" in snakemake(target)  # temporary shard files gone, still up to date

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["phantom"]["patients"] = 6
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    snakemake(target)
    assert shard_counts("ingest") == (1, 5) and shard_counts("preprocess") == (1, 5)
    for stage in ("interim", "processed"):
        qc = pd.read_csv(project / "data" / stage / "phantom" / "qc.csv", keep_default_na=False)
        assert len(qc) == 6
    assert not (project / "data/interim/phantom.shards").exists()


def test_header_cache_reads_only_new_files_and_finds_the_same(
    phantoms: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prdit.data import dicom

    plain = dicom.discover(phantoms, 16)
    header_cache: dict = {}
    first = dicom.discover(phantoms, 16, header_cache=header_cache)
    read: list[int] = []
    from prdit.data.dicom import discovery

    real = discovery._read_headers
    monkeypatch.setattr(
        discovery, "_read_headers", lambda paths, threads: read.append(len(paths)) or real(paths, threads)
    )
    again = dicom.discover(
        phantoms, 16, header_cache=json.loads(json.dumps(header_cache))
    )  # as saved to and read from disk
    assert read == [0]
    for result in (first, again):
        assert {k: (v.uid, v.files) if v else None for k, v in result[0].items()} == {
            k: (v.uid, v.files) if v else None for k, v in plain[0].items()
        }
        assert result[1] == plain[1]
