"""`run_train` end to end on a tiny preprocessed cache, with MLflow up (sqlite) and down (refused http)."""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from prdit.stages.train import run as run_train
from tests.support.project import params_with

DS = "phantom"


@pytest.fixture
def train_params(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An empty project folder with splits and a 16^3 float16 training cache of 6 cases."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PRDIT_TRACKING", raising=False)
    rng = np.random.default_rng(0)
    cache = tmp_path / "data" / "processed" / DS / "16"
    cache.mkdir(parents=True)
    cases = [f"case{i}" for i in range(6)]
    for c in cases:
        np.save(cache / f"{c}.npy", rng.uniform(-1, 1, (16, 16, 16)).astype(np.float16))
    splits = tmp_path / "data" / "splits" / DS
    splits.mkdir(parents=True)
    (splits / "train.txt").write_text("\n".join(cases[:4]) + "\n")
    (splits / "val.txt").write_text("\n".join(cases[4:]) + "\n")
    return params_with(
        {
            "experiment": "train-test",
            "preprocess": {"size": 16, "highres_size": 32},
            "train": {
                "common": {"checkpoint_every": 2, "val_every": 2, "log_every": 2, "preview_every": 2},
                "local": {"model": "PRDiT-T/8/0", "steps": 4, "batch_size": 2},
                "global": {"model": "PRDiT-T/8/1"},
                "highres": {"model": "PRDiT-HR-T/8/1"},
            },
        },
    )


def test_run_train_logs_losses_throughput_and_previews_to_mlflow(
    train_params, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert run_train(train_params, DS, "local") == 0

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("train-test").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "train-local/phantom/16"
    assert run.data.params["train.local.model"] == "PRDiT-T/8/0"
    # where it computed (prdit.device): the device, GPU, versions, precision and attention kernels
    device = {k: v for k, v in run.data.params.items() if k == "device" or k.startswith("device.")}
    assert (
        device["device"]
        == run.data.tags["prdit.device"]
        == ("cuda:0" if torch.cuda.is_available() else "cpu")
    )
    assert device["device.torch"] == torch.__version__ and device["device.cuda"] == str(torch.version.cuda)
    assert {"device.gpu", "device.capability", "device.cudnn", "device.precision", "device.attention"} <= set(
        device
    )
    assert len(run.data.tags["prdit.data_hash"]) == 16
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in history] == [2, 4]
    for key in (
        "val/loss",
        "val/loss_ema",
        "perf/step_time_s",
        "perf/data_wait_s",
        "perf/volumes_per_s",
        "perf/peak_memory_gb",
        "train/loss_x0",
        "train/loss_eps",
        "final/step_time_s",
    ):
        assert key in run.data.metrics, key
    assert [a.path for a in client.list_artifacts(run.info.run_id, "previews")] == [
        "previews/step_0000002.png",
        "previews/step_0000004.png",
    ]
    assert [a.path for a in client.list_artifacts(run.info.run_id, "model")] == ["model/model.pt"]
    inputs = {
        (d.dataset.name, {t.key: t.value for t in d.tags}["mlflow.data.context"])
        for d in run.inputs.dataset_inputs
    }
    assert inputs == {("phantom/16/train", "training"), ("phantom/16/val", "validation")}

    out = Path("models", DS, "local")
    assert {p.name for p in out.iterdir()} >= {"model.pt", "last.pt", "metrics.json", "previews"}
    import prdit.model as models

    meta = models.load(out / "model.pt").meta
    assert meta["params_hash"] == train_params.section_hash(*train_params.used("train-local"))
    assert meta["data_hash"] == run.data.tags["prdit.data_hash"] and meta["git_commit"]


def test_training_completes_promptly_when_the_tracking_server_refuses(
    train_params, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as s:  # a port on 127.0.0.1 where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    caplog.set_level(logging.WARNING)
    start = time.monotonic()
    assert run_train(train_params, DS, "local") == 0
    elapsed = time.monotonic() - start
    # MLflow's client defaults would retry each call for minutes
    assert elapsed < 90, f"training took {elapsed:.0f} s with the tracking server down"
    assert Path("models", DS, "local", "model.pt").exists()
    warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warnings) == 1
    spooled = "".join(p.read_text() for p in Path(".prdit", "tracking-spool").glob("*.jsonl"))
    assert '"train/loss"' in spooled and '"val/loss_ema"' in spooled
