"""DDP over 2 CPU processes (gloo, launched by the real torchrun) equals 1 process with the whole batch.

Run as a script, this file is the training child: `python tests/test_train_ddp.py OUT GLOBAL_BATCH ACCUM`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SIZE = 16


def _child(out: Path, global_batch: int, accum: int) -> int:
    torch.set_num_threads(1)
    import prdit.model as models
    from prdit.diffusion import q_sample
    from prdit.train import data, distributed
    from prdit.train.engine import Job, fit
    from prdit.train.stages import StageModel

    env = distributed.setup(prefer_cuda=False)
    g = torch.Generator().manual_seed(5)
    volumes = [torch.rand(1, SIZE, SIZE, SIZE, generator=g) * 2 - 1 for _ in range(7)]
    torch.manual_seed(0)
    model = models.create("PRDiT-T/8/1", SIZE, freeze_local=False)
    sm = StageModel(model, SIZE, [n for n, q in model.named_parameters() if q.requires_grad])
    job = Job(stage="local", out_dir=out, steps=4, batch_size=global_batch, grad_accum=accum, lr=1e-3, seed=3,
              ema_decay=0.5, checkpoint_every=2, val_every=2, log_every=2, preview_n=0)

    def loss_fn(net, x0, positions, stream):  # IaN loss with the engine's per-sample time and noise
        t, noise = data.draw(positions, x0.shape[1:], seed=job.seed, timesteps=job.timesteps, device=x0.device,
                             stream=stream)
        eps = noise * job.noise_std
        out = net(q_sample(x0, t, eps, job.timesteps), t)
        loss = (out[:, :1] - eps).square().mean() + (out[:, 1:] - x0).square().mean()
        return loss, {}

    try:
        return fit(job, sm, volumes, volumes[:3], env=env, loss_fn=loss_fn)
    finally:
        distributed.teardown()


def _run(cmd: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def assert_same_training(one: dict[str, torch.Tensor], two: dict[str, torch.Tensor], lr: float) -> None:
    """Equal up to float rounding, which Adam's g / sqrt(v) can blow up to a few % of one step (lr)
    on near-zero gradients: bound the worst element by 5% of lr and the mean by 0.1% of lr."""
    diffs = [(two[k] - one[k]).abs().flatten() for k in one]
    worst = max(d.max().item() for d in diffs)
    mean = torch.cat(diffs).mean().item()
    assert worst <= 0.05 * lr and mean <= 1e-3 * lr, (worst, mean)


def _weights(out: Path) -> dict[str, torch.Tensor]:
    final = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    raw = torch.load(out / "last.pt", weights_only=True)["model"]
    return {**{f"ema.{k}": v for k, v in final.items()}, **{f"raw.{k}": v for k, v in raw.items()}}


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("single")
    _run([sys.executable, __file__, str(out), "4", "1"])
    return out


@pytest.mark.slow
@pytest.mark.parametrize("accum", [1, 2])
def test_two_gloo_processes_match_one_process_with_the_whole_batch(single: Path, tmp_path: Path, accum: int) -> None:
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__,
          str(tmp_path), "4", str(accum)])
    one, two = _weights(single), _weights(tmp_path)
    assert one.keys() == two.keys()
    assert_same_training(one, two, lr=1e-3)
    metrics_one = (single / "metrics.json").read_text()
    metrics_two = (tmp_path / "metrics.json").read_text()
    assert '"world_size": 1' in metrics_one and '"world_size": 2' in metrics_two
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "metrics.json", "model.pt"]


if __name__ == "__main__":
    sys.exit(_child(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))
