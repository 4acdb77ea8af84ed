"""A trainer never outlives its launcher, and two trainers never share a stage's folder (real processes)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from prdit.train.signals import exclusive
from tests.support.project import ROOT, tool_env

# The worker torchrun starts: watches its launcher as `prdit train` does, and on SIGTERM (what the watch
# sends) records it and exits as the engine would after its checkpoint.
WORKER = """
import os, signal, sys, time
from pathlib import Path
from prdit.train.signals import stop_when_orphaned
out = Path(sys.argv[1])
def stop(signum, frame):
    out.write_text("stopped by SIGTERM")
    sys.exit(75)
signal.signal(signal.SIGTERM, stop)
stop_when_orphaned(interval_s=0.2)
(out.parent / "pid").write_text(str(os.getpid()))
while True:
    time.sleep(0.1)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text() if Path(f"/proc/{pid}/stat").exists() else ""
    return bool(stat) and stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_for(what: str, condition, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s  # a deadline for a hung test, not a speed requirement
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.2)


def test_killing_the_workflow_process_group_stops_the_torchrun_workers(tmp_path: Path) -> None:
    """`kill -9` of the job's process group (what killing Snakemake does to its job shells) kills torchrun
    but not its workers (torchrun puts them in sessions of their own): they must notice and stop."""
    (tmp_path / "worker.py").write_text(WORKER)
    marker = tmp_path / "stopped"
    launcher = subprocess.Popen(
        ["prdit", "launch", "--gpus", "1", "--", sys.executable, str(tmp_path / "worker.py"), str(marker)],
        env=tool_env(PYTHONPATH=str(ROOT)),
        start_new_session=True,  # its own process group, like a Snakemake job shell
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_for("the worker to start", (tmp_path / "pid").exists)
    worker = int((tmp_path / "pid").read_text())
    assert os.getpgid(worker) != launcher.pid  # out of the group the kill reaches
    os.killpg(launcher.pid, signal.SIGKILL)
    launcher.wait()
    _wait_for("the orphaned worker to stop", lambda: not _alive(worker))
    assert marker.read_text() == "stopped by SIGTERM"  # the graceful stop: last.pt written, exit 75


def test_a_second_trainer_on_the_same_stage_is_refused_in_one_line(tmp_path: Path) -> None:
    """While a trainer holds models/<dataset>/<stage>/, `prdit train` on it fails at once, naming it."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    folder = tmp_path / "models" / "phantom" / "local"
    with exclusive(folder):
        res = subprocess.run(
            ["prdit", "train", "--dataset", "phantom", "--stage", "local"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=tool_env(PRDIT_TRACKING="off"),
            timeout=300,
        )
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert (
        len(lines) == 1
        and "another prdit train is running" in lines[0]
        and "models/phantom/local" in lines[0]
    )
    assert not (folder / "last.pt").exists()
    with exclusive(folder):  # released when its holder ends
        pass
