"""Shared test scaffolding: the project root, params with overrides, tracking off by default, and a
throw-away copy of the project to run the real tools in (`project_copy`)."""

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

pytest_plugins = ["tests.skip_guard"]  # under CI=true an unexpected skip fails the run

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "configs" / "tiny.yaml"
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


def params_with(overrides: dict | None = None) -> Params:
    """The project's params.yaml with `overrides` merged in (Snakemake's --config semantics), validated."""
    return load(ROOT / "params.yaml", overrides=overrides)


@pytest.fixture
def tiny_train(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Params:
    """Demo params shrunk to 16^3 (stage 3 at 32^3) and a few steps, run in an empty project folder."""
    monkeypatch.chdir(tmp_path)
    common = {"checkpoint_every": 2, "val_every": 2, "log_every": 1, "preview_every": 0}
    return params_with(
        {
            "preprocess": {"size": 16, "highres_size": 32},
            "train": {
                "common": common,
                "local": {"model": "PRDiT-T/8/0", "steps": 3, "batch_size": 2},
                "global": {"model": "PRDiT-T/8/1", "steps": 3, "batch_size": 2},
                "highres": {"model": "PRDiT-HR-T/8/1", "steps": 2, "batch_size": 1},
            },
            "sample": {"steps": 2, "k": 1},
        }
    )


@pytest.fixture(autouse=True)
def tracking_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """No MLflow unless a test asks for it (by deleting PRDIT_TRACKING): most tests are about files."""
    monkeypatch.setenv("PRDIT_TRACKING", "off")


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
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(git + ["init", "-q"], cwd=dest, check=True)
    subprocess.run(git + ["add", "-A"], cwd=dest, check=True)
    subprocess.run(git + ["commit", "-qm", "copy"], cwd=dest, check=True)
    return dest


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    """A git-committed copy of the project with tiny.yaml baked into params.yaml."""
    return make_project(tmp_path / "project")


def config_layers(name: str) -> list[Path]:
    """The files `configs/<name>` is used with, as the documented command in its header names them (a study
    such as lidc-depth-study.yaml is a layer over lidc-128.yaml): params.yaml first."""
    header = "\n".join((ROOT / "configs" / name).read_text().splitlines()[:6])
    m = re.search(r"all --configfile ((?:configs/\S+\.yaml ?)+)", header)
    assert m, f"configs/{name}: no `... all --configfile configs/...` command in its header"
    files = [ROOT / f for f in m.group(1).split()]
    assert files[-1].name == name, f"configs/{name}: its command does not end with the file itself"
    return [ROOT / "params.yaml", *files]
