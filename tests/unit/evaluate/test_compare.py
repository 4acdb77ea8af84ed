"""`prdit compare` on fabricated evaluations: table, chart, montage, refusals and the MLflow run.

The metrics files are copies of one real `prdit evaluate` output (tests/fixtures/compare/metrics.json, the toy
evaluation of tests/unit/evaluate/test_run.py) with each row's numbers changed; mid_slices.npz files follow the
contract of prdit.evaluate.run (float32 HU mid-slices of the first generated and first real train volume).
"""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from prdit import paths
from prdit.errors import MissingInputError, describe
from prdit.evaluate import compare
from prdit.evaluate.compare import CELL, FLOOR_ROW, ComparisonError, panel_origin
from prdit.stages.compare import run as run_compare
from tests.support.project import params_with

BASE = json.loads((Path(__file__).parents[2] / "fixtures" / "compare" / "metrics.json").read_text())
DATASET, SIZE = "phantom", 32
WINDOW = (-1000.0, 1000.0)
# row -> (FID, HU of its fabricated mid-slices); the real slices are -1000 HU (black)
ROWS = {"fast": (0.02, 0.0), "slow": (0.05, -500.0), "medsyn": (0.09, 1000.0)}
REAL_HU = -1000.0
EXPERIMENTS = {"experiments": {"fast": {"sample": {"steps": 5}}, "slow": None}}
BASELINES = {
    "baselines": {
        "medsyn": {"dataset": DATASET, "size": SIZE, "path": "elsewhere/medsyn", "values": "hu"},
        "big": {"dataset": DATASET, "size": 64, "path": "elsewhere/big", "values": "hu"},  # not at 32
    }
}


def metrics_of(fid: float, seed: int) -> dict:
    """The fixture's record for DATASET/SIZE with its generated-row numbers changed (floors kept)."""
    m = copy.deepcopy(BASE) | {"dataset": DATASET, "size": SIZE}
    m["fid"], m["fid_x1e3"] = fid, fid * 1e3
    m["fid_ci95"] = {"low": fid * 0.8, "high": fid * 1.5, "level": 0.95, "n": 20}
    m["fid_x1e3_ci95"] = {"low": fid * 800, "high": fid * 1500, "level": 0.95, "n": 20}
    m["mmd_reference"] = 0.1 + seed
    m["ms_ssim"], m["ms_ssim_std"] = 0.5 + seed / 10, 0.01 * (seed + 1)
    m["seam_ratio"], m["texture_ratio"] = 1.0 + seed / 100, 0.9 + seed / 100
    m["n"]["generated"] = 10 + seed
    return m


def write_row(name: str | None, fid: float, hu: float, seed: int) -> dict:
    """metrics/<ds>[/<name>]/<size>.json and reports/.../mid_slices.npz of one evaluated row."""
    m = metrics_of(fid, seed)
    path = paths.metrics(DATASET, SIZE, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(m))
    report = paths.reports(DATASET, SIZE, name)
    report.mkdir(parents=True, exist_ok=True)
    gen = {f"generated_{v}": np.full((SIZE, SIZE), hu, np.float32) for v in compare.VIEWS}
    real = {f"real_{v}": np.full((SIZE, SIZE), REAL_HU, np.float32) for v in compare.VIEWS}
    np.savez(report / "mid_slices.npz", **gen, **real)
    return m


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Two experiments and one baseline at phantom/32, evaluated; the params that name them."""
    monkeypatch.chdir(tmp_path)
    for seed, (name, (fid, hu)) in enumerate(ROWS.items()):
        write_row(name, fid, hu, seed)
    return params_with(EXPERIMENTS | BASELINES)


def out_dir() -> Path:
    return paths.compare(DATASET, SIZE)


def test_table_rows_and_values_match_the_metrics_files(project) -> None:
    run_compare(project, DATASET, SIZE)
    rec = json.loads((out_dir() / "compare.json").read_text())
    assert rec["order"] == ["fast", "slow", "medsyn"]  # experiments in order, then the matching baseline
    assert [rec["rows"][n]["kind"] for n in rec["order"]] == ["experiment", "experiment", "baseline"]
    for seed, (name, (fid, _)) in enumerate(ROWS.items()):
        m, row = metrics_of(fid, seed), rec["rows"][name]
        assert row["fid"] == m["fid"] and row["fid_x1e3"] == pytest.approx(fid * 1e3)
        assert (row["fid_x1e3_low"], row["fid_x1e3_high"]) == (fid * 800, fid * 1500)
        assert row["mmd"] == m["mmd_reference"] and row["ms_ssim_sd"] == m["ms_ssim_std"]
        assert (row["seam_ratio"], row["texture_ratio"]) == (m["seam_ratio"], m["texture_ratio"])
        assert row["metrics_file"] == f"metrics/{DATASET}/{name}/{SIZE}.json"
    assert rec["floor"]["fid_x1e3"] == BASE["fid_floor_x1e3"]
    assert rec["floor"]["seam_ratio"] == BASE["seam_ratio_real"]
    assert rec["floor"]["texture_ratio"] == BASE["texture_ratio_floor"]
    assert rec["evaluation"]["window"] == list(WINDOW) and rec["notes"] == []

    with open(out_dir() / "table.csv") as fh:
        table = list(csv.DictReader(fh))
    assert [r["row"] for r in table] == ["fast", "slow", "medsyn", FLOOR_ROW]
    assert float(table[1]["fid_x1e3"]) == pytest.approx(50.0) and float(table[1]["fid_x1e3_high"]) == 75.0
    assert float(table[3]["fid"]) == BASE["fid_floor"] and table[3]["fid_low"] == ""  # no floor interval
    md = (out_dir() / "table.md").read_text()
    assert "| medsyn | baseline | 0.09 [0.072, 0.135] | 90 [72, 135] |" in md
    assert f"| {FLOOR_ROW} | floor |" in md and "big" not in md  # the 64^3 baseline is not in this table
    html = (out_dir() / "table.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and "<td>slow</td>" in html


def test_chart_and_montage_are_drawn_at_one_grey_scale(project) -> None:
    run_compare(project, DATASET, SIZE)
    with Image.open(out_dir() / "fid.png") as fid:
        assert fid.format == "PNG" and fid.width > 300 and fid.height > 200
    with Image.open(out_dir() / "montage.png") as im:
        grid = np.asarray(im)
    gap, label_w, header_h = compare.GAP, compare.LABEL_W, compare.HEADER_H
    # real + 3 rows, 3 views each: a label column, a title band, panels CELL wide with GAP between them
    assert grid.shape == (header_h + 4 * CELL + 3 * gap, label_w + 3 * CELL + 2 * gap)
    assert panel_origin(3, 2) == (label_w + 2 * (CELL + gap), header_h + 3 * (CELL + gap))
    centres = [
        (panel_origin(r, c)[1] + CELL // 3, panel_origin(r, c)[0] + CELL // 2)
        for r in range(4)
        for c in range(3)
    ]
    hus = [REAL_HU] * 3 + [hu for _, hu in ROWS.values() for _ in range(3)]
    expected = [int((hu - WINDOW[0]) / (WINDOW[1] - WINDOW[0]) * 255) for hu in hus]
    assert [int(grid[y, x]) for y, x in centres] == expected  # 0 HU is mid-grey in every row


def test_different_extractor_or_window_is_refused_naming_both_rows(project) -> None:
    for key, value in (
        ("extractor", {**BASE["extractor"], "name": "other-net"}),
        ("input", {**BASE["input"], "window": [-1200, 600]}),
    ):
        m = metrics_of(0.05, 1) | {key: value}
        paths.metrics(DATASET, SIZE, "slow").write_text(json.dumps(m))
        with pytest.raises(ComparisonError) as err:
            run_compare(project, DATASET, SIZE)
        line = describe(err.value)
        assert "\n" not in line and "'fast' and 'slow'" in line and key in line
    assert not out_dir().exists()


def test_different_floors_are_refused(project) -> None:
    m = metrics_of(0.09, 2) | {"fid_floor": BASE["fid_floor"] * 1.1}
    paths.metrics(DATASET, SIZE, "medsyn").write_text(json.dumps(m))
    with pytest.raises(ComparisonError, match="'fast' and 'medsyn' have different real-vs-real floors"):
        run_compare(project, DATASET, SIZE)


def test_a_missing_metrics_file_is_a_one_line_error_naming_it(project) -> None:
    missing = paths.metrics(DATASET, SIZE, "medsyn")
    missing.unlink()
    with pytest.raises(MissingInputError) as err:
        run_compare(project, DATASET, SIZE)
    line = describe(err.value)
    assert "\n" not in line and str(err.value).startswith(str(missing)) and "'medsyn'" in line


def test_a_field_a_metrics_file_lacks_is_noted_and_missing_slices_are_shown_blank(project) -> None:
    m = metrics_of(0.05, 1)
    del m["feature_cache"]
    paths.metrics(DATASET, SIZE, "slow").write_text(json.dumps(m))
    (paths.reports(DATASET, SIZE, "medsyn") / "mid_slices.npz").unlink()
    run_compare(project, DATASET, SIZE)
    notes = json.loads((out_dir() / "compare.json").read_text())["notes"]
    assert any(n.startswith("slow:") and "feature_cache" in n for n in notes)
    assert any(n.startswith("medsyn:") and "mid_slices.npz" in n for n in notes)
    grid = np.asarray(Image.open(out_dir() / "montage.png"))
    left, top = panel_origin(3, 0)
    assert grid[top + 4, left + 4] == 40  # the placeholder panel of medsyn


def test_without_experiments_the_project_model_is_the_row(project) -> None:
    write_row(None, 0.03, 0.0, 0)
    run_compare(params_with(BASELINES), DATASET, SIZE)
    rec = json.loads((out_dir() / "compare.json").read_text())
    assert rec["order"] == ["prdit", "medsyn"] and rec["rows"]["prdit"]["kind"] == "project"
    assert rec["rows"]["prdit"]["metrics_file"] == f"metrics/{DATASET}/{SIZE}.json"


def test_the_comparison_is_its_own_mlflow_run(project, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("PRDIT_TRACKING")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_compare(project, DATASET, SIZE)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name(project.experiment)
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_name == f"compare/{DATASET}/{SIZE}" and run.info.status == "FINISHED"
    assert (
        run.data.tags["prdit.stage"] == "compare"
        and run.data.tags["prdit.compare_rows"] == "fast,slow,medsyn"
    )
    assert "prdit.experiment_name" not in run.data.tags  # the comparison belongs to no one experiment
    assert run.data.metrics["fid_x1e3.slow"] == pytest.approx(50.0)
    assert run.data.metrics["fid_x1e3.real_floor"] == pytest.approx(BASE["fid_floor_x1e3"])
    assert run.data.metrics["ms_ssim_sd.medsyn"] == pytest.approx(0.03)
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "compare")}
    assert {
        f"compare/{f}"
        for f in ("table.md", "table.csv", "table.html", "fid.png", "montage.png", "compare.json")
    } == logged
