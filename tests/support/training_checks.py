"""Comparing two trainings that should be the same up to float rounding (DDP vs one process, accumulation).

Rounding differs with the order of a reduction (all-reduce order, micro-batch split, the machine's kernels),
so neither check may depend on one machine's rounding:
- plain SGD keeps the difference at rounding size: compare the weight updates tightly, by norm;
- Adam's g / sqrt(v) can turn a rounding-size difference in a near-zero gradient into up to a whole step
  per element: bound each element by what Adam can move it, and compare tightly only on average.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from prdit import paths
from prdit.config import Params
from prdit.diffusion import loss as ian_loss
from prdit.diffusion import q_sample
from prdit.stages._models import build
from prdit.stages.train import job_from_params
from prdit.train import data
from prdit.train.engine import Job, fit
from prdit.train.stages import StageModel
from prdit.train.validate import LossFn
from tests.support.project import params_with

# Worst-case relative rounding of a float32 sum of n terms is n * 2^-24 of the sum of |terms| (~1e-3 for
# the ~1e4-term gradient sums of these tiny models; typically sqrt(n) * 2^-24 ~ 1e-5). A broken all-reduce
# or micro-batch split changes each update by tens of percent.
SGD_REL = 1e-3
# Rounding flips only elements whose gradient is within rounding of zero: on average far below 1% of lr.
ADAM_MEAN_OF_LR = 1e-2


def flat_update(after: dict[str, torch.Tensor], before: dict[str, torch.Tensor]) -> torch.Tensor:
    """All weights' change from `before`, as one float64 vector (keys of `after`, sorted)."""
    return torch.cat([(after[k].double() - before[k].double()).flatten() for k in sorted(after)])


def assert_same_sgd_updates(one: torch.Tensor, two: torch.Tensor) -> None:
    """Two SGD runs' weight updates (flat_update) agree to SGD_REL of their norm."""
    rel = ((two - one).norm() / one.norm()).item()
    assert one.norm() > 0 and rel <= SGD_REL, rel


def assert_same_adam_weights(
    one: dict[str, torch.Tensor], two: dict[str, torch.Tensor], lr: float, steps: int
) -> None:
    """Adam (betas 0.9, 0.999): each element within 2 * lr * steps, the mean within ADAM_MEAN_OF_LR * lr.

    For the first steps the bias correction keeps |m_hat| <= sqrt(v_hat), so one step moves an element by
    at most lr and two runs cannot differ by more than 2 * lr * steps, whatever rounding does (EMA weights
    are averages of raw ones and obey the same bound).
    """
    assert one.keys() == two.keys()
    diffs = torch.cat([(two[k].double() - one[k].double()).abs().flatten() for k in one])
    assert diffs.max().item() <= 2 * lr * steps * (1 + 1e-6), diffs.max().item()
    assert diffs.mean().item() <= ADAM_MEAN_OF_LR * lr, diffs.mean().item()


def sgd_instead_of_adamw(params, lr: float, **_: object) -> torch.optim.Optimizer:  # noqa: ANN001
    """Stands in for torch.optim.AdamW (same call) to train with plain SGD."""
    return torch.optim.SGD(params, lr=lr)


def make_job(out_dir: Path, stage: str = "local", **changes: Any) -> Job:
    """A Job with the project's params.yaml settings for `stage`, changed by name (Job.with_settings)."""
    p = params_with()
    job = Job(
        stage=stage,
        out_dir=out_dir,
        train=p.train.stage(stage),
        common=p.train.common,
        diffusion=p.diffusion,
        compile_cache=paths.inductor_cache(),  # as prdit train sets it
    )
    return job.with_settings(**changes)


def per_sample_loss(job: Job) -> LossFn:
    """The IaN loss with the engine's per-sample (t, noise), written out: a batch is the sum of its samples."""
    seed, timesteps, noise_std = job.common.seed, job.diffusion.timesteps, job.diffusion.noise_std

    def loss_fn(model, x0, positions, stream):
        t, noise = data.draw(
            positions, x0.shape[1:], seed=seed, timesteps=timesteps, device=x0.device, stream=stream
        )
        eps = noise * noise_std
        out = model(q_sample(x0, t, eps, timesteps), t)
        loss_eps = (out[:, :1] - eps).square().mean()
        loss_x0 = (out[:, 1:] - x0).square().mean()
        return loss_eps + loss_x0, {"loss_eps": loss_eps.detach(), "loss_x0": loss_x0.detach()}

    return loss_fn


def volumes(n: int, size: int, seed: int = 0) -> list[torch.Tensor]:
    """`n` uniform random [-1, 1] cubes, the same for the same seed."""
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(1, size, size, size, generator=g) * 2 - 1 for _ in range(n)]


def train_stage(p: Params, dataset: str, stage: str, **changes: Any) -> tuple[StageModel, Job]:
    """Build `stage` from `p` and train it on 4 random volumes (2 of them for validation)."""
    sm = build(p, dataset, stage)
    job = job_from_params(p, dataset, stage, sm.parents).with_settings(**changes)
    vols = volumes(4, sm.input_size)
    assert fit(job, sm, vols, vols[:2]) == 0
    return sm, job


def adamw_step(model: torch.nn.Module, x0: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """One AdamW step (lr 1e-3) of the trainable parameters on the IaN loss; returns the loss."""
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-3)
    loss, _ = ian_loss(model, x0, generator=torch.Generator().manual_seed(seed))
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss
