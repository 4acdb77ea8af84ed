"""Faults at the workflow level (real Snakemake): a failing plan never costs what a re-run needs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.support.project import make_project, tool_env


def _snakemake(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["snakemake", "--cores", "1", *args],
        cwd=project,
        capture_output=True,
        text=True,
        env=tool_env(PRDIT_TRACKING="off"),
        timeout=600,
    )


def test_a_mistyped_data_path_fails_before_any_job_and_keeps_the_manifest(tmp_path: Path) -> None:
    """`download: none` with a mistyped path: one clear line, and manifest.csv (the root of every stage
    downstream) is neither deleted nor rewritten, so fixing the typo re-runs nothing."""
    data = tmp_path / "my data"
    data.mkdir()
    (data / "case1.nii.gz").write_bytes(b"not read by the inventory")
    mine = {
        "datasets": ["mine"],
        "sources": {"mine": {"format": "nifti", "path": str(data), "download": "none"}},
    }
    project = make_project(tmp_path / "project", mine)
    manifest = project / "data/raw/mine/manifest.csv"
    res = _snakemake(project, str(manifest.relative_to(project)))
    assert res.returncode == 0, res.stderr[-3000:]
    before = (manifest.stat().st_mtime_ns, manifest.read_bytes())

    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump({"sources": {"mine": {"path": str(data) + "x"}}}))
    res = _snakemake(project, "all", "--configfile", str(typo))
    assert res.returncode != 0
    assert f"sources.mine.path: {data}x does not exist" in res.stderr
    assert (manifest.stat().st_mtime_ns, manifest.read_bytes()) == before

    res = _snakemake(project, "-n", str(manifest.relative_to(project)))
    assert res.returncode == 0 and "Nothing to be done" in res.stdout + res.stderr
