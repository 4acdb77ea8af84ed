"""End-to-end: the real `snakemake` and `dvc repro` run the whole DAG on the synthetic dataset."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from prdit import topology
from prdit.io import read_nifti
from tests.support.project import PIPELINE_STAGES, make_project, planned_jobs, run, tool_env

pytestmark = pytest.mark.slow


def outputs(root: Path) -> set[str]:
    parts = ("data/interim", "data/processed", "data/splits", "models", "samples", "metrics")
    return {
        str(p.relative_to(root))
        for part in parts
        for p in (root / part).rglob("*")
        if p.is_file() and not p.name.startswith(".") and p.name != "last.pt"
    }


def planned_rules(cwd: Path) -> set[str]:
    return set(planned_jobs(cwd))


def mlflow_runs(db: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as con:
        return con.execute(
            "select t.value, r.status from runs r join tags t on t.run_uuid = r.run_uuid where t.key = 'prdit.stage'"
        ).fetchall()


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two copies of the project: one built by `snakemake --cores 2 all`, one by `dvc repro`.

    The two builds run at the same time: the DAG is mostly a chain of short processes, so this halves
    the wall time of the suite without changing what either tool does.
    """
    root = tmp_path_factory.mktemp("e2e")
    sm, dvc = make_project(root / "sm"), make_project(root / "dvc")
    dvc_log = root / "dvc-repro.log"
    with open(dvc_log, "w") as fh:
        dvc_proc = subprocess.Popen(
            ["dvc", "repro"], cwd=dvc, stdout=fh, stderr=subprocess.STDOUT, env=tool_env()
        )
        try:
            run(["snakemake", "--cores", "2", "all"], sm)
        finally:
            dvc_status = dvc_proc.wait(timeout=1800)
    if dvc_status != 0:
        pytest.fail(f"dvc repro failed ({dvc_status}):\n{dvc_log.read_text()[-6000:]}")
    return sm, dvc


@pytest.fixture(scope="module")
def built(builds: tuple[Path, Path]) -> Path:
    return builds[0]


def test_snakemake_runs_the_dag_once_then_only_what_changed(built: Path) -> None:
    project = built

    p = yaml.safe_load((project / "params.yaml").read_text())
    sizes = [p["preprocess"]["size"], p["preprocess"]["highres_size"]]
    for size in sizes:
        metrics = json.loads((project / f"metrics/phantom/{size}.json").read_text())
        assert np.isfinite(metrics["fid"]) and np.isfinite(metrics["mmd_reference"])
        samples = sorted((project / f"samples/phantom/{size}").glob("*.nii.gz"))
        assert len(samples) == p["sample"]["n"]
        vol, spacing = read_nifti(samples[0])
        assert vol.shape == (size,) * 3
        assert np.allclose(spacing, p["preprocess"]["fov_mm"] / size)
        assert vol.min() >= p["preprocess"]["window"][0] - 1 and vol.max() <= p["preprocess"]["window"][1] + 1
    for stage in topology.STAGES:
        assert (project / f"models/phantom/{stage}/model.pt").stat().st_size > 0

    runs = mlflow_runs(project / "mlflow.db")
    assert {stage for stage, _ in runs} == PIPELINE_STAGES
    assert all(status == "FINISHED" for _, status in runs)
    assert len(runs) == 11  # one per job: 7 single stages + sample and evaluate at two sizes

    assert planned_rules(project) == set()  # a second run does no work

    run(["snakemake", "--report", "report.html"], project)  # the self-contained Snakemake report
    html = (project / "report.html").read_text(errors="replace")
    assert "report.html" in html and "32.json" in html

    p["sample"]["steps"] += 1
    (project / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    assert planned_rules(project) == {"sample 16", "sample 32", "evaluate 16", "evaluate 32"}

    p["sample"]["steps"] -= 1
    p["train"]["highres"]["lr"] *= 2
    (project / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    assert planned_rules(project) == {"train highres", "sample 32", "evaluate 32"}
    p["train"]["highres"]["lr"] /= 2
    (project / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))


def test_dvc_repro_builds_the_same_outputs_and_then_nothing(builds: tuple[Path, Path]) -> None:
    sm, dvc = builds
    assert outputs(dvc) == outputs(sm)
    for sample in sorted((sm / "samples").rglob("*.nii.gz")):
        a, _ = read_nifti(sample)
        b, _ = read_nifti(dvc / sample.relative_to(sm))
        np.testing.assert_allclose(a, b, atol=1.0)  # HU; same seeds, same code
    again = run(["dvc", "repro"], dvc)
    assert "didn't change, skipping" in again
    assert not re.search(r"^Running stage", again, re.M)
    assert "up to date" in run(["dvc", "status"], dvc).lower()


def test_sharded_sampling_writes_what_one_job_writes_and_evaluation_waits_for_every_shard(
    tmp_path: Path,
) -> None:
    project = make_project(
        tmp_path / "shards", {"preprocess": {"highres_size": None}, "sample": {"n": 5, "batch_size": 2}}
    )  # 3 batches
    run(["snakemake", "--cores", "2", "samples/phantom/16"], project)

    def files(folder: Path) -> dict[str, bytes]:  # without Snakemake's .snakemake_timestamp
        return {f.name: f.read_bytes() for f in folder.iterdir() if not f.name.startswith(".")}

    one = files(project / "samples/phantom/16")
    assert len(one) == 6  # 5 volumes + montage.png

    p = yaml.safe_load((project / "params.yaml").read_text())
    p["sample"]["shards"] = 3
    (project / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    assert planned_jobs(project) == {"sample 16": 3, "merge_samples 16": 1, "evaluate 16": 1}  # no retraining
    dag = run(["snakemake", "all", "--dag"], project)
    nodes = dict(re.findall(r"^\s*(\d+)\[label = \"(\w+)", dag, re.M))
    edges = re.findall(r"^\s*(\d+) -> (\d+)", dag, re.M)
    merge = [n for n, rule in nodes.items() if rule == "merge_samples"]
    evaluate = [n for n, rule in nodes.items() if rule == "evaluate"]
    shards = [n for n, rule in nodes.items() if rule == "sample"]
    assert len(merge) == 1 and len(evaluate) == 1 and len(shards) == 3
    assert {(s, merge[0]) for s in shards} <= set(edges) and (merge[0], evaluate[0]) in edges

    run(["snakemake", "--cores", "2", "all"], project)
    assert files(project / "samples/phantom/16") == one
    assert not (project / "samples/phantom/16.shards").exists() or not any(
        (project / "samples/phantom/16.shards").iterdir()
    )
    assert sorted(f.name for f in (project / "logs/sample").iterdir()) == [
        "phantom.16.log",
        "phantom.16.merge.log",
        "phantom.16.shard0.log",
        "phantom.16.shard1.log",
        "phantom.16.shard2.log",
    ]
    assert np.isfinite(json.loads((project / "metrics/phantom/16.json").read_text())["fid"])
    assert planned_rules(project) == set()


def test_an_override_file_re_runs_only_the_rules_that_read_what_it_changes(built: Path) -> None:
    """The parameter files reach `prdit` without being a rerun trigger: only the values a rule reads are."""
    project = built
    p = yaml.safe_load((project / "params.yaml").read_text())
    assert planned_jobs(project) == {}

    sampling = project / "over rides" / "sample steps.yaml"  # spaces: the names reach prdit intact
    sampling.parent.mkdir()
    sampling.write_text(yaml.safe_dump({"sample": {"steps": p["sample"]["steps"] + 1}}))
    assert planned_jobs(project, "--configfile", str(sampling)) == {
        "sample 16": 1,
        "sample 32": 1,
        "evaluate 16": 1,
        "evaluate 32": 1,
    }

    highres = project / "highres.yaml"
    highres.write_text(yaml.safe_dump({"train": {"highres": {"lr": p["train"]["highres"]["lr"] * 2}}}))
    assert planned_jobs(project, "--configfile", str(highres)) == {
        "train highres": 1,
        "sample 32": 1,
        "evaluate 32": 1,
    }

    same = project / "same.yaml"  # values equal to params.yaml's, in another key order
    same.write_text(
        yaml.safe_dump(
            {
                "sample": {"n": p["sample"]["n"], "steps": p["sample"]["steps"]},
                "train": {"highres": {"lr": p["train"]["highres"]["lr"]}},
            }
        )
    )
    assert planned_jobs(project, "--configfile", str(same)) == {}
    assert planned_jobs(project, "--configfile", str(same), str(sampling)) == {
        "sample 16": 1,
        "sample 32": 1,
        "evaluate 16": 1,
        "evaluate 32": 1,
    }

    # ... and prdit reads what Snakemake merged (the files reach it through PRDIT_PARAM_FILES): one more
    # sample at the backbone size. Last, since it leaves that folder built with other params.
    more = project / "over rides" / "one more.yaml"
    more.write_text(yaml.safe_dump({"sample": {"n": p["sample"]["n"] + 1}}))
    run(["snakemake", "--cores", "2", "samples/phantom/16", "--configfile", str(more)], project)
    assert len(list((project / "samples/phantom/16").glob("*.nii.gz"))) == p["sample"]["n"] + 1
