"""The only module that talks to MLflow: one run per stage invocation, never in the way of the work.

All calls are queued and sent by a background thread, so a training step never waits on tracking.
If the tracking store cannot be reached, the stage goes on, warns once, and the events are kept in a
spool file (JSON lines) that `prdit tracking-import FILE` replays into MLflow once it is back.
Set PRDIT_TRACKING=off to disable tracking entirely.

What the MLflow UI shows: `ui_url` is the page to open, the experiment's runs in the training view (the
experiment prdit creates is also marked as model development, which MLflow 3.17's UI ignores); training and sampling runs carry system metrics (`system/*`: CPU, memory, disk, network,
GPU when nvidia-ml-py is installed) sampled every PRDIT_SYSTEM_METRICS_INTERVAL s (default 10;
PRDIT_SYSTEM_METRICS=off disables them); training runs hold their model under `model/`; runs list the data
they read as dataset inputs; and the stage runs of one `snakemake`/`dvc repro` invocation are nested under
its pipeline run (PRDIT_PIPELINE_RUN, see `python -m prdit.tracking pipeline-start`).
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

from prdit import paths
from prdit.config import Params, load
from prdit.errors import PrditError

log = logging.getLogger(__name__)

# MLflow's HTTP client retries for minutes by default; a background logger should fail fast and spool.
for _key, _value in (
    ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1"),
    ("MLFLOW_HTTP_REQUEST_TIMEOUT", "10"),
    ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
):
    os.environ.setdefault(_key, _value)

SPOOL_DIR = Path(".prdit") / "tracking-spool"
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # MLflow 3 opens the training view
PIPELINE_RUN_ENV = "PRDIT_PIPELINE_RUN"
EXPERIMENT_NAME_TAG = "prdit.experiment_name"  # a stage run of experiments.<name>: the name
EXPERIMENTS_TAG = "prdit.experiments"  # every experiment a run serves (a shared model: several, comma-joined)
FLUSH_TIMEOUT_S = 60.0


def tracking_uri(configured: str | None = None) -> str:
    """MLFLOW_TRACKING_URI, else params' tracking_uri, else sqlite:///mlflow.db in the working directory."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or configured
    return uri or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def git_commit() -> str:
    """The checkout's commit (with '-dirty' if modified), or 'unknown' outside git."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _flag(name: str, default: str = "on") -> bool:
    return os.environ.get(name, default).lower() not in ("off", "0", "false", "no", "")


def tracking_enabled() -> bool:
    return _flag("PRDIT_TRACKING")


def system_metrics_interval() -> float:
    try:
        return max(1.0, float(os.environ.get("PRDIT_SYSTEM_METRICS_INTERVAL", "10")))
    except ValueError:
        return 10.0


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

    def __init__(self, uri: str, system_metrics: bool = True) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        self.run_id: str | None = None
        self.system_metrics = system_metrics  # False when replaying a spool: the machine is not the run's
        self._monitor: Any = None
        self.artifact_uri: str | None = None

    def send(self, event: dict[str, Any]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        kind = event["kind"]
        if kind == "start":
            exp = self.client.get_experiment_by_name(event["experiment"])
            exp_id = exp.experiment_id if exp else self._create_experiment(event["experiment"])
            run = self.client.create_run(
                exp_id, run_name=event["run_name"], tags=event["tags"], start_time=event["ts"]
            )
            self.run_id = run.info.run_id
            self.artifact_uri = run.info.artifact_uri
            if self.system_metrics and event.get("system_metrics"):
                self._start_monitor(float(event["system_metrics"]))
        elif kind == "metrics":
            metrics = [
                Metric(k, float(v), event["ts"], event["step"] or 0) for k, v in event["metrics"].items()
            ]
            self.client.log_batch(self.run_id, metrics=metrics)
        elif kind == "params":
            params = [Param(k, v[:6000]) for k, v in event["params"].items()]
            for i in range(0, len(params), 100):
                self.client.log_batch(self.run_id, params=params[i : i + 100])
        elif kind == "tags":
            self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in event["tags"].items()])
        elif kind == "artifact":
            if not (event.get("link") and self._link_artifact(event["path"], event.get("artifact_path"))):
                self.client.log_artifact(self.run_id, event["path"], event.get("artifact_path"))
        elif kind == "dataset":
            from mlflow.entities import Dataset, DatasetInput, InputTag

            ds = Dataset(
                name=event["name"],
                digest=event["digest"],
                source_type="local",
                source=json.dumps({"uri": event["source"]}),
                profile=json.dumps(event.get("profile") or {}),
            )
            tags = [InputTag("mlflow.data.context", event["context"])] if event.get("context") else []
            self.client.log_inputs(self.run_id, datasets=[DatasetInput(ds, tags)])
        elif kind == "end":
            self._stop_monitor()
            self.client.set_terminated(self.run_id, status=event["status"], end_time=event["ts"])

    def already_imported(self, experiment: str, replay_id: str) -> bool:
        """A complete run tagged prdit.replay_id=`replay_id` exists in `experiment` (a spool replayed
        before). Runs with that id cut short (no prdit.replay_complete tag and still RUNNING) are deleted,
        so the import that follows completes the run."""
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            return False
        found = self.client.search_runs(
            [exp.experiment_id], filter_string=f"tags.`prdit.replay_id` = '{replay_id}'"
        )
        complete = [r for r in found if r.data.tags.get(REPLAY_COMPLETE) == "1" or r.info.status != "RUNNING"]
        if complete:
            return True
        for r in found:
            log.info("run %s was imported only in part; importing it again", r.info.run_id)
            self.client.delete_run(r.info.run_id)
        return False

    def _link_artifact(self, path: str, artifact_path: str | None) -> bool:
        """Hard-link a big file into a local artifact store instead of copying it; False: copy as usual.

        model.pt files are written atomically (a new file replaces the old), so the run keeps its version.
        """
        try:
            from mlflow.utils.file_utils import local_file_uri_to_path
            from mlflow.utils.uri import is_local_uri

            if not self.artifact_uri or not is_local_uri(self.artifact_uri):
                return False
            dest = Path(local_file_uri_to_path(self.artifact_uri)) / (artifact_path or "") / Path(path).name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.unlink(missing_ok=True)
            os.link(path, dest)
            return True
        except Exception:  # noqa: BLE001 - another filesystem, no permission: copy instead
            return False

    def _start_monitor(self, interval: float) -> None:
        try:
            import psutil  # noqa: F401 - MLflow's CPU/memory monitor needs it
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(
                self.run_id, sampling_interval=interval, tracking_uri=self.uri
            )
            self._monitor.start()
        except Exception as exc:  # noqa: BLE001 - system metrics are a nicety
            log.info("no system metrics for this run (%s)", exc)
            self._monitor = None

    def _stop_monitor(self) -> None:
        if self._monitor is not None:
            monitor, self._monitor = self._monitor, None
            try:
                monitor.finish()
            except Exception:  # noqa: BLE001
                pass

    def _create_experiment(self, name: str) -> str:
        try:  # only an experiment prdit creates is marked; one the user made stays as it is
            return self.client.create_experiment(name, tags=EXPERIMENT_KIND)
        except Exception:  # another stage created it concurrently
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id


class StageRun:
    """Queue-backed handle of one MLflow run; every method returns at once and never raises."""

    def __init__(
        self,
        uri: str,
        experiment: str,
        run_name: str,
        tags: dict[str, str],
        enabled: bool = True,
        system_metrics: float | None = None,
    ) -> None:
        self.uri = uri
        self.enabled = enabled
        self.spool_path = (
            SPOOL_DIR.resolve() / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}.jsonl"
        )
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._spooled = False
        self._lock = threading.Lock()
        self._inflight: dict[str, Any] | None = None
        self._thread: threading.Thread | None = None
        self.status = "FINISHED"  # a stage that stops early to be resumed sets "KILLED"
        if enabled:
            self._put(
                {
                    "kind": "start",
                    "experiment": experiment,
                    "run_name": run_name,
                    "tags": tags,
                    "system_metrics": system_metrics,
                }
            )
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

    def log_model_file(self, path: str | Path, artifact_path: str = "model") -> None:
        """The stage's trained weights (model.pt) under `model/` of the run: reachable from the run page.

        With a local artifact store on the same filesystem the file is hard-linked, not copied (the demo's
        three models are ~280 MB); a server store gets an upload.
        """
        self._put(
            {
                "kind": "artifact",
                "path": str(Path(path).resolve()),
                "artifact_path": artifact_path,
                "link": True,
            }
        )

    def log_dataset(
        self,
        name: str,
        files: list[str | Path] | str | Path,
        context: str,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        """Record the data the run read as an MLflow dataset input (Dataset column / run page Inputs).

        The digest hashes the files' contents (split lists, manifests) with `params` (e.g. the preprocessing
        parameters), so two runs on the same data show the same digest.
        """
        if not self.enabled:
            return
        try:
            paths = [Path(files)] if isinstance(files, (str, Path)) else [Path(f) for f in files]
            digest, profile = dataset_digest(paths, params)
            self._put(
                {
                    "kind": "dataset",
                    "name": name,
                    "digest": digest,
                    "context": context,
                    "source": ",".join(str(p.resolve()) for p in paths),
                    "profile": profile,
                }
            )
        except Exception as exc:  # noqa: BLE001 - tracking never stops a stage
            log.debug("dataset input not logged: %s", exc)

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
                    log.warning(
                        "MLflow at %s is unreachable (%s); the stage goes on and tracking events are "
                        "kept in %s (replay with `prdit tracking-import %s`)",
                        self.uri,
                        type(exc).__name__,
                        self.spool_path,
                        self.spool_path,
                    )
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
            log.warning(
                "MLflow did not answer within %.0f s; %d tracking events kept in %s",
                timeout,
                len(left),
                self.spool_path,
            )
            self._spool(left)


def dataset_digest(paths: list[Path], params: Mapping[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """(12-hex digest, profile) of files (directories: their file names and sizes) and params."""
    import hashlib

    h = hashlib.sha256(json.dumps(params or {}, sort_keys=True, default=str).encode())
    n_files = 0
    for path in paths:
        h.update(path.name.encode())
        if path.is_dir():
            for f in sorted(q for q in path.rglob("*") if q.is_file()):
                h.update(f"{f.relative_to(path)}:{f.stat().st_size}".encode())
                n_files += 1
        elif path.is_file():
            h.update(path.read_bytes())
            n_files += 1
    return h.hexdigest()[:12], {"files": n_files, **({"params": flatten(params)} if params else {})}


def log_split(
    run: StageRun,
    params: Params,
    dataset: str,
    size: int | None,
    split: str,
    context: str,
    root: str | Path = ".",
) -> None:
    """Log data/splits/<dataset>/<split>.txt with the preprocessing params as the run's dataset input."""
    if not run.enabled:
        return
    try:
        prep = params.used("preprocess", dataset)
    except Exception:  # noqa: BLE001 - a params object without the preprocess section
        prep = {}
    name = "/".join(str(x) for x in (dataset, size, split) if x is not None)
    run.log_dataset(name, Path(root) / paths.splits(dataset, split), context, prep)


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
def stage_run(
    params: Params,
    stage: str,
    dataset: str | None = None,
    size: int | None = None,
    used: Mapping[str, Any] | None = None,
    system_metrics: bool | None = None,
) -> Iterator[StageRun]:
    """One MLflow run for one stage invocation, tagged for grouping and provenance.

    A named experiment's parameters (`params.exp_name` set) add its name to the run name, "stage/dataset/size
    (name)", and tag the run prdit.experiment_name=<name>, so the UI can group and compare experiments;
    prdit.experiments lists every experiment the run serves (a training stage's model shared by several
    experiments is trained once: its run names them all, and has no single experiment_name).

    `used` maps dotted param keys (e.g. 'train.local') to what the stage read; they are logged as
    params and hashed into the `params_hash` tag. `system_metrics` (default: training and sampling
    stages) samples CPU/memory/GPU into `system/*` metrics unless PRDIT_SYSTEM_METRICS=off. Inside a
    pipeline invocation (PRDIT_PIPELINE_RUN set) the run is nested under that pipeline run.
    """
    import hashlib

    used = dict(used or {})
    digest = hashlib.sha256(json.dumps(used, sort_keys=True, default=str).encode()).hexdigest()[:12]
    name = "/".join(str(x) for x in (stage, dataset, size) if x is not None)
    # a named experiment's run: its name in the run name and a tag to group by; a model trained once for
    # several experiments (same model key) names them all
    train_stage = stage.removeprefix("train-") if stage.startswith("train-") else None
    names = params.sharing(train_stage) if train_stage and params.experiments() else ()
    names = names or ((params.exp_name,) if params.exp_name else ())
    if names:
        name += f" ({', '.join(names)})"
    tags = {
        "prdit.stage": stage,
        "prdit.dataset": str(dataset or ""),
        "prdit.size": str(size or ""),
        "prdit.params_hash": digest,
        "mlflow.source.git.commit": git_commit(),
        "prdit.pipeline": os.environ.get("PRDIT_PIPELINE_ID", params.experiment),
        **({EXPERIMENT_NAME_TAG: names[0]} if len(names) == 1 else {}),
        **({EXPERIMENTS_TAG: ",".join(names)} if names else {}),
    }
    if parent := os.environ.get(PIPELINE_RUN_ENV):
        tags["mlflow.parentRunId"] = parent
    if system_metrics is None:
        system_metrics = stage.startswith(("train", "sample"))
    interval = system_metrics_interval() if system_metrics and _flag("PRDIT_SYSTEM_METRICS") else None
    run = StageRun(
        tracking_uri(params.tracking_uri),
        params.experiment,
        name,
        tags,
        enabled=tracking_enabled(),
        system_metrics=interval,
    )
    run.log_params(used)
    try:
        yield run
    except BaseException as exc:
        run.close("KILLED" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "FAILED")
        raise
    run.close()


# What each kind of spool event must hold (key -> accepted types); what `_Sender.send` reads.
_EVENT_KEYS: dict[str, dict[str, tuple[type, ...]]] = {
    "start": {"experiment": (str,), "run_name": (str,), "tags": (dict,), "ts": (int,)},
    "metrics": {"metrics": (dict,), "ts": (int,)},
    "params": {"params": (dict,)},
    "tags": {"tags": (dict,)},
    "artifact": {"path": (str,)},
    "dataset": {"name": (str,), "digest": (str,), "source": (str,)},
    "end": {"status": (str,), "ts": (int,)},
}
REPLAY_COMPLETE = "prdit.replay_complete"  # tag set once every event of a replayed run was sent


class SpoolError(PrditError):
    """A spool file cannot be replayed; the message names the file, the line and the reason."""


def _check_event(event: Any) -> str | None:
    """Why `event` is not a spool event, or None."""
    if not isinstance(event, dict):
        return f"expected an event (a JSON object), got {type(event).__name__}"
    kind = event.get("kind")
    if kind not in _EVENT_KEYS:
        return f"unknown event kind {kind!r} (known: {', '.join(_EVENT_KEYS)})"
    for key, types in _EVENT_KEYS[kind].items():
        if key not in event:
            return f"a {kind!r} event without {key!r}"
        if not isinstance(event[key], types) or isinstance(event[key], bool) and bool not in types:
            return f"{kind!r} event: {key!r} is a {type(event[key]).__name__}"
    if kind == "metrics":
        if not (event.get("step") is None or isinstance(event["step"], int)):
            return "'metrics' event: 'step' is not an integer"
        for name, value in event["metrics"].items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return f"'metrics' event: metric {name!r} is not a number ({value!r})"
    if kind == "params" and not all(isinstance(v, str) for v in event["params"].values()):
        return "'params' event: every value must be a string"
    return None


def read_spool(path: str | Path) -> list[list[tuple[int, dict[str, Any]]]]:
    """The runs of a spool file (each a list of (line number, event), starting with its 'start'),
    checked whole before anything is sent: SpoolError names the line of the first problem. A line that is
    not JSON (cut short by a crash while it was written) is a warning and skipped."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise SpoolError(f"{path}: spool file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or type(exc).__name__
        raise SpoolError(f"{path}: cannot read the spool file ({why})") from None
    runs: list[list[tuple[int, dict[str, Any]]]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s:%d: not a spool event (cut short?); skipped", path, number)
            continue
        why = _check_event(event)
        if why is None and event["kind"] != "start" and not runs:
            why = f"a {event['kind']!r} event before any 'start' event"
        if why is not None:
            raise SpoolError(
                f"{path}:{number}: {why}; fix or remove the line, then import again (nothing was sent)"
            )
        if event["kind"] == "start":
            runs.append([])
        runs[-1].append((number, event))
    return runs


def import_spool(path: str | Path, uri: str | None = None) -> int:
    """Replay a spool file into MLflow (one run per 'start' event); returns the number of events sent.

    The whole file is checked first (`read_spool`): a bad line sends nothing. Idempotent: each replayed run
    carries the hash of its 'start' event as tag prdit.replay_id, and gets tag prdit.replay_complete once all
    its events were sent; a complete run is skipped whole, one cut short (MLflow failed mid-way) is deleted
    and imported again. A missing artifact file is a warning, never a lost remainder.
    """
    import hashlib

    runs = read_spool(path)
    sender = _Sender(tracking_uri(uri), system_metrics=False)
    count = 0
    for run in runs:
        number, start = run[0]
        rid = hashlib.sha256(json.dumps(start, sort_keys=True).encode()).hexdigest()[:32]
        if sender.already_imported(start["experiment"], rid):
            log.info("%s:%d: run %r was imported before; skipped", path, number, start["run_name"])
            continue
        start = {**start, "tags": {**start["tags"], "prdit.replay_id": rid}}
        for line, event in [(number, start), *run[1:]]:
            if event["kind"] == "artifact" and not Path(event["path"]).exists():
                log.warning("%s:%d: artifact %s no longer exists; skipped", path, line, event["path"])
                continue
            sender.send(event)
            count += 1
        sender.send({"kind": "tags", "tags": {REPLAY_COMPLETE: "1"}})
    return count


# One pipeline invocation = one parent run --------------------------------------------------------------
PIPELINE_START_TIMEOUT_S = 15.0


def start_pipeline_run(
    params: Params,
    param_files: list[str | Path],
    command: str = "snakemake",
    timeout: float = PIPELINE_START_TIMEOUT_S,
) -> str | None:
    """Create the parent run of one pipeline invocation and export its id in PRDIT_PIPELINE_RUN.

    The run carries the parameter files (as params and as artifacts under `params/`) and the git commit;
    the stage runs of the invocation nest under it. Returns the run id, or None when tracking is off, a
    pipeline run is already set (a nested invocation), or MLflow does not answer within `timeout` s
    (then the stages run unnested, as without this).
    """
    if not tracking_enabled() or os.environ.get(PIPELINE_RUN_ENV):
        return os.environ.get(PIPELINE_RUN_ENV) if tracking_enabled() else None
    result: dict[str, str] = {}

    def work() -> None:
        try:
            sender = _Sender(tracking_uri(params.tracking_uri), system_metrics=False)
            tags = {
                "prdit.kind": "pipeline",
                "prdit.command": command,  # no prdit.stage: not a stage run
                "mlflow.source.git.commit": git_commit(),
                "prdit.param_files": ",".join(str(f) for f in param_files),
            }
            sender.send(
                {
                    "kind": "start",
                    "experiment": params.experiment,
                    "ts": int(time.time() * 1000),
                    "run_name": f"pipeline {time.strftime('%Y-%m-%d %H:%M:%S')}",
                    "tags": tags,
                }
            )
            result["run_id"] = sender.run_id or ""
            sender.send({"kind": "params", "params": flatten(params.raw)})
            for f in param_files:
                if Path(f).is_file():
                    sender.send(
                        {"kind": "artifact", "path": str(Path(f).resolve()), "artifact_path": "params"}
                    )
        except Exception as exc:  # noqa: BLE001 - tracking never stops the pipeline
            log.warning("no pipeline run in MLflow (%s); stage runs will not be nested", type(exc).__name__)

    thread = threading.Thread(target=work, name="prdit-pipeline-run", daemon=True)
    thread.start()
    thread.join(timeout)
    run_id = result.get("run_id") or None
    if run_id:
        os.environ[PIPELINE_RUN_ENV] = run_id
    return run_id


def end_pipeline_run(
    params: Params,
    status: str = "FINISHED",
    run_id: str | None = None,
    timeout: float = PIPELINE_START_TIMEOUT_S,
) -> None:
    """Mark the pipeline run (PRDIT_PIPELINE_RUN unless given) FINISHED or FAILED; never raises."""
    run_id = run_id or os.environ.get(PIPELINE_RUN_ENV)
    if not run_id or not tracking_enabled():
        return

    def work() -> None:
        try:
            from mlflow.tracking import MlflowClient

            MlflowClient(tracking_uri(params.tracking_uri)).set_terminated(run_id, status=status)
        except Exception as exc:  # noqa: BLE001
            log.warning("pipeline run %s not closed (%s)", run_id, type(exc).__name__)

    thread = threading.Thread(target=work, name="prdit-pipeline-run", daemon=True)
    thread.start()
    thread.join(timeout)


# MLflow 3.17's UI ignores mlflow.experimentKind while its GenAI / Model training toggle is shown: the toggle
# decides, its default in a new browser is GenAI (kept in the browser's local storage, mlflow.workflowType),
# and the URL parameter below selects the training view for the page it is on.
TRAINING_VIEW = "workflowType=machine_learning"


def ui_url(params: Params, port: int = 5000, host: str = "127.0.0.1") -> str:
    """The MLflow UI page to open for `params.experiment`: its training runs, or the experiment list in the
    training view when the store holds no such experiment yet. Never creates the store."""
    base = f"http://{host}:{port}/#/experiments"
    uri = tracking_uri(params.tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return f"{base}?{TRAINING_VIEW}"
    from mlflow.tracking import MlflowClient

    try:
        exp = MlflowClient(uri).get_experiment_by_name(params.experiment)
    except Exception as exc:  # an unreachable server: the list is still the right page
        log.warning("MLflow at %s: %s", uri, exc)
        exp = None
    return f"{base}/{exp.experiment_id}/runs?{TRAINING_VIEW}" if exp else f"{base}?{TRAINING_VIEW}"


def _main(argv: list[str] | None = None) -> int:
    """`python -m prdit.tracking pipeline-start|pipeline-end` for shells (e.g. around `dvc repro`)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m prdit.tracking")
    ap.add_argument("action", choices=["pipeline-start", "pipeline-end"])
    ap.add_argument("--params", action="append", default=None, help="parameter file(s); default params.yaml")
    ap.add_argument("--command", default="dvc repro", help="what the pipeline run is for (a tag)")
    ap.add_argument("--status", default="FINISHED", choices=["FINISHED", "FAILED", "KILLED"])
    args = ap.parse_args(argv)
    files = args.params or ["params.yaml"]
    p = load(files)
    if args.action == "pipeline-start":
        print(start_pipeline_run(p, files, command=args.command) or "")
    else:
        end_pipeline_run(p, args.status)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
