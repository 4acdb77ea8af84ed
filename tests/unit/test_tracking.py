"""prdit.tracking against a real MLflow store: one run per stage, never blocking, spooling when down."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from prdit import tracking
from tests.support.project import params_with


@pytest.fixture
def params():
    return params_with({"experiment": "tracking-test"})


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PRDIT_TRACKING", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def runs(uri: str, experiment: str = "tracking-test"):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id]) if exp else []


def test_stage_run_logs_params_metrics_tags_and_artifacts_to_the_default_store(params, in_tmp: Path) -> None:
    png = in_tmp / "m.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    with tracking.stage_run(params, "sample", "phantom", 32, used=params.used("sample")) as run:
        for step in range(5):
            run.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
        run.log_image(png)
    uri = f"sqlite:///{in_tmp / 'mlflow.db'}"
    assert tracking.tracking_uri(None) == uri
    client, found = runs(uri)
    assert len(found) == 1
    r = found[0]
    assert r.info.status == "FINISHED" and r.info.run_name == "sample/phantom/32"
    assert r.data.tags["prdit.stage"] == "sample" and r.data.tags["prdit.size"] == "32"
    assert r.data.params["sample.steps"] == str(params.sample.steps)
    assert [m.value for m in client.get_metric_history(r.info.run_id, "loss")] == [1.0, 0.5, 1 / 3, 0.25, 0.2]
    assert [a.path for a in client.list_artifacts(r.info.run_id, "montages")] == ["montages/m.png"]


def test_failed_stage_marks_its_run_failed(params, in_tmp: Path) -> None:
    with pytest.raises(RuntimeError), tracking.stage_run(params, "ingest", "phantom") as run:
        run.log_metrics({"cases": 1})
        raise RuntimeError("boom")
    _, found = runs(f"sqlite:///{in_tmp / 'mlflow.db'}")
    assert [r.info.status for r in found] == ["FAILED"]


def test_unreachable_server_never_blocks_and_spools_for_import(params, in_tmp: Path, monkeypatch) -> None:
    with socket.socket() as s:  # a port where nothing listens: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    t0 = time.monotonic()
    with tracking.stage_run(params, "train-local", "phantom", 32) as run:
        for step in range(200):
            run.log_metrics({"loss": float(step)}, step=step)
        loop_s = time.monotonic() - t0
    assert loop_s < 0.5, "logging must return at once"
    spools = list((in_tmp / ".prdit" / "tracking-spool").glob("*.jsonl"))
    assert len(spools) == 1
    # the server comes back (here: a local store): the spool replays into one complete run
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{in_tmp / 'back.db'}")
    assert tracking.import_spool(spools[0]) >= 202
    client, found = runs(f"sqlite:///{in_tmp / 'back.db'}")
    assert len(found) == 1 and found[0].info.status == "FINISHED"
    assert len(client.get_metric_history(found[0].info.run_id, "loss")) == 200


def test_a_server_that_hangs_costs_at_most_the_flush_timeout(params, in_tmp: Path, monkeypatch) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:  # accept connections and never answer
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                pass

    threading.Thread(target=accept, daemon=True).start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{server.getsockname()[1]}")
    monkeypatch.setattr(tracking, "FLUSH_TIMEOUT_S", 1.0)
    t0 = time.monotonic()
    run = tracking.StageRun(tracking.tracking_uri(None), "x", "hang", {})
    run.log_metrics({"loss": 1.0}, step=0)
    assert time.monotonic() - t0 < 0.5
    run.close(timeout=1.0)
    assert time.monotonic() - t0 < 5.0
    assert run.spool_path.exists() and "loss" in run.spool_path.read_text()
    stop.set()
    server.close()


def test_tracking_off_writes_nothing(params, in_tmp: Path, monkeypatch) -> None:
    monkeypatch.setenv("PRDIT_TRACKING", "off")
    with tracking.stage_run(params, "split", "phantom") as run:
        run.log_metrics({"n": 1})
    assert not (in_tmp / "mlflow.db").exists()


def test_an_experiments_stage_runs_carry_its_name(in_tmp: Path) -> None:
    experiments = {"fast": {"sample": {"steps": 5}}, "deep": {"train": {"global": {"model": "PRDiT-T/10/3"}}}}
    p = params_with({"experiment": "tracking-test", "experiments": experiments})
    with tracking.stage_run(p.view("fast"), "sample", "phantom", 32):
        pass
    with tracking.stage_run(p, "sample", "phantom", 32):
        pass
    # stage 1 is one model for both experiments (trained with the project's parameters): its run names both
    with tracking.stage_run(p, "train-local", "phantom", 32):
        pass
    with tracking.stage_run(p.view("deep"), "train-global", "phantom", 32):
        pass
    _, found = runs(f"sqlite:///{in_tmp / 'mlflow.db'}")
    by_name = {r.info.run_name: r.data.tags for r in found}
    assert set(by_name) == {
        "sample/phantom/32 (fast)",
        "sample/phantom/32",
        "train-local/phantom/32 (fast, deep)",
        "train-global/phantom/32 (deep)",
    }
    assert by_name["sample/phantom/32 (fast)"][tracking.EXPERIMENT_NAME_TAG] == "fast"
    assert tracking.EXPERIMENT_NAME_TAG not in by_name["sample/phantom/32"]
    shared = by_name["train-local/phantom/32 (fast, deep)"]
    assert shared[tracking.EXPERIMENTS_TAG] == "fast,deep" and tracking.EXPERIMENT_NAME_TAG not in shared
    assert by_name["train-global/phantom/32 (deep)"][tracking.EXPERIMENT_NAME_TAG] == "deep"
