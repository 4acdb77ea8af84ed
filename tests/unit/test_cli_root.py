"""prdit works in one project root: it refuses a foreign folder, and --root / PRDIT_ROOT name the root."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from prdit import paths
from prdit.cli import main
from tests.support.project import ROOT

SMALL = {"phantom": {"patients": 1, "matrix": 32, "z_extent_mm": 60.0}}


def _project(folder: Path) -> Path:
    folder.mkdir()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["phantom"].update(SMALL["phantom"])
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    return folder


def test_prdit_refuses_to_run_outside_a_project_root(tmp_path: Path, monkeypatch, capsys) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["download", "--params", str(ROOT / "params.yaml"), "--dataset", "phantom"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(elsewhere) in err and "PRDIT_ROOT" in err
    assert list(elsewhere.iterdir()) == []  # nothing written into the foreign folder


@pytest.mark.parametrize("how", ["--root", "PRDIT_ROOT"])
def test_an_explicit_root_receives_the_outputs(tmp_path: Path, monkeypatch, how: str) -> None:
    project = _project(tmp_path / "project")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    args = ["download", "--dataset", "phantom"]
    if how == "--root":
        args = ["--root", str(project), *args]
    else:
        monkeypatch.setenv(paths.ROOT_ENV, str(project))
    assert main(args) == 0
    assert list((project / paths.raw("phantom")).rglob("*.dcm"))
    assert list(elsewhere.iterdir()) == []


def test_a_wrong_root_is_named_in_the_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(paths.ROOT_ENV, str(tmp_path))
    with pytest.raises(paths.NotAProjectError, match=f"{tmp_path} \\(PRDIT_ROOT=.*not a prdit project root"):
        paths.project_root()
    assert paths.project_root(ROOT) == ROOT.resolve()
