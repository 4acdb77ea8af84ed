"""Exact resume after SIGKILL, and graceful stop on SIGTERM, of the training engine (real processes).

Run as a script, this file is the training child: `python tests/unit/train/test_resume.py OUT STEPS [slow|block]`.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.support.project import ROOT
from tests.support.training_checks import make_job

STEPS = 20
SIZE = 16


def _child(out: Path, steps: int, mode: str) -> int:
    """Train a small real PRDiT (local + one DiT block, all trainable) with checkpoints every 5 steps."""
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import prdit.model as models
    from prdit.train.engine import fit
    from prdit.train.signals import StopRequest
    from prdit.train.stages import StageModel

    g = torch.Generator().manual_seed(123)
    volumes = [torch.rand(1, SIZE, SIZE, SIZE, generator=g) * 2 - 1 for _ in range(6)]

    class Volumes(torch.utils.data.Dataset):
        calls = 0

        def __len__(self) -> int:
            return len(volumes)

        def __getitem__(self, i: int) -> torch.Tensor:
            Volumes.calls += 1
            if mode == "slow":
                time.sleep(0.15)
            if mode == "block" and Volumes.calls > 10 * 2:  # after step 10's checkpoint: wait to be killed
                time.sleep(3600)
            return volumes[i]

    torch.manual_seed(0)
    model = models.create("PRDiT-T/8/1", SIZE, freeze_local=False)
    sm = StageModel(model, SIZE, [n for n, q in model.named_parameters() if q.requires_grad])
    job = make_job(
        out,
        steps=steps,
        batch_size=2,
        lr=1e-3,
        seed=7,
        ema_decay=0.9,
        checkpoint_every=5,
        val_every=10,
        log_every=5,
        preview_n=0,
        fingerprint={"test": "resume"},
    )
    with StopRequest() as stop:
        return fit(job, sm, Volumes(), volumes[:2], stop=stop)


def _spawn(out: Path, steps: int, mode: str = "plain") -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, __file__, str(out), str(steps), mode],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(proc: subprocess.Popen, timeout: float = 300) -> int:
    out, _ = proc.communicate(timeout=timeout)
    proc.output = out  # type: ignore[attr-defined]
    return proc.returncode


def _step_of(path: Path) -> int:
    try:
        return torch.load(path, weights_only=True)["step"]
    except Exception:  # not there yet, or being replaced right now
        return -1


def _wait_for_checkpoint(path: Path, proc: subprocess.Popen, step: int, timeout: float = 240) -> None:
    end = time.monotonic() + timeout
    while _step_of(path) < step:
        assert proc.poll() is None, f"child exited early ({proc.returncode}): {proc.communicate()[0]}"
        assert time.monotonic() < end, "no checkpoint in time"
        time.sleep(0.05)


def _weights(out: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    final = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    raw = torch.load(out / "last.pt", weights_only=True)["model"]
    return final, raw


def _assert_bitwise(a: Path, b: Path) -> None:
    for x, y in zip(_weights(a), _weights(b)):
        assert x.keys() == y.keys()
        unequal = [k for k in x if not torch.equal(x[k], y[k])]
        assert not unequal, f"{len(unequal)} tensors differ, e.g. {unequal[0]}"


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("straight")
    proc = _spawn(out, STEPS)
    assert _finish(proc) == 0, proc.output
    return out


@pytest.mark.slow
def test_resume_after_sigkill_is_bitwise_identical(straight: Path, tmp_path: Path) -> None:
    proc = _spawn(tmp_path, STEPS, "block")
    _wait_for_checkpoint(tmp_path / "last.pt", proc, 10)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "model.pt").exists()
    assert _step_of(tmp_path / "last.pt") == 10

    again = _spawn(tmp_path, STEPS)
    assert _finish(again) == 0, again.output
    assert "resumed local" in again.output and "at step 10" in again.output
    _assert_bitwise(straight, tmp_path)


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_with_requeue_status(straight: Path, tmp_path: Path) -> None:
    from prdit.train.signals import EXIT_REQUEUE

    proc = _spawn(tmp_path, STEPS, "slow")
    _wait_for_checkpoint(tmp_path / "last.pt", proc, 5)
    proc.send_signal(signal.SIGTERM)
    assert _finish(proc) == EXIT_REQUEUE == 75, proc.output
    assert not (tmp_path / "model.pt").exists()
    state = torch.load(tmp_path / "last.pt", weights_only=True)  # loadable, mid-run
    assert 5 <= state["step"] < STEPS
    assert all(torch.isfinite(v).all() for v in state["model"].values())

    again = _spawn(tmp_path, STEPS)  # the requeued job
    assert _finish(again) == 0, again.output
    _assert_bitwise(straight, tmp_path)


if __name__ == "__main__":
    sys.exit(_child(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]))
