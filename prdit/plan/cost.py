"""The cost of each GPU job of the DAG from the real models on fake tensors, against its rule's limits.

Time = FLOPs / (peak of the precision the job computes in x MFU). What each job computes in is
prdit.precision's: training bf16 autocast (protocol project) or TF32 (paper, the reference's "high");
sampling as training under project, strict fp32 under paper; attention at the bf16 peak (its kernels run
in bf16 under both protocols); evaluation TF32 (cuDNN's default), MS-SSIM at its memory traffic over the
GPU's bandwidth when that takes longer. MFU is ASSUMED_MFU unless a calibration file measured on the GPU
exists (CALIBRATION, written by benchmarks/gpu_check.py).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from prdit import precision, protocol
from prdit.config import Params
from prdit.diffusion.ian import loss as ian_loss
from prdit.plan import limits
from prdit.plan.gpus import CUDA_OVERHEAD_GIB, GPU, MEM_FRACTION
from prdit.plan.measure import Flops, count_flops, fake_mode, peak_bytes, traffic_bytes
from prdit.train import data

GIB = 2**30
ASSUMED_MFU = {"train": 0.35, "sample": 0.35, "evaluate": 0.25}  # assumed: no GPU run has measured them yet
CALIBRATION = Path("benchmarks") / "gpu_calibration.json"  # {"<gpu>": {"mfu": {"train": .., ...}}}
HOST_BASE_GIB = 6.0  # one process: Python, torch + CUDA libraries, the model's CPU copy while loading
LIMIT_MARGIN_H = 0.25  # of each job's time limit kept for start-up and the final write


@dataclass
class JobCost:
    job: str
    gpus: int
    flops: int  # the whole job (all its GPUs, all its resumed attempts), FlopCounterMode convention
    precision: str
    mfu: float
    gpu_hours: float
    wall_hours: float
    gpu_mem_gib: float  # peak per process, CUDA overhead included
    host_mem_gib: float
    time_limit_hours: float
    mem_limit_gib: float
    attempts: int  # jobs in a row (a resumable job continues where the last one stopped)
    verdict: str  # fits | resumes | over GPU memory | over host memory | over time limit
    advice: str = ""

    @property
    def ok(self) -> bool:
        return self.verdict in ("fits", "resumes")

    def as_dict(self) -> dict:
        return asdict(self)


def calibration(gpu: GPU) -> dict:
    """This GPU's entry of CALIBRATION ({"mfu": {kind: x}, "date": .., the figures}); {} when none."""
    if not CALIBRATION.is_file():
        return {}
    return json.loads(CALIBRATION.read_text()).get(gpu.key, {})


def mfu(gpu: GPU, kind: str) -> float:
    """Model-FLOPs utilisation: measured for this GPU when benchmarks/gpu_calibration.json has it."""
    measured = calibration(gpu).get("mfu", {})
    return float(measured[kind]) if kind in measured else ASSUMED_MFU[kind]


def mfu_source(gpu: GPU) -> str:
    """Where the MFU of each job kind comes from: measured on a date (CALIBRATION) or assumed."""
    entry = calibration(gpu)
    measured = [k for k in ASSUMED_MFU if k in entry.get("mfu", {})]
    assumed = [k for k in ASSUMED_MFU if k not in measured]
    if not measured:
        return f"MFU assumed (no {gpu.key} entry in {CALIBRATION})"
    said = f"MFU measured on {entry.get('date', 'an unknown date')} ({CALIBRATION})"
    if assumed:
        said = f"{said} for {', '.join(measured)}; assumed for {', '.join(assumed)}"
    return said


def seconds(f: Flops, gpu: GPU, kind: str, util: float) -> float:
    """Seconds to compute `f`: attention at the bf16 peak, the rest at the `kind` peak, both x `util`."""
    return (f.attention / gpu.peak("bf16") + (f.total - f.attention) / gpu.peak(kind)) / util


# ------------------------------------------------------------------------------------------ models
def stage_model(p: Params, stage: str) -> torch.nn.Module:
    """The stage's model as training builds it (prdit.train.stages.assemble) with fresh parents; call it
    under fake_mode() so nothing is allocated."""
    from prdit.train.stages import PARENT, assemble

    parent = PARENT[stage]
    frozen = stage_model(p, parent) if parent else None
    return assemble(p, stage, frozen).model


def _autocast(prec: precision.Precision) -> torch.autocast:
    """The CUDA autocast of `prec` mirrored on the CPU, so activations are stored in the dtype they will be."""
    return torch.autocast("cpu", dtype=prec.autocast or torch.bfloat16, enabled=prec.autocast is not None)


def peak_kind(prec: precision.Precision) -> str:
    """Which peak of prdit.plan.gpus the network's matmuls run at."""
    return "bf16" if prec.autocast == torch.bfloat16 else "tf32" if prec.tf32_matmul else "fp32"


def _training(p: Params) -> precision.Precision:
    return precision.training(protocol.is_paper(p))


def _sampling(p: Params) -> precision.Precision:
    return precision.sampling(protocol.is_paper(p))


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
            with _autocast(_training(p)):
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
            with _autocast(_training(p)):
                loss, _ = ian_loss(model, x0, t=t, noise=torch.randn_like(x0) * p.diffusion.noise_std)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        peak = peak_bytes(step, model, opt, warmup=True)
        return peak + (sum(q.numel() * 4 for q in trained) if ddp else 0)


def affine_bytes(measure, at: int) -> int:
    """Peak bytes at batch `at` from measurements at 1 and 2: memory is affine in the batch."""
    one, two = measure(1), measure(2)
    return one + (two - one) * (at - 1)


def sample_model(p: Params, size: int) -> torch.nn.Module:
    stage = "highres" if size == p.preprocess.highres_size else "global"
    return stage_model(p, stage)


def model_calls(p: Params) -> int:
    """Network evaluations per generated volume (the sampler's grid)."""
    from prdit.diffusion.sampler import reference_grid

    if protocol.is_paper(p):
        return len(reference_grid(p.sample.steps, p.diffusion.timesteps)) - 1
    return p.sample.steps


def sample_call(p: Params, size: int, batch: int) -> tuple[Flops, int]:
    """FLOPs and peak bytes of one sampler step (model call + update) for `batch` volumes."""
    with fake_mode():
        model = sample_model(p, size).eval()
        x = _volume(p, batch, size, model.in_channels)

        def call() -> None:
            with torch.no_grad(), _autocast(_sampling(p)):
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


# ------------------------------------------------------------------------------------------ jobs
def _verdict(gpu: GPU, mem: float, host: float, hours: float, lim: limits.Limit) -> tuple[str, int]:
    usable = lim.runtime_h - LIMIT_MARGIN_H
    attempts = max(1, math.ceil(hours / usable))
    if mem > gpu.mem_gib * MEM_FRACTION:
        return "over GPU memory", attempts
    if host > lim.mem_gib:
        return "over host memory", attempts
    if attempts == 1:
        return "fits", 1
    return ("resumes", attempts) if lim.resumable else ("over time limit", attempts)


def _train_resources(p: Params, stage: str) -> int:
    r = p.raw.get("resources", {}).get("train", {}).get(stage, {})
    return int(r.get("gpu", 1)) * int(r.get("nodes", 1))


def train_job(p: Params, dataset: str, stage: str, gpu: GPU) -> JobCost:
    from prdit.train.batching import micro_batch

    cfg = p.train.stage(stage)
    gpus = _train_resources(p, stage)
    highres = stage == "highres"
    lim = limits.limit("train", highres)
    choice = micro_batch(p, stage, gpus, budget_gib=gpu.mem_gib)
    per_sample = train_step_flops(p, stage)
    total = per_sample * (cfg.steps * cfg.batch_size)
    util = mfu(gpu, "train")
    kind = peak_kind(_training(p))
    gpu_h = seconds(total, gpu, kind, util) / 3600
    wall = gpu_h / gpus
    mem = choice.bytes / GIB + CUDA_OVERHEAD_GIB
    size = p.preprocess.highres_size if highres else p.preprocess.size
    # each process's loader: its micro-batches in flight, float16, as prdit.train.data holds them
    loader = data.host_bytes(p.train.common.num_workers, choice.micro, size)
    host = HOST_BASE_GIB + loader * gpus / GIB
    verdict, attempts = _verdict(gpu, mem, host, wall, lim)
    advice = choice.note
    if verdict == "over GPU memory":
        advice = f"set train.{stage}.micro_batch: auto (or a larger --gpu); {choice.note}"
    return JobCost(
        f"train-{stage}/{dataset}", gpus, total.total, kind, util, gpu_h, wall, mem, host,
        lim.runtime_h, lim.mem_gib, attempts, verdict, advice,
    )  # fmt: skip


def sample_jobs(p: Params, dataset: str, size: int, gpu: GPU) -> JobCost:
    s = p.sample
    highres = size == p.preprocess.highres_size
    lim = limits.limit("sample", highres)
    flops, peak = sample_call(p, size, s.batch_size)
    per_volume = flops * (model_calls(p) / s.batch_size)
    shards = max(1, s.shards)
    per_job = per_volume * math.ceil(s.n / shards)
    util = mfu(gpu, "sample")
    kind = peak_kind(_sampling(p))
    gpu_h = seconds(per_job, gpu, kind, util) / 3600
    mem = peak / GIB + CUDA_OVERHEAD_GIB
    host = HOST_BASE_GIB + 3 * s.batch_size * size**3 * 4 / GIB
    verdict, attempts = _verdict(gpu, mem, host, gpu_h, lim)
    advice = ""
    if attempts > 1:
        need = math.ceil(shards * gpu_h / (lim.runtime_h - LIMIT_MARGIN_H))
        advice = f"sample.shards: {need} makes each shard one job of the {lim.runtime_h:g} h limit"
    name = f"sample/{dataset}/{size}" + (f" (each of {shards} shards)" if shards > 1 else "")
    return JobCost(
        name, 1, per_job.total, kind, util, gpu_h, gpu_h, mem, host, lim.runtime_h, lim.mem_gib,
        attempts, verdict, advice,
    )  # fmt: skip


def evaluate_job(p: Params, dataset: str, size: int, gpu: GPU) -> JobCost:
    from prdit.evaluate.ms_ssim import pair_flops

    highres = size == p.preprocess.highres_size
    lim = limits.limit("evaluate", highres)
    n_gen = p.evaluate.num_samples or p.sample.n
    n_real = protocol.PAPER_REAL_N if protocol.is_paper(p) else n_gen  # assumed: as many real as generated
    pairs = n_gen * (n_gen - 1) // 2 if protocol.is_paper(p) else p.evaluate.ms_ssim_pairs
    pairs += p.evaluate.ms_ssim_pairs  # the real-vs-real floor
    from prdit.evaluate.features import BATCH

    per_volume, extractor_peak = extractor_cost(size, BATCH)
    features = per_volume * (n_gen + n_real)
    per_pair = Flops(pair_flops(size), 0)
    total = features + per_pair * pairs
    util = mfu(gpu, "evaluate")
    # MS-SSIM is memory-bound: a pair takes its filtering's time or its maps' traffic, whichever is longer
    pair_s = max(seconds(per_pair, gpu, "tf32", util), pair_bytes(size) / (gpu.bandwidth_tbs * 1e12 * util))
    gpu_h = (seconds(features, gpu, "tf32", util) + pairs * pair_s) / 3600
    vol = size**3 * 4 / GIB
    # the extractor's batch; the MS-SSIM chunks take half of what is free and the volumes stay on the
    # host unless a quarter of the GPU stays free (prdit.evaluate.volumes.VolumeBank): they adapt
    mem = CUDA_OVERHEAD_GIB + extractor_peak / GIB
    host = HOST_BASE_GIB + n_gen * vol  # the generated volumes, read once and held
    verdict, attempts = _verdict(gpu, mem, host, gpu_h, lim)
    return JobCost(
        f"evaluate/{dataset}/{size}", 1, total.total, "tf32", util, gpu_h, gpu_h, mem, host,
        lim.runtime_h, lim.mem_gib, attempts, verdict,
    )  # fmt: skip


def plan(p: Params, gpu: GPU) -> list[JobCost]:
    """Every GPU job of the DAG these parameters define, in DAG order."""
    jobs: list[JobCost] = []
    for dataset in p.datasets:
        stages = ["local", "global"] + (["highres"] if p.preprocess.highres_size else [])
        jobs += [train_job(p, dataset, st, gpu) for st in stages]
        jobs += [sample_jobs(p, dataset, size, gpu) for size in p.sizes()]
        jobs += [evaluate_job(p, dataset, size, gpu) for size in p.sizes()]
    return jobs
