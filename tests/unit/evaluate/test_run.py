"""The evaluate stage end to end on a tiny synthetic project: outputs, floors, audit, cache, determinism."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from prdit.errors import MissingInputError
from prdit.evaluate.run import EvalSettings
from prdit.evaluate.volumes import EvalInputs
from prdit.hu import to_hu as unit_to_hu
from prdit.io import write_nifti
from prdit.stages.evaluate import inputs, numeric
from prdit.stages.evaluate import run as run_evaluate
from tests.support.evaluation import SIZE, SPLITS, WINDOW, evaluate_toy, phantom
from tests.support.project import params_with


def _run(**kw):
    return evaluate_toy(EvalSettings(WINDOW, ms_ssim_pairs=4, bootstrap=20, seed=0), **kw)


def test_evaluate_writes_metrics_report_floors_and_audit(toy_eval, caplog):
    caplog.set_level(logging.INFO)
    m, metrics_path, report = _run()
    assert metrics_path == Path(f"metrics/toy/{SIZE}.json")
    on_disk = json.loads(metrics_path.read_text())
    assert on_disk["fid"] == pytest.approx(m["fid"])
    for key in (
        "fid",
        "fid_x1e3",
        "fid_floor",
        "fid_floor_x1e3",
        "mmd_reference",
        "mmd_reference_floor",
        "mmd_unbiased",
        "mmd_unbiased_floor",
        "ms_ssim",
        "ms_ssim_floor",
        "fid_at_floor_n",
    ):
        assert isinstance(on_disk[key], float), key
    assert on_disk["fid_x1e3"] == pytest.approx(on_disk["fid"] * 1e3)
    assert on_disk["fid_ci95"]["low"] <= on_disk["fid_ci95"]["high"]
    assert on_disk["mmd_reference_ci95"]["n"] <= 20 and on_disk["mmd_unbiased_ci95"] is not None
    assert on_disk["fid_floor_ci95"] is None  # 2 held-out volumes: too few for an interval
    assert any("intervals (held-out real)" in n for n in on_disk["notes"])
    assert on_disk["n"] == {
        "real_train": 4,
        "real_heldout": 2,
        "generated": 6,
        "ms_ssim_pairs": 4,
        "ms_ssim_floor_pairs": 4,
        "bootstrap": 20,
    }
    assert on_disk["extractor"]["pretrained"] is False and on_disk["extractor"]["name"].endswith("untrained")
    assert on_disk["memorization"]["near_copies"] == ["5"]
    assert (
        len(on_disk["skipped"]) == 1
        and "6.nii.gz" in on_disk["skipped"][0]
        and "16^3" in on_disk["skipped"][0]
    )
    assert on_disk["ms_ssim_scales"] == 3
    names = {p.name for p in report.iterdir()}
    assert {
        "report.md",
        "report.html",
        "montage_real.png",
        "montage_generated.png",
        "hu_histogram.png",
        "memorization.png",
        "hu_histogram.csv",
        "memorization.csv",
        "metrics_table.csv",
        "metrics.json",
    } <= names
    html = (report / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and "x10^3" in html and "NOT comparable" in html
    md = (report / "report.md").read_text()
    assert "1 of 6" in md and f"data/features/toy/{SIZE}/real.npz" in md
    hist = (report / "hu_histogram.csv").read_text().splitlines()
    assert hist[0] == "hu,real,generated" and len(hist) == 65
    assert "6 to extract" in caplog.text


def test_evaluate_is_deterministic_and_reuses_cached_real_features(toy_eval, caplog):
    _run()
    first = Path(f"metrics/toy/{SIZE}.json").read_bytes()
    cache = Path(f"data/features/toy/{SIZE}/real.npz")
    stamp = cache.stat().st_mtime_ns
    caplog.clear()
    caplog.set_level(logging.INFO)
    _run()
    assert Path(f"metrics/toy/{SIZE}.json").read_bytes() == first
    assert "6 cached, 0 to extract" in caplog.text
    assert cache.stat().st_mtime_ns == stamp
    cache.unlink()  # a fresh extraction gives the same bytes too
    _run()
    assert Path(f"metrics/toy/{SIZE}.json").read_bytes() == first
    # A changed real case is re-extracted, and only that one.
    write_nifti(f"data/processed/toy/{SIZE}/c2.nii.gz", phantom(np.random.default_rng(9)), (8.0, 8.0, 8.0))
    caplog.clear()
    _run()
    assert "5 cached, 1 to extract" in caplog.text


def test_the_stage_resolves_every_file_the_evaluation_reads():
    assert inputs("toy", SIZE, "exp") == EvalInputs(
        real=Path(f"data/processed/toy/{SIZE}"),
        splits={s: Path(f"data/splits/toy/{s}.txt") for s in ("train", "val", "test")},
        feature_cache=Path(f"data/features/toy/{SIZE}/real.npz"),
        samples=Path(f"samples/toy/exp/{SIZE}"),
    )


def test_too_few_volumes_gives_nulls_with_reasons(toy_eval):
    for f in Path(f"samples/toy/{SIZE}").glob("*.nii.gz"):
        if f.name != "0.nii.gz":
            f.unlink()
    m, _, _ = _run()
    assert m["fid"] is None and m["ms_ssim"] is None and m["fid_ci95"] is None
    assert m["mmd_reference"] is not None and m["mmd_unbiased"] is None
    text = " ".join(m["notes"])
    assert "FID (generated)" in text and "MS-SSIM (generated)" in text and "unbiased MMD (generated)" in text


def test_missing_samples_is_a_clear_error(toy_eval):
    for f in Path(f"samples/toy/{SIZE}").glob("*.nii.gz"):
        f.unlink()
    with pytest.raises(
        MissingInputError, match=f"samples/toy/{SIZE}: no generated volumes"
    ):  # one line, no hint
        _run()


def test_run_evaluate_reads_params_and_flattens_metrics(toy_eval, monkeypatch):

    p = params_with({"evaluate": {"bootstrap": 5, "ms_ssim_pairs": 2}})
    run_evaluate(p, "toy", SIZE)
    m = json.loads(Path(f"metrics/toy/{SIZE}.json").read_text())
    assert m["n"]["bootstrap"] == 5 and m["n"]["ms_ssim_pairs"] == 2
    flat = numeric(m)
    assert (
        "fid" in flat
        and "fid_ci95.low" in flat
        and "n.generated" in flat
        and "memorization.n_near_copies" in flat
    )
    assert not any(k.startswith(("extractor", "input")) for k in flat)


def test_seam_and_texture_diagnostics_reach_metrics_report_and_mlflow_view(toy_eval):
    m, metrics_path, report = _run()
    on_disk = json.loads(metrics_path.read_text())
    for key in (
        "seam_ratio",
        "seam_ratio_real",
        "seam_ratio_heldout",
        "texture_ratio",
        "texture_ratio_floor",
        "texture_generated",
        "texture_real",
        "texture_heldout",
    ):
        assert isinstance(on_disk[key], float), key
    assert on_disk["seam_stride"] == 8
    # generated and real toy volumes are the same kind of blob (centred, so the 16^3 cube's one boundary, at its
    # centre, sees less than the average edge): the same seam ratio, similar texture
    assert on_disk["seam_ratio"] == pytest.approx(on_disk["seam_ratio_real"], rel=0.15)
    assert on_disk["texture_ratio"] == pytest.approx(on_disk["texture_generated"] / on_disk["texture_real"])
    assert 0.7 < on_disk["texture_ratio"] < 1.3 and 0.7 < on_disk["texture_ratio_floor"] < 1.3
    # the real set is the FID reference set (the train split), read in [-1, 1]
    from prdit.evaluate.texture import diagnostics
    from prdit.evaluate.volumes import read_volume

    train = [
        read_volume(Path(f"data/processed/toy/{SIZE}/{c}.nii.gz"), SIZE, "real", WINDOW)
        for c in SPLITS["train"]
    ]
    assert on_disk["seam_ratio_real"] == pytest.approx(diagnostics(train)["seam_ratio"])
    assert on_disk["texture_real"] == pytest.approx(diagnostics(train)["texture"])
    html = (report / "report.html").read_text()
    assert "Tiling and texture" in html and "Seam ratio at the 8-voxel token grid" in html
    assert "Texture ratio vs real train" in html
    from prdit.evaluate.report import _fmt

    for key in ("seam_ratio", "seam_ratio_real", "texture_ratio", "texture_generated", "texture_real"):
        assert f"<td>{_fmt(on_disk[key])}</td>" in html, key
    assert (report / "diagnostics_table.csv").read_text().startswith("diagnostic,generated,real train")
    flat = numeric(on_disk)
    assert {
        "seam_ratio",
        "seam_ratio_real",
        "texture_ratio",
        "texture_ratio_floor",
        "texture_generated",
        "texture_real",
    } <= set(flat)


def test_tiled_samples_have_a_seam_ratio_above_the_real_one(toy_eval):
    rng = np.random.default_rng(3)
    cells = np.kron(rng.normal(0, 0.15, (2, 2, 2)), np.ones((8, 8, 8)))  # one constant per 8^3 token cell
    for i in range(5):
        write_nifti(
            f"samples/toy/{SIZE}/{i}.nii.gz",
            unit_to_hu(np.clip(phantom(rng) + cells, -1, 1), WINDOW),
            (8.0, 8.0, 8.0),
        )
    m, _, _ = _run()
    assert m["seam_ratio"] > 1.3 * m["seam_ratio_real"]
    cache = np.load(f"data/features/toy/{SIZE}/real.npz")
    assert cache["stats"].shape == (6, 3)  # the real stats are cached with the features
