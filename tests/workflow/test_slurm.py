"""SLURM for real: a single-node cluster (tests/slurm/start-cluster.sh) runs the demo DAG through
`snakemake --profile profiles/slurm all`, and a training job that hits its time limit resumes.

The cluster's node declares the GPUs, CPUs and memory the profile asks for (as GRES backed by
placeholder devices), so the profile runs unchanged; the only overrides are faster status polling
here, PRDIT_DEVICE=cpu in the jobs' environment (their GPUs are placeholders: without it prdit.device
stops a GPU job that finds no usable GPU) and, in the preemption test, two GPUs for one rule.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
import yaml

from prdit import topology
from prdit.config import deep_merge
from tests.support.project import PIPELINE_STAGES, ROOT, make_project, tool_env

START = ROOT / "tests" / "slurm" / "start-cluster.sh"
STOP = ROOT / "tests" / "slurm" / "stop-cluster.sh"
PROFILE = "slurm"  # the root link to profiles/slurm: what users type
# A real cluster wants the plugin's defaults (first status check after 40 s); here jobs take seconds.
FAST_POLL = ["--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "2"]
T = TypeVar("T")
STAGES = PIPELINE_STAGES - {"download"}  # the jobs SLURM runs (download stays on the submit host)
# sbatch --export=ALL hands the jobs this: "run on the CPU, I know the GPUs are not real" (prdit.device)
ON_CPU = {"PRDIT_DEVICE": "cpu"}


def sh(cmd: list[str], cwd: Path | None = None, **env: str) -> str:
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=tool_env(**env), timeout=1200)
    assert res.returncode == 0, (
        f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-5000:]}\n{res.stderr[-5000:]}"
    )
    return res.stdout + res.stderr


def fail_with_logs(msg: str, project: Path, output: str) -> None:
    logs = [
        *sorted((project / "logs").rglob("*.log")),
        *sorted((project / ".snakemake/slurm_logs").rglob("*.log")),
    ]
    pytest.fail(msg + "\n" + output[-6000:] + "".join(f"\n== {p}\n{p.read_text()[-2500:]}" for p in logs))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slurm_jobs(run_id: str) -> list[dict[str, str]]:
    """One record per SLURM job of a Snakemake run (job name = run id), from the accounting database."""
    fields = ["JobIDRaw", "State", "Comment", "Partition", "Account", "AllocTRES", "ExitCode"]
    out = subprocess.run(
        [
            "sacct",
            "-X",
            "--parsable2",
            "--noheader",
            "--starttime",
            "now-1days",
            "--name",
            run_id,
            "-o",
            ",".join(fields),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    jobs = [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line.strip()]
    for job in jobs:  # the plugin's comment: rule_<rule>[_wildcards_<values>]
        job["rule"] = job["Comment"].removeprefix("rule_").split("_wildcards_")[0]
    return sorted(jobs, key=lambda j: int(j["JobIDRaw"]))


def run_id_of(output: str) -> str:
    m = re.search(r"SLURM run ID: (\S+)", output)
    assert m, output[-3000:]
    return m.group(1)


def mlflow_runs(db: Path) -> dict[str, tuple[str, str, str]]:
    """run id -> (stage, status, prdit.exit tag or '') of every run in an MLflow sqlite store."""
    with sqlite3.connect(db) as con:
        rows = con.execute(
            "select r.run_uuid, t.value, r.status, coalesce(e.value, '') from runs r "
            "join tags t on t.run_uuid = r.run_uuid and t.key = 'prdit.stage' "
            "left join tags e on e.run_uuid = r.run_uuid and e.key = 'prdit.exit'"
        ).fetchall()
    return {run: (stage, status, exit_tag) for run, stage, status, exit_tag in rows}


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """The test cluster, started here and stopped afterwards unless it was already up."""
    was_up = subprocess.run(["bash", "-c", "sinfo -h >/dev/null 2>&1"]).returncode == 0
    res = subprocess.run(["bash", str(START)], capture_output=True, text=True, timeout=900)
    if res.returncode == 3:
        pytest.skip(f"SLURM cannot be installed on this machine: {res.stderr.strip().splitlines()[-1]}")
    assert res.returncode == 0, f"start-cluster.sh failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
    yield
    if not was_up:
        subprocess.run(["bash", str(STOP)], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """`mlflow server` as on a login node (here: the one node, on loopback); yields (uri, its sqlite db)."""
    d = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    # `--host $(hostname)` as docs/slurm.md says, where that name is this machine's loopback address
    host = socket.gethostname()
    try:
        loopback = socket.gethostbyname(host).startswith("127.")
    except OSError:
        loopback = False
    host = host if loopback else "127.0.0.1"
    cmd = [
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{d / 'mlflow.db'}",
        "--artifacts-destination",
        str(d / "artifacts"),
        "--host",
        host,
        "--port",
        str(port),
        "--allowed-hosts",
        f"{host}:{port}",
        "--workers",
        "1",
    ]
    env = tool_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    with open(d / "server.log", "w") as log:
        proc = subprocess.Popen(
            cmd, cwd=d, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        yield f"http://{host}:{port}", d / "mlflow.db"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


def wait_for_server(uri: str, log: Path, timeout: float = 180.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"mlflow server did not come up:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def slurm_run(
    cluster: None, mlflow_server: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str, str]:
    """The demo DAG (tests/configs/tiny.yaml) run by `snakemake --profile profiles/slurm all`, with
    MLFLOW_TRACKING_URI pointing at the server; returns (project, snakemake output, SLURM run id)."""
    uri, _ = mlflow_server
    project = make_project(tmp_path_factory.mktemp("slurm") / "project")
    wait_for_server(uri, mlflow_server[1].parent / "server.log")
    cmd = ["snakemake", "--profile", PROFILE, "all", *FAST_POLL]
    res = subprocess.run(
        cmd,
        cwd=project,
        capture_output=True,
        text=True,
        timeout=1500,
        env=tool_env(MLFLOW_TRACKING_URI=uri, **ON_CPU),
    )
    output = res.stdout + res.stderr
    if res.returncode != 0:
        fail_with_logs(f"{' '.join(cmd)} failed ({res.returncode})", project, output)
    return project, output, run_id_of(output)


@pytest.mark.parametrize("profile", ["profiles/slurm", "profiles/local"])
def test_profiles_parse_and_name_real_rules(profile: str) -> None:
    """Both profiles load (plugin settings included) and every rule they configure exists."""
    config = yaml.safe_load((ROOT / profile / "config.yaml").read_text())
    rules = set(sh(["snakemake", "--profile", profile, "--list-rules"], cwd=ROOT).split())
    configured = set(config.get("set-resources", {})) | set(config.get("set-threads", {}))
    assert configured <= rules, configured - rules
    if profile == "profiles/slurm":
        gpu_rules = {r for r, res in config["set-resources"].items() if res.get("slurm_partition") == "gpu"}
        assert {"train", "sample", "evaluate"} == gpu_rules
        for rule in ("train", "sample"):  # both stop cleanly (exit 75) and resume on the retry
            assert "--signal=TERM@" in config["set-resources"][rule]["slurm_extra"], rule


@pytest.mark.slow
@pytest.mark.slurm
def test_profile_runs_the_demo_dag_through_slurm(
    slurm_run: tuple[Path, str, str], mlflow_server: tuple[str, Path]
) -> None:
    project, output, run_id = slurm_run
    profile = yaml.safe_load((project / PROFILE / "config.yaml").read_text())

    # every non-local job of the run went through sbatch and completed in SLURM's records
    submitted = re.findall(r"^rule (\w+):", output, re.M)
    local = set(re.findall(r"^localrule (\w+):", output, re.M))
    jobs = slurm_jobs(run_id)
    assert sorted(j["rule"] for j in jobs) == sorted(submitted)
    assert {
        "ingest",
        "preprocess",
        "split",
        "train",
        "sample",
        "evaluate",
    } <= set(submitted)
    assert Counter(submitted)["train"] == 3  # local, global, highres
    assert local <= {"all", "download"}  # download stays on the submit host (compute nodes may lack internet)
    assert all(j["State"] == "COMPLETED" for j in jobs), jobs

    # resources reached SLURM as the profile and rules say: partition, account, GPUs (GRES)
    gpu_rules = {r for r, res in profile["set-resources"].items() if res.get("slurm_partition") == "gpu"}
    for job in jobs:
        assert job["Account"] == profile["default-resources"]["slurm_account"], job
        if job["rule"] in gpu_rules:
            assert job["Partition"] == "gpu" and "gres/gpu=1" in job["AllocTRES"], job
        else:
            assert job["Partition"] == "cpu" and "gres/gpu" not in job["AllocTRES"], job

    p = yaml.safe_load((project / "params.yaml").read_text())
    for size in (p["preprocess"]["size"], p["preprocess"]["highres_size"]):
        metrics = json.loads((project / f"metrics/phantom/{size}.json").read_text())
        assert np.isfinite(metrics["fid"])
        assert len(list((project / f"samples/phantom/{size}").glob("*.nii.gz"))) == p["sample"]["n"]
    for stage in topology.STAGES:
        assert (
            json.loads((project / f"models/phantom/{stage}/metrics.json").read_text())["steps"]
            == p["train"][stage]["steps"]
        )

    # the jobs logged to the MLflow server on the submit host, none had to spool
    runs = list(mlflow_runs(mlflow_server[1]).values())
    assert len(runs) == len(submitted) + len(local - {"all"})  # one per job
    assert STAGES <= {stage for stage, _, _ in runs}
    assert all(status == "FINISHED" for _, status, _ in runs), runs
    assert not list((project / ".prdit").glob("tracking-spool/*.jsonl"))

    # outputs made on the cluster are up to date for the next run
    again = sh(["snakemake", "--profile", PROFILE, "-n", "all"], cwd=project)
    assert not re.findall(r"^rule \w+:", again, re.M), again


def training_pids(job_id: str) -> list[int]:
    """PIDs of the `prdit train` processes (torchrun's workers, not torchrun) in a SLURM job: among
    the job's processes and their descendants (torchrun starts each worker in a session of its own)."""
    nodelist = subprocess.run(
        ["squeue", "-h", "-j", job_id, "-o", "%N"], capture_output=True, text=True
    ).stdout.strip()
    nodes = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True)
    tracked = set()
    for node in nodes.stdout.split():  # each node's slurmd knows its own processes of the job
        out = subprocess.run(["scontrol", "listpids", job_id, node], capture_output=True, text=True).stdout
        tracked |= {int(line.split()[0]) for line in out.splitlines()[1:] if line.split()}
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, ppid = int(stat.parent.name), int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(pid)
    todo, found = list(tracked), set()
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    pids = []
    for pid in found:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"train" in cmd and any(part.endswith(b"/prdit") for part in cmd[:2]):
            pids.append(pid)
    return pids


def term_pending(pid: int) -> bool:
    """Whether a (stopped) process has a SIGTERM waiting for it."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("ShdPnd:", "SigPnd:")) and int(line.split()[1], 16) & 1 << (
                signal.SIGTERM - 1
            ):
                return True
    return False


def reset_training(project: Path, steps: int) -> Path:
    """Set train.local to `steps` steps with a checkpoint every 2, empty its model folder and the
    tracking spool; returns the model folder."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params = deep_merge(
        params,
        {
            "train": {"common": {"checkpoint_every": 2}, "local": {"steps": steps}},
            "resources": {"train": {"local": {"gpu": 1, "nodes": 1}}},  # whatever an earlier test set
        },
    )
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    model_dir = project / "models/phantom/local"
    for f in model_dir.rglob("*"):
        if f.is_file():
            f.unlink()
    for spool in (project / ".prdit").glob("tracking-spool/*.jsonl"):
        spool.unlink()
    return model_dir


def freeze_after_checkpoint(
    proc: subprocess.Popen, project: Path, out_path: Path
) -> tuple[str, str, list[int]]:
    """Wait for train_local's first last.pt, then SIGSTOP its training processes so that whatever
    SLURM does next surely lands mid-run; returns (SLURM run id, job id, frozen pids)."""
    deadline = time.monotonic() + 600
    while not (project / "models/phantom/local/last.pt").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            fail_with_logs("training never wrote last.pt", project, out_path.read_text())
        time.sleep(0.3)
    run_id = run_id_of(out_path.read_text())
    job_id = subprocess.run(
        ["squeue", "-h", "--name", run_id, "-o", "%A"], capture_output=True, text=True, check=True
    ).stdout.split()[0]
    pids = training_pids(job_id)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    return run_id, job_id, pids


def thaw_after_sigterm(pids: list[int]) -> None:
    """Wait until SLURM's SIGTERM is pending in every frozen training process, then let them run."""
    deadline = time.monotonic() + 120
    while not all(term_pending(pid) for pid in pids):
        assert time.monotonic() < deadline, "no SIGTERM from SLURM within 2 minutes"
        time.sleep(0.3)
    for pid in pids:
        os.kill(pid, signal.SIGCONT)


def run_while(
    cmd: list[str], project: Path, out_path: Path, uri: str, act: Callable[[subprocess.Popen], T]
) -> tuple[str, T]:
    """Run Snakemake in the background, do `act` to it (and its SLURM jobs) meanwhile, and return its
    output once it succeeded, and what `act` returned. A failed test stops Snakemake (which cancels
    its SLURM jobs)."""
    with open(out_path, "w") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=project,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=tool_env(MLFLOW_TRACKING_URI=uri, **ON_CPU),
        )
    try:
        acted = act(proc)
        rc = proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=120)
    output = out_path.read_text()
    if rc != 0:
        fail_with_logs(f"{' '.join(cmd)} failed ({rc})", project, output)
    return output, acted


def assert_resumed(model_dir: Path, steps: int, world_size: int) -> None:
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["world_size"] == world_size
    assert metrics["steps"] == steps  # the step count of an uninterrupted run
    assert 0 < steps - metrics["steps_this_run"] < steps  # ... reached by resuming from last.pt


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.parametrize("nodes", [1, 2], ids=["one-node", "two-nodes"])
def test_training_stopped_by_its_time_limit_resumes(
    slurm_run: tuple[Path, str, str], mlflow_server: tuple[str, Path], tmp_path: Path, nodes: int
) -> None:
    """train_local on 2 GPUs (one node: one torchrun with 2 workers; two nodes: one torchrun per node,
    rendezvous from SLURM's variables) gets a time limit that is about to end after its first
    checkpoint: SLURM's warning signal makes it save and stop, Snakemake's retry resumes from last.pt
    and ends at the configured step count. MLflow is unreachable from the jobs: the runs are spooled
    and replayed afterwards with `prdit tracking-import`."""
    project, _, _ = slurm_run
    steps = 8
    model_dir = reset_training(project, steps)
    # 2 GPUs for stage 1 (on 1 or 2 nodes), as docs/slurm.md shows
    params = yaml.safe_load((project / "params.yaml").read_text())
    params = deep_merge(params, {"resources": {"train": {"local": {"gpu": 2, "nodes": nodes}}}})
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    # the profile as shipped, plus a GPU type and 4 CPUs for training, as docs/slurm.md shows
    # (a --set-resources on the command line would replace the profile's whole mapping)
    profile = yaml.safe_load((project / PROFILE / "config.yaml").read_text())
    profile = deep_merge(
        profile,
        {
            # the test cluster's partition `multi` holds two nodes (tests/slurm/start-cluster.sh)
            "set-resources": {
                "train": {"gpu_model": "test"} | ({"slurm_partition": "multi"} if nodes > 1 else {})
            },
            "set-threads": {"train": 4},
        },
    )
    (tmp_path / "profile").mkdir()
    (tmp_path / "profile" / "config.yaml").write_text(yaml.safe_dump(profile))

    def cut_time_limit(proc: subprocess.Popen) -> str:
        # With training frozen after its first checkpoint, cut the job's time limit to what leaves
        # less than the profile's warning margin (--signal=TERM@300): at its next periodic check
        # SLURM sends SIGTERM, which reaches the frozen, surely mid-run training (directly, or
        # through torchrun); then let it go on. The hard limit is still minutes away.
        run_id, job_id, pids = freeze_after_checkpoint(proc, project, tmp_path / "snakemake.out")
        assert len(pids) == 2, pids  # two GPUs: two workers (one per node on two nodes)
        elapsed = subprocess.run(
            ["squeue", "-h", "-j", job_id, "-o", "%M"], capture_output=True, text=True, check=True
        ).stdout.strip()
        seconds = sum(int(x) * 60**i for i, x in enumerate(reversed(elapsed.replace("-", ":").split(":"))))
        sh(["scontrol", "update", f"JobId={job_id}", f"TimeLimit={(seconds + 290) // 60}"])
        thaw_after_sigterm(pids)
        return run_id

    cmd = ["snakemake", "--profile", str(tmp_path / "profile"), "models/phantom/local/model.pt", *FAST_POLL]
    _, run_id = run_while(
        cmd, project, tmp_path / "snakemake.out", f"http://127.0.0.1:{free_port()}", cut_time_limit
    )

    jobs = slurm_jobs(run_id)
    assert [(j["rule"], j["State"]) for j in jobs] == [
        ("train", "FAILED"),
        ("train", "COMPLETED"),
    ]
    assert all(f"node={nodes}" in j["AllocTRES"] and "gres/gpu:test=2" in j["AllocTRES"] for j in jobs), jobs
    assert all(f"cpu={4 * nodes}," in j["AllocTRES"] for j in jobs), jobs  # the rule's threads per node
    logs = {p.name for p in (project / ".snakemake/slurm_logs/rule_train/phantom_local").glob("*.log")}
    # kept for the failed job only (the folder also holds earlier tests' jobs)
    assert f"{jobs[0]['JobIDRaw']}.log" in logs and f"{jobs[1]['JobIDRaw']}.log" not in logs, logs
    assert_resumed(model_dir, steps, world_size=2)

    # compute nodes could not reach MLflow: replay the spooled runs into the server afterwards
    uri, db = mlflow_server
    spools = sorted((project / ".prdit").glob("tracking-spool/*.jsonl"))
    assert len(spools) == 2, spools  # one per attempt
    before = mlflow_runs(db)
    for spool in spools:
        sh(["prdit", "tracking-import", str(spool)], cwd=project, MLFLOW_TRACKING_URI=uri)
    replayed = [run for run_id, run in mlflow_runs(db).items() if run_id not in before]
    # the stopped attempt (tagged requeue; FINISHED or KILLED depending on where the signal landed)
    # and the resumed one
    assert sorted((stage, exit_tag) for stage, _, exit_tag in replayed) == [
        ("train-local", ""),
        ("train-local", "requeue"),
    ], replayed
    assert [status for _, status, exit_tag in replayed if not exit_tag] == ["FINISHED"], replayed


@pytest.mark.slow
@pytest.mark.slurm
def test_requeued_training_job_resumes_as_the_same_job(
    slurm_run: tuple[Path, str, str], mlflow_server: tuple[str, Path], tmp_path: Path
) -> None:
    """Preemption as on a cluster with PreemptMode=REQUEUE: `scontrol requeue` of the running
    train_local job (submitted with --requeue by the profile). SLURM's SIGTERM makes training save
    last.pt; the job goes back to the queue as the same job, Snakemake waits for it without a retry
    of its own, and the second start resumes to the configured step count."""
    project, _, _ = slurm_run
    steps = 8
    model_dir = reset_training(project, steps)
    uri, db = mlflow_server
    before = mlflow_runs(db)

    def requeue(proc: subprocess.Popen) -> tuple[str, str]:
        run_id, job_id, pids = freeze_after_checkpoint(proc, project, tmp_path / "snakemake.out")
        assert len(pids) == 1, pids
        sh(["scontrol", "requeue", job_id])
        thaw_after_sigterm(pids)
        # SLURM holds a requeued job for about two minutes (its credential lifetime) before it may
        # start again; a test need not wait that long, so once it is pending, make it eligible now.
        deadline = time.monotonic() + 180
        while (
            subprocess.run(
                ["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True
            ).stdout.strip()
            != "PENDING"
        ):
            assert proc.poll() is None, "Snakemake ended while its job was requeued"
            assert time.monotonic() < deadline, "the requeued job never became pending"
            time.sleep(0.5)
        sh(["scontrol", "update", f"JobId={job_id}", "StartTime=now"])
        return run_id, job_id

    cmd = ["snakemake", "--profile", PROFILE, "models/phantom/local/model.pt", *FAST_POLL]
    output, (run_id, job_id) = run_while(cmd, project, tmp_path / "snakemake.out", uri, requeue)
    assert len(re.findall(r"^rule train:", output, re.M)) == 1, output  # one submission, no retry
    assert [(j["JobIDRaw"], j["State"]) for j in slurm_jobs(run_id)] == [(job_id, "COMPLETED")]
    starts = subprocess.run(
        ["sacct", "-D", "-X", "--parsable2", "--noheader", "-j", job_id, "-o", "State"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert starts == ["REQUEUED", "COMPLETED"], starts  # the same job ran twice
    assert_resumed(model_dir, steps, world_size=1)
    runs = [run for run_id, run in mlflow_runs(db).items() if run_id not in before]
    assert sorted((stage, exit_tag) for stage, _, exit_tag in runs) == [
        ("train-local", ""),
        ("train-local", "requeue"),
    ], runs
