"""Named experiments side by side (params `experiments:`): the real `snakemake` trains a shared stage once,
keeps every experiment's results under its name, and plans only what an added experiment needs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from prdit.config import ConfigError, load
from tests.support.project import make_project, planned_jobs, run

pytestmark = pytest.mark.slow

# the depth study in small: two stage-2 depths on one stage 1 (the demo's PRDiT-T/10/2 and a 1-layer DiT)
EXPERIMENTS = {"depth2": {}, "depth1": {"train": {"global": {"model": "PRDiT-T/10/1"}}}}


def write_params(project: Path, experiments: dict) -> None:
    p = yaml.safe_load((project / "params.yaml").read_text())
    p["experiments"] = experiments
    (project / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))


def key(project: Path, experiment: str, stage: str) -> str | None:
    return load(project / "params.yaml").view(experiment).model_key(stage)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    """A tiny project (no stage 3) with two experiments, as planned and then built by snakemake."""
    project = make_project(
        tmp_path_factory.mktemp("experiments") / "project",
        {"preprocess": {"highres_size": None}, "experiments": EXPERIMENTS},
    )
    planned = planned_jobs(project)
    run(["snakemake", "--cores", "2", "all"], project)
    return project, planned


def test_two_experiments_share_stage_1_and_keep_their_results_side_by_side(built) -> None:
    project, planned = built
    k1 = key(project, "depth1", "global")
    assert key(project, "depth2", "global") is None  # the project's own stage 2: models/<ds>/global
    assert key(project, "depth1", "local") is None  # same stage-1 parameters: shared
    assert k1 is not None
    train = {job: n for job, n in planned.items() if job.startswith("train")}
    assert train == {"train local": 1, "train global": 1, f"train global-{k1}": 1}
    # what ran: one benchmark file per training job
    ran = sorted(p.stem for p in (project / "logs/benchmarks/train").glob("*.tsv"))
    assert ran == sorted(["phantom.local", "phantom.global", f"phantom.global-{k1}"])
    depth1 = load(project / "params.yaml").view("depth1").train.global_.model
    import prdit.model as models

    assert models.load(project / f"models/phantom/global-{k1}/model.pt").meta["stage"] == "global"
    for name in EXPERIMENTS:
        metrics = json.loads((project / f"metrics/phantom/{name}/16.json").read_text())
        assert np.isfinite(metrics["fid"])
        assert len(list((project / f"samples/phantom/{name}/16").glob("*.nii.gz"))) == 4
        assert (project / f"reports/phantom/{name}/16/report.html").is_file()
    assert depth1 == "PRDiT-T/10/1"
    # the two experiments sampled different models
    a = (project / "samples/phantom/depth1/16/0.nii.gz").read_bytes()
    b = (project / "samples/phantom/depth2/16/0.nii.gz").read_bytes()
    assert a != b
    assert (project / "reports/phantom/compare/16/table.csv").is_file()
    assert planned_jobs(project) == {}  # built: nothing left


def test_an_added_experiment_plans_only_its_own_jobs_and_a_removed_one_none(built) -> None:
    project, _ = built
    more = {**EXPERIMENTS, "depth2-lr": {"train": {"global": {"lr": 5e-4}}}}
    write_params(project, more)
    k3 = key(project, "depth2-lr", "global")
    assert k3 is not None and k3 != key(project, "depth1", "global")
    # its own stage 2, samples and metrics; the comparison gains its row; stage 1 is shared
    assert planned_jobs(project) == {
        f"train global-{k3}": 1,
        "sample depth2-lr 16": 1,
        "evaluate depth2-lr 16": 1,
        "compare 16": 1,
    }
    write_params(project, EXPERIMENTS)  # never built: removing it again plans nothing
    assert planned_jobs(project) == {}
    # removing the experiment whose models are the project's own: the other keeps its folders, so nothing
    # is trained, sampled or evaluated again; only the comparison loses a row
    write_params(project, {"depth1": EXPERIMENTS["depth1"]})
    assert planned_jobs(project) == {"compare 16": 1}
    write_params(project, EXPERIMENTS)
    assert planned_jobs(project) == {}


def test_an_experiment_may_not_change_the_data_or_the_protocol(tmp_path: Path) -> None:
    base = yaml.safe_load(Path("params.yaml").read_text())
    for override, key_named in (
        ({"preprocess": {"size": 16}}, "experiments.bad.preprocess"),
        ({"sample": {"shards": 2}}, "experiments.bad.sample.shards"),
        ({"train": {"global": {"model": "PRDiT-S/10/2"}}}, "train.global.model"),
    ):
        f = tmp_path / "p.yaml"
        f.write_text(yaml.safe_dump({**base, "experiments": {"bad": override}}))
        with pytest.raises(ConfigError, match=key_named.replace(".", r"\.")):
            load(f)
