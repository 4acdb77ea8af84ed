"""The project root, params with overrides, the tools' environment, and throw-away copies of the project to
run the real tools in (the whole checkout for Snakemake and the pipeline; what DVC reads for its DAG)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from prdit.config import Params, deep_merge, load

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
TINY = TESTS / "configs" / "tiny.yaml"
# the tracked stage runs of one pipeline build (MLflow tag prdit.stage), written out, not derived from the code
PIPELINE_STAGES = frozenset(
    {
        "download",
        "ingest",
        "preprocess",
        "split",
        "train-local",
        "train-global",
        "train-highres",
        "sample",
        "evaluate",
    }
)
# what DVC reads to resolve dvc.yaml's stages (besides params.yaml, written by the caller)
DVC_FILES = ("dvc.yaml", ".dvc/config", ".dvc/.gitignore", ".dvcignore")


def params_with(overrides: dict | None = None) -> Params:
    """The project's params.yaml with `overrides` merged in (Snakemake's --config semantics), validated."""
    return load(ROOT / "params.yaml", overrides=overrides)


def project_files() -> list[str]:
    """Tracked and not-ignored files of the checkout (what a clean clone would hold)."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [f for f in out.split("\0") if f and ((ROOT / f).is_file() or (ROOT / f).is_symlink())]


def tool_env(**extra: str) -> dict[str, str]:
    """Environment for subprocesses: the venv's bin first on PATH (rules call `prdit`)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop(
        "PRDIT_TRACKING", None
    )  # the tools track unless a test says otherwise (tracking_off is in-process)
    env.update(extra)
    return env


def _git_commit(dest: Path) -> None:
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(git + ["init", "-q"], cwd=dest, check=True)
    subprocess.run(git + ["add", "-A"], cwd=dest, check=True)
    subprocess.run(git + ["commit", "-qm", "copy"], cwd=dest, check=True)


def make_project(dest: Path, overrides: dict | None = None) -> Path:
    """Copy the project to `dest`, git-init it, and bake tiny.yaml (+ overrides) into its params.yaml."""
    for rel in project_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / rel).is_symlink():  # e.g. the `slurm` profile link at the root
            target.symlink_to(os.readlink(ROOT / rel))
        else:
            shutil.copy2(ROOT / rel, target)
    params = deep_merge(yaml.safe_load((ROOT / "params.yaml").read_text()), yaml.safe_load(TINY.read_text()))
    params = deep_merge(params, overrides or {})
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _git_commit(dest)
    return dest


def make_dvc_project(dest: Path, params: dict) -> Path:
    """A git-committed folder holding only what DVC reads to resolve the stages (DVC_FILES) and `params` as its
    params.yaml: enough for DVC's own view of the DAG, without copying the whole checkout."""
    for rel in DVC_FILES:
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _git_commit(dest)
    return dest


def config_layers(name: str) -> list[Path]:
    """The files `configs/<name>` is used with, as the documented command in its header names them (a study
    such as lidc-depth-study.yaml is a layer over lidc-128.yaml): params.yaml first."""
    header = "\n".join((ROOT / "configs" / name).read_text().splitlines()[:6])
    m = re.search(r"all --configfile ((?:configs/\S+\.yaml ?)+)", header)
    assert m, f"configs/{name}: no `... all --configfile configs/...` command in its header"
    files = [ROOT / f for f in m.group(1).split()]
    assert files[-1].name == name, f"configs/{name}: its command does not end with the file itself"
    return [ROOT / "params.yaml", *files]


def run(cmd: list[str], cwd: Path) -> str:
    """Run a tool in `cwd` with tool_env(); on failure the test fails with its output and the project's logs."""
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=tool_env())
    if res.returncode != 0:
        logs = "\n".join(f"== {p}\n{p.read_text()[-3000:]}" for p in sorted((cwd / "logs").rglob("*.log")))
        pytest.fail(
            f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}\n{logs}"
        )
    return res.stdout + res.stderr


def planned_jobs(cwd: Path, *extra: str, target: str = "all") -> dict[str, int]:
    """What a dry run plans: "<rule> <wildcard values but the dataset>" -> number of jobs (e.g. "train
    highres", "sample 32": the rules are one per stage kind, the wildcards say which stage or size)."""
    text = run(["snakemake", "-n", target, *extra], cwd)
    jobs: dict[str, int] = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", text):
        m = re.match(r"(?:local)?rule (\w+):", block)
        if not m or m.group(1) == "all":
            continue
        wildcards = re.search(r"^\s+wildcards: (.*)$", block, re.M)
        values = dict(kv.split("=", 1) for kv in wildcards.group(1).split(", ")) if wildcards else {}
        values.pop("dataset", None)
        values.pop("shard", None)  # shards of one job kind count together
        key = " ".join([m.group(1), *values.values()])
        jobs[key] = jobs.get(key, 0) + 1
    return jobs
