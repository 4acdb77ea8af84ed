"""The Snakefile and dvc.yaml describe one DAG: same prdit commands, same outputs, same inputs, same params."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from dvc.repo import Repo

from prdit.config import STAGE_PARAMS, load
from tests.conftest import ROOT, make_project, params_with, tool_env

# --params: the files Snakemake merged (DVC reads params.yaml); --plan/--shard/--write-plan: Snakemake's
# scatter-gather of the per-case data stages (ingest.shards / preprocess.shards), which DVC runs as one job
IGNORED_OPTIONS = {"--params", "--plan", "--shard", "--write-plan"}
# Snakemake-only jobs: the shards of a stage DVC runs whole (their temporary outputs under *.shards/), and
# fetch_weights (DVC users run `prdit fetch-weights` once, README)
SNAKEMAKE_ONLY = {"ingest_plan", "ingest_shard", "preprocess_shard", "merge_samples", "fetch_weights"}
CONFIGS = [None, *sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))]


def _normalise(cmd: str) -> tuple[str, ...]:
    """The prdit command and its arguments, without log redirection and per-runner options."""
    words = shlex.split(cmd.split(">")[0])
    words = words[
        len(words) - 1 - words[::-1].index("prdit") :
    ]  # launchers before it (exec prdit launch ...) are how, not what
    out, skip = [], False
    for word in words:
        if skip:
            skip = False
        elif word in IGNORED_OPTIONS:
            skip = True
        else:
            out.append(word)
    return tuple(out)


def snakemake_jobs(root: Path = ROOT, config: str | None = None) -> dict[str, dict]:
    """Every job of a forced dry run: rule name -> command, inputs, outputs (threads as the rules set them)."""
    cmd = ["snakemake", "-n", "-F", "-p", "--cores", "256"] + (
        ["--configfile", str(ROOT / "configs" / config)] if config else []
    )
    text = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=tool_env(), check=True).stdout
    jobs = {}
    for block in re.split(r"\n(?=rule \w+:)", text):
        m = re.match(r"rule (\w+):", block)
        if not m or m.group(1) == "all" or m.group(1) in SNAKEMAKE_ONLY:
            continue
        field = lambda name, block=block: re.search(rf"^    {name}: (.*)$", block, re.M)  # noqa: E731
        cmd = re.search(r"^Shell command: (.*)$", block, re.M)
        jobs[m.group(1)] = {
            "cmd": _normalise(cmd.group(1)),
            "outs": set(field("output").group(1).split(", ")),
            "deps": {d for d in field("input").group(1).split(", ") if ".shards/" not in d}
            if field("input")
            else set(),
        }
    return jobs


def dvc_stages(root: Path = ROOT) -> dict[str, dict]:
    """Every stage of dvc.yaml as DVC itself resolves it: stage name -> command, deps, outs, params."""
    stages = {}
    with Repo(str(root)) as repo:
        for stage in repo.index.stages:
            params = [p for d in stage.deps if type(d).__name__ == "ParamsDependency" for p in d.params]
            stages[stage.name.split("@")[0]] = {
                "cmd": _normalise(stage.cmd),
                "outs": {str(o.def_path) for o in stage.outs},
                "deps": {str(d.def_path) for d in stage.deps if type(d).__name__ != "ParamsDependency"},
                "params": params,
            }
    return stages


@pytest.fixture(scope="module", params=CONFIGS, ids=lambda c: c or "params.yaml")
def dags(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict, dict]:
    """Snakemake's jobs with --configfile configs/<c> and DVC's stages with that config's values copied into
    params.yaml (what the README tells DVC users to do), and the merged params."""
    config = request.param
    if config is None:
        return snakemake_jobs(), dvc_stages(), yaml.safe_load((ROOT / "params.yaml").read_text())
    # the checkout's params.yaml + the config (make_project would also bake in the tiny test params)
    project = make_project(tmp_path_factory.mktemp("parity"))
    merged = load([ROOT / "params.yaml", ROOT / "configs" / config]).raw
    (project / "params.yaml").write_text(yaml.safe_dump(merged, sort_keys=False))
    return snakemake_jobs(ROOT, config), dvc_stages(project), merged


def test_snakefile_and_dvc_yaml_run_the_same_commands_on_the_same_files(dags) -> None:
    jobs, stages, params = dags
    extra = (
        set()
        if params["preprocess"]["highres_size"]
        else {"train-highres", "sample-highres", "evaluate-highres"}
    )
    assert (
        set(jobs) and {name.replace("_", "-") for name in jobs} == set(stages) - extra
    )  # README: no 256^3 stage
    for rule, job in jobs.items():
        stage = stages[rule.replace("_", "-")]
        assert job["cmd"] == stage["cmd"], rule  # --threads included: DVC passes the rules' threads
        assert job["outs"] == stage["outs"], rule
        # evaluate.weights (set by the configs) is an input of the evaluate rules; dvc.yaml cannot list a file
        # only when a param is set (no conditionals, a null path does not interpolate), so under DVC the
        # weights reach evaluation through its params (evaluate.weights and evaluate.sha256, checked on load)
        weights = (
            {params["evaluate"]["weights"]}
            if rule.startswith("evaluate") and params["evaluate"]["weights"]
            else set()
        )
        assert job["deps"] == stage["deps"] | weights, rule
        if weights:
            assert "evaluate" in stage["params"], rule


def test_dvc_stages_list_exactly_the_params_each_stage_reads() -> None:
    stages = dvc_stages()
    dataset = params_with().datasets[0]
    for name, stage in stages.items():
        key = name.split("-")[0] if name.startswith(("sample", "evaluate")) else name
        expected = [p.format(dataset=dataset) for p in STAGE_PARAMS[key]]
        assert stage["params"] == expected, name


def test_every_rule_declares_its_params_log_benchmark_and_resources() -> None:
    for path in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        for rule in re.split(r"\n(?=rule )", path.read_text())[1:]:
            name = re.match(r"rule (\w+):", rule).group(1)
            for directive in (
                "log:",
                "benchmark:",
                "threads:",
                "resources:",
                "mem_mb=",
                "runtime=",
                "conda:",
            ):
                assert directive in rule, f"{path.name}: rule {name} lacks {directive}"
            stage = (
                name.replace("_", "-").replace("-base", "").replace("-highres", "")
                if name.startswith(("sample", "evaluate"))
                else name.replace("_", "-")
            )
            assert f'used("{stage}")' in rule, f"rule {name} does not declare the params it reads"
            if name.startswith(("train", "sample", "evaluate")):
                assert "gpu=" in rule, f"rule {name} asks for no GPU"
