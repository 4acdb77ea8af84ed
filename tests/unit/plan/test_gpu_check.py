"""benchmarks/gpu_check.py --dry runs the GPU check's code at tiny sizes on the CPU, so it cannot rot: one JSON
line per figure, and a calibration file `prdit plan` reads (cost.calibration / cost.mfu_source)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prdit.plan import cost
from prdit.plan.gpus import GPUS, key_of
from tests.support.project import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def test_device_names_map_to_the_plans_gpu_keys() -> None:
    names = {
        "NVIDIA H100 80GB HBM3": "h100",
        "NVIDIA H100 PCIe": "h100-pcie",
        "NVIDIA H200": "h200",
        "NVIDIA A100-SXM4-80GB": "a100",
        "Tesla V100-SXM2-32GB": None,
    }
    assert {n: key_of(n) for n in names} == names
    assert {k for k in names.values() if k} <= set(GPUS)


def test_dry_run_prints_every_figure_and_writes_the_calibration_shape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    committed = ROOT / cost.CALIBRATION
    before = committed.read_bytes() if committed.is_file() else None
    out = tmp_path / "cal.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry", "--out", str(out)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    figures = [line["figure"] for line in lines]
    assert figures[:2] == ["gpu", "environment"] and figures[-1] == "calibration"
    sdpa = [line for line in lines if line["figure"] == "sdpa"]
    assert {(s["head_dim"], s["mode"]) for s in sdpa} == {
        (d, m) for d in (64, 72) for m in ("train/project", "train/paper", "sample/paper")
    }
    assert all(s["forward"] != "none seen" for s in sdpa)
    steps = [line for line in lines if line["figure"] == "train_step" and "skipped" not in line]
    stages = {(s["stage"], s["protocol"]) for s in steps}
    assert stages == {(st, pr) for st in ("local", "global") for pr in ("paper", "project")} | {
        ("highres", "paper")
    }
    for s in steps:
        assert s["step_s"] > 0 and s["tflops"] > 0 and s["micro_batch"] >= 1 and s["planned_gib"] > 0
        assert "FlopCounterMode" in s["flops_convention"]
    compiled = [line for line in lines if line["figure"] == "train_step" and line.get("compiled")]
    assert len(compiled) == 6 and all("no torch.compile" in c["skipped"] for c in compiled)
    samples = [line for line in lines if line["figure"] == "sample_call"]
    assert {(s["size"], s["protocol"]) for s in samples} == {
        (n, pr) for n in (16, 32) for pr in ("paper", "project")
    }
    assert all(s["hours_per_1000_volumes"] > 0 for s in samples)
    assert [line["figure"] for line in lines].count("extractor") == 1

    table = json.loads(out.read_text())
    assert list(table) == ["cpu"]  # no GPU: never under a GPU's key
    entry = table["cpu"]
    assert set(entry["mfu"]) == {"train", "sample", "evaluate"} and all(v > 0 for v in entry["mfu"].values())
    assert {"gpu", "date", "torch", "flops_convention", "mfu_from", "figures"} <= set(entry)
    assert entry["figures"] == lines
    after = committed.read_bytes() if committed.is_file() else None
    assert after == before  # --dry never writes the committed calibration

    # the file is what prdit plan reads: under a GPU's key it is "measured"
    out.write_text(json.dumps({"h100": entry}))
    monkeypatch.setattr(cost, "CALIBRATION", out)
    assert cost.mfu(GPUS["h100"], "sample") == entry["mfu"]["sample"]
    assert cost.mfu_source(GPUS["h100"]).startswith(f"MFU measured on {entry['date']}")


def test_dry_run_refuses_the_committed_calibration_path() -> None:
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry", "--out", str(ROOT / cost.CALIBRATION)],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300,
    )  # fmt: skip
    assert run.returncode == 2 and "--dry writes no calibration" in run.stderr
