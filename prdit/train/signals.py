"""Graceful stop on the signals a scheduler sends before it kills a job, and the exit statuses.

Exit statuses of `prdit train` (prdit.stages.train.run's return value; `prdit sample` the same way):
  0   EXIT_OK       training finished; model.pt and metrics.json are written (sampling: the folder).
  75  EXIT_REQUEUE  stopped by SIGTERM or SIGUSR1 (SLURM time limit / preemption; the slurm profile asks for
                    `--signal=TERM@300`, which reaches every task, not `B:` which reaches only the batch
                    shell) after writing last.pt (sampling: after the batch in progress). Rerunning the
                    same command resumes exactly (75 is EX_TEMPFAIL of sysexits.h: "try again later";
                    requeue on it, e.g. Snakemake `--retries`, or `scontrol requeue` in a batch script).
  130 EXIT_INTERRUPTED  stopped by Ctrl-C (SIGINT) after writing last.pt; a second Ctrl-C aborts at once.
  1   any error (raised, reported by the CLI); last.pt holds the last good checkpoint.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from prdit.errors import PrditError

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_REQUEUE = 75
EXIT_INTERRUPTED = 130

_STATUS = {signal.SIGTERM: EXIT_REQUEUE, signal.SIGUSR1: EXIT_REQUEUE, signal.SIGINT: EXIT_INTERRUPTED}


class StopRequest:
    """Records a stop signal for the training loop to act on between steps; a context manager."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_status(self) -> int:
        return _STATUS.get(self.signum, EXIT_REQUEUE) if self.signum is not None else EXIT_OK

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signum is None:
            self.signum = signum
        # no logging here: a handler can run inside a logging call and deadlock on its lock

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is not threading.main_thread():
            log.debug("not the main thread: stop signals are not handled")
            return self
        for sig in _STATUS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()


def stop_when_orphaned(interval_s: float = 1.0) -> threading.Thread | None:
    """Under torchrun, stop (SIGTERM to this process: checkpoint, exit 75) once the launcher is gone.

    torchrun starts its workers in sessions of their own, so killing the workflow's process group (e.g.
    `kill -9` of Snakemake and its job shells) would leave them training, parent 1, while a re-run starts
    a second trainer on the same files. Only under torchrun (TORCHELASTIC_RUN_ID): a `prdit train` started
    by hand under nohup keeps running when its shell goes."""
    if not os.environ.get("TORCHELASTIC_RUN_ID"):
        return None
    launcher = os.getppid()

    def watch() -> None:
        while os.getppid() == launcher:
            time.sleep(interval_s)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, name="prdit-orphan-watch", daemon=True)
    thread.start()
    return thread


class AlreadyTraining(PrditError):
    """Another `prdit train` holds the stage's folder."""


@contextmanager
def exclusive(folder: Path) -> Iterator[None]:
    """Hold `folder`/.train.lock while training: a second trainer on the same stage fails at once with one
    line instead of writing the same last.pt. The lock (flock) goes with the process, however it ends; the
    lock file is removed on release, and `folder` too when this run made it and left it empty (a failed
    precondition leaves no output folder)."""
    from prdit import io

    made = [d for d in (folder, *folder.parents) if not d.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    lock = io.exclusive(folder / ".train.lock", str(folder))
    try:
        try:
            lock.__enter__()
        except io.Busy:
            raise AlreadyTraining(
                f"{folder}: another prdit train is running on this stage (it holds {folder / '.train.lock'}); "
                "stop it first"
            ) from None
        try:
            yield
        finally:
            lock.__exit__(None, None, None)
    finally:
        for d in made:  # innermost first
            try:
                d.rmdir()
            except OSError:  # not empty (the run wrote something), or another run's
                break
