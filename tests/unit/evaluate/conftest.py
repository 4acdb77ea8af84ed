"""Fixtures of the evaluate tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.evaluation import write_toy_eval


@pytest.fixture
def toy_eval(tmp_path, monkeypatch) -> Path:
    """The tiny synthetic project of the evaluate tests (tests/support/evaluation.py), the current folder."""
    monkeypatch.chdir(tmp_path)
    write_toy_eval()
    return tmp_path
