"""Under CI=true an unlisted skip makes pytest exit non-zero (tests/support/skip_guard.py), with or without xdist."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.project import ROOT

SUITE = """
import pytest

def test_runs():
    assert True

def test_needs_a_tool():
    pytest.skip("sometool is not installed")

@pytest.mark.xfail(reason="known")
def test_known_failure():
    assert False
"""


def run_suite(tmp_path: Path, ci: str | None, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_suite.py").write_text(SUITE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.support.skip_guard",
            "-p",
            "no:cacheprovider",
            "-q",
            "-rs",
        ]
        + [*args, str(tmp_path / "test_suite.py")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_an_unlisted_skip_fails_the_run_under_ci(tmp_path: Path, xdist: list[str]) -> None:
    res = run_suite(tmp_path, "true", *xdist)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "unexpected skips under CI=true" in res.stdout
    assert "test_suite.py::test_needs_a_tool: sometool is not installed" in " ".join(res.stdout.split())
    assert "test_known_failure" not in res.stdout.split("unexpected skips")[1], "an xfail is not a skip"


def test_outside_ci_a_skip_is_only_reported(tmp_path: Path) -> None:
    res = run_suite(tmp_path, None)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 skipped" in res.stdout and "unexpected skips" not in res.stdout
