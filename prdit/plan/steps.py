"""One training step, one sampler call, one MS-SSIM pair and the feature extractor of the real models, on
fake tensors: their FLOPs and peak bytes (prdit.plan.measure), for `prdit plan` and `micro_batch: auto`
(`micro_batch`: prdit.train.batching's choice from the parameters, for `prdit train` and `prdit plan`)."""

from __future__ import annotations

import torch

from prdit import precision, topology
from prdit.config import Params
from prdit.diffusion.ian import loss as ian_loss
from prdit.plan.measure import Flops, count_flops, fake_mode, peak_bytes, traffic_bytes
from prdit.stages._models import stage_spec
from prdit.train import batching
from prdit.train.stages import PARENT, assemble


def stage_model(p: Params, stage: str) -> torch.nn.Module:
    """The stage's model as training builds it (prdit.train.stages.assemble) with fresh parents; call it
    under fake_mode() so nothing is allocated."""
    parent = PARENT[stage]
    frozen = stage_model(p, parent) if parent else None
    return assemble(stage_spec(p, stage), frozen).model


def _autocast(prec: precision.Precision) -> torch.autocast:
    """The CUDA autocast of `prec` mirrored on the CPU, so activations are stored in the dtype they will be."""
    return torch.autocast("cpu", dtype=prec.autocast or torch.bfloat16, enabled=prec.autocast is not None)


def peak_kind(prec: precision.Precision) -> str:
    """Which peak of prdit.plan.gpus the network's matmuls run at."""
    return "bf16" if prec.autocast == torch.bfloat16 else "tf32" if prec.tf32_matmul else "fp32"


def training_precision(p: Params) -> precision.Precision:
    return p.conventions.training


def sampling_precision(p: Params) -> precision.Precision:
    return p.conventions.sampling


def _volume(p: Params, batch: int, size: int, channels: int = 1) -> torch.Tensor:
    return torch.randn(batch, channels, size, size, size)


def train_step_flops(p: Params, stage: str) -> Flops:
    """FLOPs of one sample's forward + loss + backward in `stage` (linear in the batch)."""
    with fake_mode():
        model = stage_model(p, stage)
        size = model.input_size

        def step() -> None:
            x0 = _volume(p, 1, size, model.in_channels)
            t = torch.randint(0, p.diffusion.timesteps, (1,))
            with _autocast(training_precision(p)):
                loss, _ = ian_loss(model, x0, t=t, noise=torch.randn_like(x0) * p.diffusion.noise_std)
            loss.backward()

        return count_flops(step)


def train_step_bytes(p: Params, stage: str, micro: int, ddp: bool = False) -> int:
    """Peak bytes of live tensors in one training step at per-GPU micro-batch `micro`, AdamW state
    allocated (as from the second step on); with `ddp`, plus DDP's gradient buckets (one fp32 copy of
    the trained parameters)."""
    with fake_mode():
        model = stage_model(p, stage)
        size = model.input_size
        trained = [q for q in model.parameters() if q.requires_grad]
        opt = torch.optim.AdamW(trained, lr=1e-4, foreach=False)

        def step() -> None:
            x0 = _volume(p, micro, size, model.in_channels)
            t = torch.randint(0, p.diffusion.timesteps, (micro,))
            with _autocast(training_precision(p)):
                loss, _ = ian_loss(model, x0, t=t, noise=torch.randn_like(x0) * p.diffusion.noise_std)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        peak = peak_bytes(step, model, opt, warmup=True)
        return peak + (sum(q.numel() * 4 for q in trained) if ddp else 0)


def micro_batch(
    p: Params, stage: str, processes: int, budget_gib: float | None = None, estimate: bool = True
) -> batching.Choice:
    """The micro-batch and accumulation of `stage` on `processes` GPUs (prdit.train.batching.micro_batch);
    `budget_gib` is the GPU memory `auto` fits into (train.common.gpu_memory_gib wins when set). With
    `estimate`, the peak memory at the chosen micro-batch is measured on fake tensors (a few seconds)."""
    cfg, common = p.train.stage(stage), p.train.common
    ddp = processes > 1
    return batching.micro_batch(
        stage,
        batch_size=cfg.batch_size,
        micro=cfg.micro_batch,
        grad_accum=common.grad_accum,
        processes=processes,
        budget_gib=common.gpu_memory_gib or budget_gib,
        peak=lambda m: train_step_bytes(p, stage, m, ddp=ddp),
        estimate=estimate,
    )


def sample_model(p: Params, size: int) -> torch.nn.Module:
    return stage_model(p, topology.sampler(size, p.preprocess.size, p.preprocess.highres_size))


def model_calls(p: Params) -> int:
    """Network evaluations per generated volume (the sampler's grid)."""
    from prdit.diffusion.sampler import reference_grid

    if p.conventions.sampler_grid == "reference":
        return len(reference_grid(p.sample.steps, p.diffusion.timesteps)) - 1
    return p.sample.steps


def sample_call(p: Params, size: int, batch: int) -> tuple[Flops, int]:
    """FLOPs and peak bytes of one sampler step (model call + update) for `batch` volumes."""
    with fake_mode():
        model = sample_model(p, size).eval()
        x = _volume(p, batch, size, model.in_channels)

        def call() -> None:
            with torch.no_grad(), _autocast(sampling_precision(p)):
                out = model(x, torch.full((batch,), p.diffusion.timesteps // 2))
            x.add_(out[:, : model.in_channels].float(), alpha=0.01)

        return count_flops(call), peak_bytes(call, model)


def pair_bytes(size: int) -> int:
    """Memory traffic of one MS-SSIM pair (prdit.evaluate.ms_ssim.ms_ssim_batch as evaluation runs it)."""
    from prdit.evaluate.ms_ssim import ms_ssim_batch

    a = torch.empty((1, size, size, size), device="meta")
    return traffic_bytes(lambda: ms_ssim_batch(a, a))


def extractor_cost(size: int, batch: int) -> tuple[Flops, int]:
    """FLOPs per volume and peak bytes at `batch` volumes of the feature extractor's forward pass."""
    from prdit.evaluate.resnet3d import MedicalNetResNet50

    with fake_mode():
        model = MedicalNetResNet50().eval()

        def forward(n: int):
            with torch.no_grad():
                return lambda: model(torch.randn(n, 1, size, size, size))

        return count_flops(forward(1)), peak_bytes(forward(batch), model)
