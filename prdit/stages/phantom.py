"""`prdit phantom`: the synthetic chest-CT DICOM dataset (prdit.data.phantom) as a stage of its own (one
MLflow run)."""

from __future__ import annotations

from pathlib import Path

from prdit import tracking
from prdit.config import Params
from prdit.data.phantom import write_phantom


def run(p: Params, out: Path) -> None:
    """`prdit phantom`: write params `phantom` to `out`."""
    with tracking.stage_run(p, stage="phantom", dataset="phantom", used=p.used("phantom")) as run:
        run.log_metrics(write_phantom(p.phantom, out))
