"""`prdit compare`: one table, chart and montage grid of every experiment and baseline of one dataset and
size, written to reports/<ds>/compare/<size>/ and logged as one MLflow run (the comparison:
prdit.evaluate.compare)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from prdit import paths, topology, tracking
from prdit.evaluate.compare import (
    FLOOR_METRIC,
    PROJECT_ROW,
    ComparisonError,
    Row,
    check_same_evaluation,
    numbers,
    read_row,
    write_comparison,
)

if TYPE_CHECKING:
    from prdit.config import Params


def row_specs(p: Params, dataset: str, size: int) -> list[tuple[str, str, str | None]]:
    """(label, kind, path name) of each row: the experiments (or the project's model), then the baselines."""
    own = [(n, "experiment", n) for n in p.experiments()] or [(PROJECT_ROW, "project", None)]
    base = [(n, "baseline", n) for n, b in p.baselines.items() if b.dataset == dataset and b.size == size]
    if PROJECT_ROW in {n for n, _, _ in base} and own[0][1] == "project":
        raise ComparisonError(
            f"baselines.{PROJECT_ROW}: the name of the project's own row; rename the baseline"
        )
    return own + base


def read_rows(p: Params, dataset: str, size: int) -> list[Row]:
    """Every row of the comparison of `dataset` at `size`, in table order."""
    return [
        read_row(
            paths.metrics(dataset, size, name), paths.reports(dataset, size, name), dataset, size, label, kind
        )
        for label, kind, name in row_specs(p, dataset, size)
    ]


def mlflow_metrics(record: dict) -> dict[str, float]:
    """Each row's numbers as `<column>.<row>` (e.g. fid_x1e3.fast), the floor's as `<column>.real_floor`."""
    out = {}
    named = [(n, record["rows"][n]) for n in record["order"]] + [(FLOOR_METRIC, record["floor"])]
    for name, nums in named:
        for key in numbers({}):
            if nums.get(key) is not None:
                out[f"{key}.{name}"] = float(nums[key])
    return out


def log_comparison(run: tracking.StageRun, record: dict, folder: Path) -> None:
    """Tags, per-row metrics and every output of the comparison on its MLflow run."""
    ext = record["evaluation"]["extractor"]
    run.set_tags(
        {
            "prdit.compare_rows": ",".join(record["order"]),
            "prdit.protocol": record["evaluation"]["protocol"],
            "prdit.extractor": ext["name"],
            "prdit.extractor_pretrained": str(ext["pretrained"]).lower(),
        }
    )
    run.log_metrics(mlflow_metrics(record))
    for f in sorted(folder.iterdir()):
        if f.suffix == ".png":
            run.log_image(f, artifact_path="compare")
        else:
            run.log_artifact(f, artifact_path="compare")


def run(p: Params, dataset: str, size: int) -> None:
    """Stage function of `prdit compare`: the comparison of every experiment and baseline at one size."""
    topology.sampler(size, p.preprocess.size, p.preprocess.highres_size)  # a size this config generates
    rows = read_rows(p, dataset, size)
    notes = check_same_evaluation(rows)
    used = {
        "experiments": list(p.experiments()),
        "baselines": [r.name for r in rows if r.kind == "baseline"],
        "preprocess.window": list(p.preprocess.window),
    }
    with tracking.stage_run(p, stage="compare", dataset=dataset, size=size, used=used) as run:
        folder = paths.compare(dataset, size)
        record = write_comparison(folder, dataset, size, rows, notes, p.preprocess.window)
        log_comparison(run, record, folder)
