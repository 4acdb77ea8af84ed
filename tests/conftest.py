"""Shared fixtures and hooks: params shrunk for training, tracking off by default, and a throw-away copy of
the project to run the real tools in (`project_copy`). The helpers they use live in tests/support/."""

from __future__ import annotations

from pathlib import Path

import pytest

from prdit.config import Params
from tests.support.project import make_project, params_with

pytest_plugins = ["tests.support.skip_guard"]  # under CI=true an unexpected skip fails the run


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


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    """A git-committed copy of the project with tiny.yaml baked into params.yaml."""
    return make_project(tmp_path / "project")
