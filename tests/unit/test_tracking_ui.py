"""What a researcher sees in the MLflow UI: experiment kind, system metrics, models, datasets, pipeline runs."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from prdit import tracking
from prdit.config import load
from tests.support.project import ROOT

EXP = "ui-test"


@pytest.fixture
def params():
    return load(ROOT / "params.yaml", overrides={"experiment": EXP})


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for var in (
        "PRDIT_TRACKING",
        "PRDIT_PIPELINE_RUN",
        "PRDIT_SYSTEM_METRICS",
        "PRDIT_SYSTEM_METRICS_INTERVAL",
    ):
        monkeypatch.setenv(
            var, ""
        )  # recorded, so what a test's start_pipeline_run exports is undone after it
        monkeypatch.delenv(var)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


def client_runs(experiment: str = EXP):
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name(experiment)
    return client, exp, client.search_runs([exp.experiment_id]) if exp else []


def test_an_experiment_prdit_creates_opens_on_training_but_a_users_own_is_left_alone(params) -> None:
    with tracking.stage_run(params, "split", "phantom"):
        pass
    _, exp, _ = client_runs()
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    client.create_experiment("mine")
    with tracking.stage_run(load(ROOT / "params.yaml", overrides={"experiment": "mine"}), "split", "phantom"):
        pass
    assert "mlflow.experimentKind" not in client.get_experiment_by_name("mine").tags


def test_training_runs_carry_system_metrics_unless_disabled(params, monkeypatch) -> None:
    monkeypatch.setenv("PRDIT_SYSTEM_METRICS_INTERVAL", "1")
    with tracking.stage_run(params, "train-local", "phantom", 16):
        # the monitor samples every second on its own thread: wait for its first values (a busy machine
        # may delay them), then one more interval
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            _, _, runs = client_runs()
            if any(k.startswith("system/") for r in runs for k in r.data.metrics):
                break
            time.sleep(0.5)
        time.sleep(1.5)
    monkeypatch.setenv("PRDIT_SYSTEM_METRICS", "off")
    with tracking.stage_run(params, "train-global", "phantom", 16):
        time.sleep(1.5)
    with tracking.stage_run(params, "split", "phantom"):  # not a training/sampling stage: none by default
        time.sleep(1.5)
    _, _, runs = client_runs()
    system = {r.info.run_name: sorted(k for k in r.data.metrics if k.startswith("system/")) for r in runs}
    assert "system/cpu_utilization_percentage" in system["train-local/phantom/16"]
    assert "system/system_memory_usage_megabytes" in system["train-local/phantom/16"]
    assert system["train-global/phantom/16"] == [] and system["split/phantom"] == []


def test_model_file_and_dataset_inputs_are_on_the_run(params, in_tmp: Path) -> None:
    model = in_tmp / "models" / "model.pt"
    model.parent.mkdir()
    model.write_bytes(b"weights" * 1000)
    split = in_tmp / "data" / "splits" / "phantom"
    split.mkdir(parents=True)
    (split / "train.txt").write_text("case0\ncase1\n")
    with tracking.stage_run(params, "train-local", "phantom", 16) as run:
        tracking.log_split(run, params, "phantom", 16, "train", "training")
        run.log_model_file(model)
    client, _, (r,) = client_runs()
    assert [a.path for a in client.list_artifacts(r.info.run_id, "model")] == ["model/model.pt"]
    stored = Path(r.info.artifact_uri.removeprefix("file://")) / "model" / "model.pt"
    assert stored.read_bytes() == model.read_bytes()
    assert stored.stat().st_ino == model.stat().st_ino, "a local store links the model, no second copy"
    (d,) = r.inputs.dataset_inputs
    assert d.dataset.name == "phantom/16/train" and len(d.dataset.digest) == 12
    assert {t.key: t.value for t in d.tags}["mlflow.data.context"] == "training"
    digest, _ = tracking.dataset_digest([split / "train.txt"], params.used("preprocess", "phantom"))
    assert d.dataset.digest == digest


def test_stage_runs_of_one_invocation_nest_under_its_pipeline_run(params, in_tmp: Path) -> None:
    (in_tmp / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    run_id = tracking.start_pipeline_run(params, ["params.yaml"], command="snakemake")
    assert run_id and os.environ["PRDIT_PIPELINE_RUN"] == run_id
    for stage in ("split", "train-local"):
        with tracking.stage_run(params, stage, "phantom", 16):
            pass
    tracking.end_pipeline_run(params, "FINISHED")
    client, _, runs = client_runs()
    parent = client.get_run(run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["prdit.kind"] == "pipeline"
    assert "prdit.stage" not in parent.data.tags  # tests and tools count stage runs by that tag
    assert parent.data.tags["mlflow.source.git.commit"] and parent.data.params["experiment"] == EXP
    assert [a.path for a in client.list_artifacts(run_id, "params")] == ["params/params.yaml"]
    children = [r for r in runs if r.info.run_id != run_id]
    assert len(children) == 2 and {r.data.tags["mlflow.parentRunId"] for r in children} == {run_id}


def test_no_pipeline_run_when_tracking_is_off_or_mlflow_is_unreachable(params, monkeypatch) -> None:
    monkeypatch.setenv("PRDIT_TRACKING", "off")
    assert tracking.start_pipeline_run(params, []) is None and "PRDIT_PIPELINE_RUN" not in os.environ
    monkeypatch.delenv("PRDIT_TRACKING")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    t0 = time.monotonic()
    assert tracking.start_pipeline_run(params, [], timeout=5) is None
    assert time.monotonic() - t0 < 6 and "PRDIT_PIPELINE_RUN" not in os.environ


def test_the_ui_url_names_the_experiments_training_runs_or_the_list_without_creating_a_store(
    params, in_tmp: Path
) -> None:
    listing = f"http://127.0.0.1:5001/#/experiments?{tracking.TRAINING_VIEW}"
    assert tracking.ui_url(params, port=5001) == listing
    assert not (in_tmp / "mlflow.db").exists(), "asking for the URL must not create a store"
    with tracking.stage_run(params, "split", "phantom"):
        pass
    _, exp, _ = client_runs()
    want = f"http://127.0.0.1:5001/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"
    assert tracking.ui_url(params, port=5001) == want


# The UI itself -------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, body: dict | None = None) -> dict:
    import json

    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="session")
def chromium() -> str:
    """Chromium, installed with apt once by tests/install-chromium.sh (skip only where apt itself cannot)."""
    res = subprocess.run(
        [str(ROOT / "tests" / "install-chromium.sh")], capture_output=True, text=True, timeout=900
    )
    if res.returncode == 3:
        pytest.skip(res.stderr.strip().splitlines()[-1])
    assert res.returncode == 0, res.stderr
    return res.stdout.strip().splitlines()[-1]


def page_text(chromium: str, url: str) -> str:
    """What headless Chromium shows at `url` once the JS app has rendered: the DOM's text, styles dropped."""
    out = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=20000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    dom = re.sub(r"<style[^>]*>.*?</style>", " ", out.stdout, flags=re.S)
    return " ".join(re.sub(r"<[^>]*>", " ", dom).split())


# Only the GenAI experiment overview shows these; only the training view titles the page "Runs".
GENAI_OVERVIEW = ("Overview - Experiment", "Token Usage", "Detect Issues")


def assert_training_view(page: str) -> None:
    assert page.startswith("Runs - Experiment"), page[:600]
    assert "Model registry" in page and "matching runs" in page, page[:2000]
    assert not [m for m in GENAI_OVERVIEW if m in page], page[:2000]


@pytest.mark.slow
def test_the_mlflow_ui_url_opens_on_training_runs_nested_under_the_pipeline_run(
    params, in_tmp: Path, chromium: str
) -> None:
    (in_tmp / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    png = in_tmp / "montage.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    parent = tracking.start_pipeline_run(params, ["params.yaml"], command="snakemake")
    with tracking.stage_run(params, "train-local", "phantom", 16, system_metrics=False) as run:
        run.log_metrics({"train/loss": 0.5}, step=1)
    with tracking.stage_run(params, "evaluate", "phantom", 16) as run:
        run.log_image(png, artifact_path="report")
    tracking.end_pipeline_run(params)

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            os.environ["MLFLOW_TRACKING_URI"],
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not come up")
        # What the UI reads (REST, the same server): the experiment's kind, the nesting, the montage.
        exp = get_json(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name={EXP}")["experiment"]
        exp_id = exp["experiment_id"]
        tags = {t["key"]: t["value"] for t in exp.get("tags", [])}
        assert tags["mlflow.experimentKind"] == "custom_model_development"
        runs = get_json(f"{base}/api/2.0/mlflow/runs/search", {"experiment_ids": [exp_id]})["runs"]
        by_name = {r["info"]["run_name"]: r for r in runs}
        for name in ("train-local/phantom/16", "evaluate/phantom/16"):
            run_tags = {t["key"]: t["value"] for t in by_name[name]["data"]["tags"]}
            assert run_tags["mlflow.parentRunId"] == parent
        eval_id = by_name["evaluate/phantom/16"]["info"]["run_id"]
        files = get_json(f"{base}/api/2.0/mlflow/artifacts/list?run_id={eval_id}&path=report")["files"]
        assert [f["path"] for f in files] == ["report/montage.png"]

        # The browser (the JS app rendered by headless Chromium). The URL `make mlflow-ui` prints
        # (`prdit ui-url`) opens on the training runs: one top-level row, the pipeline run, whose stage runs
        # are folded under it; not on the GenAI overview.
        url = tracking.ui_url(params, port=port)
        assert url == f"{base}/#/experiments/{exp_id}/runs?{tracking.TRAINING_VIEW}"
        page = page_text(chromium, url)
        assert_training_view(page)
        assert re.search(r"\bpipeline \d{4}-\d\d-\d\d", page) and "3 matching runs" in page, page[:2000]
        assert "train-local/phantom/16" not in page, "stage runs are nested under the pipeline run"

        # The experiment list in the training view lists the experiment; its link, opened in a browser that
        # never switched the toggle, lands on the GenAI overview (MLflow ignores mlflow.experimentKind while
        # the toggle is shown): why `make mlflow-ui` prints the experiment's own URL (README).
        listing = page_text(chromium, f"{base}/#/experiments?{tracking.TRAINING_VIEW}")
        assert listing.startswith("Experiments - MLflow") and EXP in listing, listing[:2000]
        assert "Overview - Experiment" in page_text(chromium, f"{base}/#/experiments/{exp_id}")

        # the evaluation run's artifacts list its montage
        page = page_text(
            chromium,
            f"{base}/#/experiments/{exp_id}/runs/{eval_id}/artifacts/report/montage.png?{tracking.TRAINING_VIEW}",
        )
        assert "evaluate/phantom/16" in page and "report/montage.png" in page, page[:2000]
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
