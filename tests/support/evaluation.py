"""The tiny synthetic project of the evaluate tests (the `toy_eval` fixture of tests/unit/evaluate/conftest.py):
real cases, generated samples (one a memorized copy, one of the wrong size), splits, all 16^3."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from prdit import paths
from prdit.evaluate.run import EvalSettings, Scored, evaluate, score
from prdit.hu import to_hu as unit_to_hu
from prdit.io import write_nifti
from prdit.stages.evaluate import inputs

WINDOW = (-1000.0, 1000.0)
SIZE = 16
SPLITS = {"train": ["c0", "c1", "c2", "c3"], "val": ["c4"], "test": ["c5"]}


def phantom(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """A smooth body-like blob in [-1, 1]: air outside, soft tissue, two darker 'lungs'."""
    z, y, x = np.mgrid[:size, :size, :size] / size - 0.5
    r = 0.35 + 0.05 * rng.random()
    body = (x**2 + y**2) < r**2
    lung = ((np.abs(x) - 0.13 - 0.03 * rng.random()) ** 2 + y**2) < (0.09 + 0.02 * rng.random()) ** 2
    v = np.where(body, 0.05, -1.0) - 0.75 * lung + 0.05 * rng.normal(size=body.shape)
    return np.clip(v, -1, 1).astype(np.float32)


def write_toy_eval() -> None:
    """The toy project's files, written under the current folder (dataset `toy`, size SIZE)."""
    rng = np.random.default_rng(0)
    spacing = (8.0, 8.0, 8.0)
    real = {}
    for split, ids in SPLITS.items():
        Path("data/splits/toy").mkdir(parents=True, exist_ok=True)
        Path(f"data/splits/toy/{split}.txt").write_text("\n".join(ids) + "\n")
        for case in ids:
            real[case] = phantom(rng)
            write_nifti(f"data/processed/toy/{SIZE}/{case}.nii.gz", real[case], spacing)
    for i in range(5):
        write_nifti(f"samples/toy/{SIZE}/{i}.nii.gz", unit_to_hu(phantom(rng), WINDOW), spacing)
    write_nifti(f"samples/toy/{SIZE}/5.nii.gz", unit_to_hu(real["c1"], WINDOW), spacing)  # a memorized copy
    write_nifti(f"samples/toy/{SIZE}/6.nii.gz", np.zeros((8, 8, 8), np.float32), spacing)  # wrong size


def score_toy(settings: EvalSettings, **kw) -> Scored:
    """prdit.evaluate.run.score of dataset `toy` at SIZE, its inputs where the project's layout keeps them."""
    return score("toy", SIZE, settings, inputs("toy", SIZE), **kw)


def evaluate_toy(settings: EvalSettings, name: str | None = None, **kw) -> tuple[dict, Path, Path]:
    """prdit.evaluate.run.evaluate of dataset `toy` at SIZE, its inputs and outputs (those of `name`, an
    experiment or a baseline; None: the project's) where the project's layout keeps them."""
    return evaluate(
        "toy",
        SIZE,
        settings,
        inputs("toy", SIZE),
        metrics_path=paths.metrics("toy", SIZE, name),
        report_dir=paths.reports("toy", SIZE, name),
        **kw,
    )
