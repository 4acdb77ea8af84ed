"""The only module that talks to MLflow: one run per stage invocation, never in the way of the work.

All calls are queued and sent by a background thread, so a training step never waits on tracking.
If the tracking store cannot be reached, the stage goes on, warns once, and the events are kept in a
spool file (JSON lines) that `prdit tracking-import FILE` replays into MLflow once it is back.
Set PRDIT_TRACKING=off to disable tracking entirely.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# MLflow's HTTP client retries for minutes by default; a background logger should fail fast and spool.
for _key, _value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1"), ("MLFLOW_HTTP_REQUEST_TIMEOUT", "10"),
                     ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")):
    os.environ.setdefault(_key, _value)

SPOOL_DIR = Path(".prdit") / "tracking-spool"
FLUSH_TIMEOUT_S = 60.0


def tracking_uri(configured: str | None = None) -> str:
    """MLFLOW_TRACKING_URI, else params' tracking_uri, else sqlite:///mlflow.db in the working directory."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or configured
    return uri or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def git_commit() -> str:
    """The checkout's commit (with '-dirty' if modified), or 'unknown' outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten nested params to dotted keys with string values (MLflow params are flat strings)."""
    out: dict[str, str] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = json.dumps(value) if not isinstance(value, str) else value
    return out


class _Sender:
    """Sends events to one MLflow run; raises on any failure so the caller can spool."""

    def __init__(self, uri: str) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        self.run_id: str | None = None

    def send(self, event: dict[str, Any]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        kind = event["kind"]
        if kind == "start":
            exp = self.client.get_experiment_by_name(event["experiment"])
            exp_id = exp.experiment_id if exp else self._create_experiment(event["experiment"])
            run = self.client.create_run(exp_id, run_name=event["run_name"], tags=event["tags"], start_time=event["ts"])
            self.run_id = run.info.run_id
        elif kind == "metrics":
            metrics = [Metric(k, float(v), event["ts"], event["step"] or 0) for k, v in event["metrics"].items()]
            self.client.log_batch(self.run_id, metrics=metrics)
        elif kind == "params":
            params = [Param(k, v[:6000]) for k, v in event["params"].items()]
            for i in range(0, len(params), 100):
                self.client.log_batch(self.run_id, params=params[i : i + 100])
        elif kind == "tags":
            self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in event["tags"].items()])
        elif kind == "artifact":
            self.client.log_artifact(self.run_id, event["path"], event.get("artifact_path"))
        elif kind == "end":
            self.client.set_terminated(self.run_id, status=event["status"], end_time=event["ts"])

    def _create_experiment(self, name: str) -> str:
        try:
            return self.client.create_experiment(name)
        except Exception:  # another stage created it concurrently
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id


class StageRun:
    """Queue-backed handle of one MLflow run; every method returns at once and never raises."""

    def __init__(self, uri: str, experiment: str, run_name: str, tags: dict[str, str], enabled: bool = True) -> None:
        self.uri = uri
        self.enabled = enabled
        self.spool_path = SPOOL_DIR.resolve() / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}.jsonl"
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._spooled = False
        self._lock = threading.Lock()
        self._inflight: dict[str, Any] | None = None
        self._thread: threading.Thread | None = None
        self.status = "FINISHED"  # a stage that stops early to be resumed sets "KILLED"
        if enabled:
            self._put({"kind": "start", "experiment": experiment, "run_name": run_name, "tags": tags})
            self._thread = threading.Thread(target=self._work, name="prdit-tracking", daemon=True)
            self._thread.start()

    # public API -----------------------------------------------------------------------------
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self._put({"kind": "metrics", "metrics": {k: float(v) for k, v in metrics.items()}, "step": step})

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._put({"kind": "params", "params": flatten(params)})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._put({"kind": "tags", "tags": {k: str(v) for k, v in tags.items()}})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._put({"kind": "artifact", "path": str(Path(path).resolve()), "artifact_path": artifact_path})

    def log_image(self, png_path: str | Path, artifact_path: str = "montages") -> None:
        self.log_artifact(png_path, artifact_path)

    # machinery ------------------------------------------------------------------------------
    def _put(self, event: dict[str, Any]) -> None:
        if self.enabled:
            event["ts"] = int(time.time() * 1000)
            self._queue.put(event)

    def _work(self) -> None:
        sender: _Sender | None = None
        while (event := self._queue.get()) is not None:
            with self._lock:
                self._inflight = event
            if not self._spooled:
                try:
                    sender = sender or _Sender(self.uri)
                    sender.send(event)
                except Exception as exc:  # noqa: BLE001 - any tracking failure must not stop the stage
                    log.warning("MLflow at %s is unreachable (%s); the stage goes on and tracking events are "
                                "kept in %s (replay with `prdit tracking-import %s`)",
                                self.uri, type(exc).__name__, self.spool_path, self.spool_path)
                    self._spooled = True
            if self._spooled:
                self._spool([event])
            with self._lock:
                self._inflight = None

    def _spool(self, events: list[dict[str, Any]]) -> None:
        self.spool_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.spool_path, "a") as fh:
            for event in events:
                fh.write(json.dumps(event) + "\n")

    def close(self, status: str | None = None, timeout: float | None = None) -> None:
        """Finish the run (status: `self.status` unless given); waits at most `timeout` s, then spools the rest."""
        status = status or self.status
        timeout = FLUSH_TIMEOUT_S if timeout is None else timeout
        if not self.enabled or self._thread is None:
            return
        self._put({"kind": "end", "status": status})
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            with self._lock:
                left = ([self._inflight] if self._inflight else []) + _drain(self._queue)
                self._spooled = True
            log.warning("MLflow did not answer within %.0f s; %d tracking events kept in %s", timeout, len(left), self.spool_path)
            self._spool(left)


def _drain(q: queue.Queue) -> list[dict[str, Any]]:
    items = []
    while True:
        try:
            item = q.get_nowait()
        except queue.Empty:
            return items
        if item is not None:
            items.append(item)


@contextlib.contextmanager
def stage_run(params: Any, stage: str, dataset: str | None = None, size: int | None = None,
              used: Mapping[str, Any] | None = None) -> Iterator[StageRun]:
    """One MLflow run for one stage invocation, tagged for grouping and provenance.

    `used` maps dotted param keys (e.g. 'train.local') to what the stage read; they are logged as
    params and hashed into the `params_hash` tag.
    """
    import hashlib

    used = dict(used or {})
    digest = hashlib.sha256(json.dumps(used, sort_keys=True, default=str).encode()).hexdigest()[:12]
    name = "/".join(str(x) for x in (stage, dataset, size) if x is not None)
    tags = {"prdit.stage": stage, "prdit.dataset": str(dataset or ""), "prdit.size": str(size or ""),
            "prdit.params_hash": digest, "mlflow.source.git.commit": git_commit(),
            "prdit.pipeline": os.environ.get("PRDIT_PIPELINE_ID", params.experiment)}
    enabled = os.environ.get("PRDIT_TRACKING", "on").lower() not in ("off", "0", "false", "no")
    run = StageRun(tracking_uri(params.tracking_uri), params.experiment, name, tags, enabled=enabled)
    run.log_params(used)
    try:
        yield run
    except BaseException as exc:
        run.close("KILLED" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "FAILED")
        raise
    run.close()


def import_spool(path: str | Path, uri: str | None = None) -> int:
    """Replay a spool file into MLflow (a new run per 'start' event); returns the number of events sent."""
    sender = _Sender(tracking_uri(uri))
    count = 0
    with open(path) as fh:
        for line in fh:
            if line.strip():
                sender.send(json.loads(line))
                count += 1
    return count
