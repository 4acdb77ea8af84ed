"""The Snakefile and dvc.yaml describe one DAG: same prdit commands, same outputs, same inputs, same params."""

from __future__ import annotations

import re
import shlex
import subprocess

from dvc.repo import Repo

from prdit.config import STAGE_PARAMS, load
from tests.conftest import ROOT, tool_env

IGNORED_OPTIONS = {"--params", "--threads"}  # files Snakemake merged; pool size from the rule's threads


def _normalise(cmd: str) -> tuple[str, ...]:
    """The prdit command and its arguments, without log redirection and per-runner options."""
    words = shlex.split(cmd.split(">")[0])
    words = words[words.index("prdit"):]  # launchers before it (exec torchrun ...) are how, not what
    out, skip = [], False
    for word in words:
        if skip:
            skip = False
        elif word in IGNORED_OPTIONS:
            skip = True
        else:
            out.append(word)
    return tuple(out)


def snakemake_jobs() -> dict[str, dict]:
    """Every job of a forced dry run: rule name -> command, inputs, outputs."""
    text = subprocess.run(["snakemake", "-n", "-F", "-p"], cwd=ROOT, capture_output=True, text=True,
                          env=tool_env(), check=True).stdout
    jobs = {}
    for block in re.split(r"\n(?=rule \w+:)", text):
        m = re.match(r"rule (\w+):", block)
        if not m or m.group(1) == "all":
            continue
        field = lambda name: re.search(rf"^    {name}: (.*)$", block, re.M)  # noqa: E731
        cmd = re.search(r"^Shell command: (.*)$", block, re.M)
        jobs[m.group(1)] = {
            "cmd": _normalise(cmd.group(1)),
            "outs": set(field("output").group(1).split(", ")),
            "deps": set(field("input").group(1).split(", ")) if field("input") else set(),
        }
    return jobs


def dvc_stages() -> dict[str, dict]:
    """Every stage of dvc.yaml as DVC itself resolves it: stage name -> command, deps, outs, params."""
    stages = {}
    with Repo(str(ROOT)) as repo:
        for stage in repo.index.stages:
            params = [p for d in stage.deps if type(d).__name__ == "ParamsDependency" for p in d.params]
            stages[stage.addressing.split("@")[0]] = {
                "cmd": _normalise(stage.cmd),
                "outs": {str(o.def_path) for o in stage.outs},
                "deps": {str(d.def_path) for d in stage.deps if type(d).__name__ != "ParamsDependency"},
                "params": params,
            }
    return stages


def test_snakefile_and_dvc_yaml_run_the_same_commands_on_the_same_files() -> None:
    jobs, stages = snakemake_jobs(), dvc_stages()
    assert set(jobs) and {name.replace("_", "-") for name in jobs} == set(stages)
    for rule, job in jobs.items():
        stage = stages[rule.replace("_", "-")]
        assert job["cmd"] == stage["cmd"], rule
        assert job["cmd"][0] == "prdit", rule
        assert job["outs"] == stage["outs"], rule
        assert job["deps"] == stage["deps"], rule


def test_dvc_stages_list_exactly_the_params_each_stage_reads() -> None:
    stages = dvc_stages()
    dataset = load(ROOT / "params.yaml").datasets[0]
    for name, stage in stages.items():
        key = name.split("-")[0] if name.startswith(("sample", "evaluate")) else name
        expected = [p.format(dataset=dataset) for p in STAGE_PARAMS[key]]
        assert stage["params"] == expected, name


def test_every_rule_declares_its_params_log_benchmark_and_resources() -> None:
    for path in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        for rule in re.split(r"\n(?=rule )", path.read_text())[1:]:
            name = re.match(r"rule (\w+):", rule).group(1)
            for directive in ("log:", "benchmark:", "threads:", "resources:", "mem_mb=", "runtime=", "conda:"):
                assert directive in rule, f"{path.name}: rule {name} lacks {directive}"
            stage = name.replace("_", "-").replace("-base", "").replace("-highres", "") \
                if name.startswith(("sample", "evaluate")) else name.replace("_", "-")
            assert f'used("{stage}")' in rule, f"rule {name} does not declare the params it reads"
            if name.startswith(("train", "sample", "evaluate")):
                assert "gpu=" in rule, f"rule {name} asks for no GPU"
