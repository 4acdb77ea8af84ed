"""The Snakefile and dvc.yaml describe one DAG: same prdit commands, same outputs, same inputs, same params."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dvc.repo import Repo

from prdit import dvc_yaml
from prdit.config import deep_merge, from_dict, load
from tests.support.project import ROOT, config_layers, make_dvc_project, make_project, tool_env

# --plan/--shard/--write-plan: Snakemake's scatter-gather of the per-case data stages (ingest.shards /
# preprocess.shards), which DVC runs as one job
IGNORED_OPTIONS = {"--plan", "--shard", "--write-plan"}
# Snakemake-only jobs: the shards of a stage DVC runs whole (their temporary outputs under *.shards/), and
# fetch_weights (DVC users run `prdit fetch-weights` once, README)
SNAKEMAKE_ONLY = {"all", "ingest_plan", "ingest_shard", "preprocess_shard", "merge_samples", "fetch_weights"}
# (sample shards and merge_samples are matched with DVC's sample stage as one job: snakemake_jobs)
CONFIGS = [None, *sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))]


def _normalise(cmd: str) -> tuple[str, ...]:
    """The prdit command and its arguments, without log redirection, launcher and per-runner options."""
    words = shlex.split(cmd.split(">")[0])
    words = words[
        len(words) - 1 - words[::-1].index("prdit") :
    ]  # `exec prdit launch ... --` is how, not what
    out, skip = [], False
    for word in words:
        if skip:
            skip = False
        elif word in IGNORED_OPTIONS:
            skip = True
        else:
            out.append(word)
    return tuple(out)


def snakemake_jobs(root: Path = ROOT, configfiles: list[Path] = ()) -> list[dict]:
    """Every job of a forced plan, from Snakemake's DAG (tests/support/snakemake_dag.py): command, files, params."""
    cmd = [sys.executable, str(ROOT / "tests" / "support" / "snakemake_dag.py"), str(root), *map(str, configfiles)]
    res = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=tool_env())
    assert res.returncode == 0, res.stderr[-3000:]
    jobs, sample_shards, merges = [], {}, []
    for job in json.loads(res.stdout):
        if job["rule"] == "merge_samples":
            merges.append(job)
        if job["rule"] in SNAKEMAKE_ONLY:
            continue
        entry = {
            "rule": job["rule"],
            "cmd": _normalise(job["shell"]),
            "outs": set(job["output"]),
            "deps": {d for d in job["input"] if ".shards/" not in d},
            "used": job["used"],
            "wildcards": job["wildcards"],
        }
        if job["rule"] == "sample" and all(".shards/" in o for o in job["output"]):
            sample_shards[job["output"][0].split(".shards/")[0]] = entry  # one shard of DVC's sample stage
        else:
            jobs.append(entry)
    # sample.shards > 1: the shards and merge_samples together are DVC's one sample stage (same command
    # without --shard, the merged folder as output)
    for merge in merges:
        (out,) = merge["output"]
        jobs.append({**sample_shards.pop(out), "outs": {out}})
    assert not sample_shards, f"sample shards without a merge: {sorted(sample_shards)}"
    return jobs


def dvc_stages(root: Path = ROOT) -> dict[str, dict]:
    """Every stage of dvc.yaml as DVC itself resolves it: stage name -> command, deps, outs, params."""
    stages = {}
    with Repo(str(root)) as repo:
        for stage in repo.index.stages:
            params = [p for d in stage.deps if type(d).__name__ == "ParamsDependency" for p in d.params]
            stages[stage.name] = {
                # `--dataset "$DVC_STAGE"`: prdit takes the name after the stage's `@` (prdit/cli.py)
                "cmd": _normalise(
                    stage.cmd.replace('"$DVC_STAGE"', shlex.quote(stage.name.split("@", 1)[-1]))
                ),
                "outs": {str(o.def_path) for o in stage.outs},
                "deps": {str(d.def_path) for d in stage.deps if type(d).__name__ != "ParamsDependency"},
                "params": params,
            }
    return stages


@pytest.fixture(scope="module", params=CONFIGS, ids=lambda c: c or "params.yaml")
def dags(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict, dict]:
    """Snakemake's jobs with --configfile configs/<c> (and the layers under it) and DVC's stages with those
    values copied into params.yaml and `prdit dvc-yaml` run (what the README tells DVC users to do; without
    experiments/baselines that leaves the committed dvc.yaml as it is), and the merged params."""
    config = request.param
    if config is None:
        return snakemake_jobs(), dvc_stages(), yaml.safe_load((ROOT / "params.yaml").read_text())
    # the checkout's params.yaml + the config, in a folder of only what DVC reads (Snakemake runs in the checkout)
    layers = config_layers(config)
    merged = load(layers).raw
    project = make_dvc_project(tmp_path_factory.mktemp("parity"), merged)
    dvc_yaml.write(load(project / "params.yaml"), project / "dvc.yaml")
    return snakemake_jobs(ROOT, layers[1:]), dvc_stages(project), merged


def test_snakefile_and_dvc_yaml_run_the_same_commands_on_the_same_files(dags) -> None:
    jobs, stages, params = dags
    assert_same_dag(jobs, stages, params)


def assert_same_dag(jobs: list[dict], stages: dict[str, dict], params: dict) -> None:
    """Each Snakemake job is one DVC stage: same command, outputs, inputs and params (DVC also lists the
    `experiments.<E>.*` keys that override what the stage reads: exactly those that exist)."""
    extra = (
        set()
        if params["preprocess"]["highres_size"]
        else {s for s in stages if s.split("@")[0] in ("train-highres", "sample-highres", "evaluate-highres")}
    )  # README: no stage-3 size, no stage-3 jobs
    by_outs = {frozenset(stage["outs"]): name for name, stage in stages.items()}
    assert len(jobs) == len(stages) - len(extra) > 0
    matched = set()
    for job in jobs:
        name = by_outs.get(frozenset(job["outs"]))
        assert name is not None, f"rule {job['rule']} writes {sorted(job['outs'])}: no dvc.yaml stage does"
        stage = stages[name]
        matched.add(name)
        assert job["cmd"] == stage["cmd"], name  # --threads included: DVC passes the rules' threads
        # evaluate.weights (set by the configs) is an input of the evaluate rule; dvc.yaml cannot list a file
        # only when a param is set (no conditionals, a null path does not interpolate), so under DVC the
        # weights reach evaluation through its params (evaluate.weights and evaluate.sha256, checked on load)
        weights = (
            {params["evaluate"]["weights"]}
            if job["rule"] in ("evaluate", "evaluate_baseline") and params["evaluate"]["weights"]
            else set()
        )
        assert job["deps"] == stage["deps"] | weights, name
        if weights:
            assert "evaluate" in stage["params"], name
        listed = [k for k in stage["params"] if not k.startswith("experiments.")]
        assert sorted(set(stage["params"]) - set(listed)) == _overrides_read(job, params), name
        # the same params: DVC lists a download stage's whole `download` and `phantom` sections, the rule
        # only the part its source kind reads (Params.used)
        if job["rule"] == "download":
            assert all(k in listed or k.split(".")[0] in listed for k in job["used"]), name
        else:
            assert job["used"] == sorted(listed), name
    assert matched == set(stages) - extra


def _overrides_read(job: dict, params: dict) -> list[str]:
    """`experiments.<E>.<key>` for each key the job reads that its experiment E overrides: E is the job's
    {experiment}, or for a training job the experiment that trains its {model} (none: the project's own)."""
    wildcards = job["wildcards"]
    experiment = wildcards.get("experiment")
    if job["rule"] == "train" and "-" in wildcards["model"]:
        stage, key = wildcards["model"].split("-", 1)
        experiment = from_dict(params).for_model(stage, key).exp_name
    if experiment is None:
        return []
    found = []
    for key in job["used"]:
        node = params["experiments"][experiment] or {}
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            found.append(f"experiments.{experiment}.{key}")
    return sorted(found)


# two experiments that differ only in the stage-2 model (stage 1 shared, stages 2 and 3 each their own) and
# a baseline at the backbone size
EXPERIMENTS = {
    "experiments": {
        "shallow": {"train": {"global": {"model": "PRDiT-T/10/1"}}},
        "deep": {"train": {"global": {"model": "PRDiT-T/10/3"}}},
    },
    "baselines": {"other": {"dataset": "phantom", "size": 16, "path": "baselines/other", "values": "hu"}},
}


def test_experiments_and_baselines_build_the_same_dag(tmp_path: Path) -> None:
    """`prdit dvc-yaml` for named experiments and a baseline writes the stages of Snakemake's jobs."""
    project = make_project(tmp_path / "project", EXPERIMENTS)
    (project / "baselines" / "other").mkdir(parents=True)  # the baseline's volumes: an input of its job
    res = subprocess.run(["prdit", "dvc-yaml"], cwd=project, capture_output=True, text=True, env=tool_env())
    assert res.returncode == 0, res.stderr
    params = yaml.safe_load((project / "params.yaml").read_text())
    jobs, stages = snakemake_jobs(project), dvc_stages(project)
    rules = {job["rule"] for job in jobs}
    assert {"train", "sample", "evaluate", "evaluate_baseline", "compare"} <= rules
    # stage 1 trains once; stages 2 and 3 once per experiment
    assert sorted(n.split("@")[0] for n in stages if n.startswith("train-")).count("train-local") == 1
    assert sum(n.startswith("train-global-") for n in stages) == 2
    assert_same_dag(jobs, stages, params)


def test_committed_dvc_yaml_is_the_generators_output() -> None:
    assert (ROOT / "dvc.yaml").read_text() == dvc_yaml.render(load(ROOT / "params.yaml")), (
        "run `prdit dvc-yaml`"
    )


def test_a_stale_dvc_yaml_stops_dvc_yaml_check_and_every_dvc_stage(tmp_path: Path) -> None:
    params = deep_merge(yaml.safe_load((ROOT / "params.yaml").read_text()), EXPERIMENTS)
    params["preprocess"].update(size=16, highres_size=32)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))

    def prdit(*args: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["prdit", *args], cwd=tmp_path, capture_output=True, text=True, env=tool_env(**env)
        )

    assert prdit("dvc-yaml").returncode == 0
    assert prdit("dvc-yaml", "--check").returncode == 0
    params["experiments"]["deep"]["train"]["global"]["model"] = "PRDiT-T/10/4"  # another key
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    for res in (
        prdit("dvc-yaml", "--check"),
        prdit("split", "--dataset", "split@phantom", DVC_STAGE="split@phantom"),
    ):
        assert res.returncode == 1
        assert res.stderr.strip().splitlines() == [f"prdit {res.args[1]}: {dvc_yaml.STALE}"], res.stderr
    assert not (tmp_path / "data").exists()  # stopped before any work
    assert prdit("dvc-yaml").returncode == 0
    assert prdit("dvc-yaml", "--check").returncode == 0


def test_every_rule_declares_its_params_log_benchmark_and_resources(tmp_path: Path) -> None:
    """Every job of the DAG, the optional ones included (shards, weights download), as Snakemake built it."""
    every_rule = tmp_path / "every-rule.yaml"
    every_rule.write_text(
        yaml.safe_dump(
            {
                "ingest": {"shards": 2},
                "preprocess": {"shards": 2},
                "sample": {"shards": 2},
                "evaluate": {"weights": "models/extractor/w.pth"},
            }
        )
    )
    res = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "support" / "snakemake_dag.py"), str(ROOT), str(every_rule)],
        capture_output=True,
        text=True,
        env=tool_env(),
    )
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = [job for job in json.loads(res.stdout) if job["rule"] != "all"]
    rules = {job["rule"] for job in jobs}
    assert rules == {
        "download",
        "ingest_plan",
        "ingest_shard",
        "ingest",
        "preprocess_shard",
        "preprocess",
        "split",
        "train",
        "sample",
        "merge_samples",
        "fetch_weights",
        "evaluate",
    }
    for job in jobs:
        name = f"{job['rule']} {job['wildcards']}"
        assert job["log"] and job["benchmark"] and job["conda"], name
        assert {"mem_mb", "runtime"} <= set(job["resources"]), name
        assert job["used"] or job["rule"] == "fetch_weights", f"{name} does not declare the params it reads"
        if job["rule"] in ("train", "sample", "evaluate"):
            assert "gpu" in job["resources"], f"{name} asks for no GPU"
