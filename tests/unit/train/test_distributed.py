"""DDP over 2 CPU processes (gloo, launched by the real torchrun) equals 1 process with the whole batch.

Run as a script, this file is the training child: `python tests/unit/train/test_distributed.py OUT GLOBAL_BATCH ACCUM [broken]`.
The child trains twice, into OUT/adam (the engine as it is) and OUT/sgd (plain SGD swapped in for AdamW).
With `broken`, every rank skips the gradient all-reduce: the tests check that the comparison catches it.

Why two optimizers: see tests/support/training_checks.py (rounding differs with the all-reduce order and between
machines; SGD keeps it at rounding size, Adam does not).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.support.project import ROOT
from tests.support.training_checks import (
    assert_same_adam_weights,
    assert_same_sgd_updates,
    flat_update,
    make_job,
    per_sample_loss,
    sgd_instead_of_adamw,
)

SIZE = 16
STEPS = 4
LR = 1e-3


class _NoSyncDDP(torch.nn.Module):
    """A DDP stand-in that never all-reduces gradients: each rank trains on its own half-batch."""

    def __init__(self, module: torch.nn.Module, **_: object) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: object, **kwargs: object) -> torch.Tensor:
        return self.module(*args, **kwargs)

    def no_sync(self):  # noqa: ANN201
        import contextlib

        return contextlib.nullcontext()


def _child(out: Path, global_batch: int, accum: int, broken: bool) -> int:
    torch.set_num_threads(1)
    import prdit.model as models
    from prdit.train import distributed, engine
    from prdit.train.engine import fit
    from prdit.train.stages import StageModel

    if broken:
        engine.DDP = _NoSyncDDP
    adamw = torch.optim.AdamW
    env = distributed.setup()  # on the CPU: PRDIT_DEVICE=cpu (_run)
    g = torch.Generator().manual_seed(5)
    volumes = [torch.rand(1, SIZE, SIZE, SIZE, generator=g) * 2 - 1 for _ in range(7)]
    try:
        for name in ("adam", "sgd"):
            torch.optim.AdamW = adamw if name == "adam" else sgd_instead_of_adamw
            torch.manual_seed(0)
            model = models.create("PRDiT-T/8/1", SIZE, freeze_local=False)
            sm = StageModel(model, SIZE, [n for n, q in model.named_parameters() if q.requires_grad])
            job = make_job(
                out / name,
                steps=STEPS,
                batch_size=global_batch,
                grad_accum=accum,
                lr=LR,
                seed=3,
                ema_decay=0.5,
                checkpoint_every=2,
                val_every=2,
                log_every=2,
                preview_n=0,
            )
            loss_fn = per_sample_loss(job)
            status = fit(job, sm, volumes, volumes[:3], env=env, loss_fn=loss_fn)
            if status:
                return status
        return 0
    finally:
        torch.optim.AdamW = adamw
        distributed.teardown()


def _run(cmd: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), PRDIT_DEVICE="cpu")
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _torchrun(out: Path, accum: int, broken: bool = False) -> None:
    _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            __file__,
            str(out),
            "4",
            str(accum),
            *(["broken"] if broken else []),
        ]
    )


def _weights(out: Path) -> dict[str, torch.Tensor]:
    """EMA weights (model.pt) and raw weights (last.pt) of the trained parameters."""
    final = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    raw = torch.load(out / "last.pt", weights_only=True)["model"]
    return {**{f"ema.{k}": v for k, v in final.items()}, **{f"raw.{k}": v for k, v in raw.items()}}


def _compare(one: Path, two: Path, init: Path) -> None:
    start = _weights(init)
    assert_same_sgd_updates(
        flat_update(_weights(one / "sgd"), start), flat_update(_weights(two / "sgd"), start)
    )
    assert_same_adam_weights(_weights(one / "adam"), _weights(two / "adam"), LR, STEPS)


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("single")
    _run([sys.executable, __file__, str(out), "4", "1"])
    return out


@pytest.fixture(scope="module")
def init(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The common initial weights, as a zero-step run writes them (same seed as every run)."""
    out = tmp_path_factory.mktemp("init")
    _run([sys.executable, "-c", _INIT, str(out), str(SIZE)])
    return out


_INIT = """
import sys
from pathlib import Path
import torch
import prdit.model as models
out, size = Path(sys.argv[1]), int(sys.argv[2])
torch.manual_seed(0)
model = models.create("PRDiT-T/8/1", size, freeze_local=False)
models.save(out / "model.pt", model, meta={})
torch.save({"model": model.state_dict()}, out / "last.pt")
"""


@pytest.mark.slow
@pytest.mark.parametrize("accum", [1, 2])
def test_two_gloo_processes_match_one_process_with_the_whole_batch(
    single: Path, init: Path, tmp_path: Path, accum: int
) -> None:
    _torchrun(tmp_path, accum)
    _compare(single, tmp_path, init)
    metrics_one = (single / "adam" / "metrics.json").read_text()
    metrics_two = (tmp_path / "adam" / "metrics.json").read_text()
    assert '"world_size": 1' in metrics_one and '"world_size": 2' in metrics_two
    assert sorted(p.name for p in (tmp_path / "adam").iterdir()) == ["last.pt", "metrics.json", "model.pt"]


@pytest.mark.slow
def test_the_comparison_catches_ranks_that_skip_the_gradient_all_reduce(
    single: Path, init: Path, tmp_path: Path
) -> None:
    _torchrun(tmp_path, 1, broken=True)
    start = _weights(init)
    with pytest.raises(AssertionError):
        assert_same_sgd_updates(
            flat_update(_weights(single / "sgd"), start), flat_update(_weights(tmp_path / "sgd"), start)
        )
    with pytest.raises(AssertionError):
        assert_same_adam_weights(_weights(single / "adam"), _weights(tmp_path / "adam"), LR, STEPS)


if __name__ == "__main__":
    sys.exit(_child(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), "broken" in sys.argv[4:]))
