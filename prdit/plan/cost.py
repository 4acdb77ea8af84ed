"""The cost of each GPU job of the DAG from the real models on fake tensors, against its rule's limits.

Time = FLOPs / (peak of the precision the job computes in x MFU). What each job computes in is
prdit.precision's: training bf16 autocast (protocol project) or TF32 (paper, the reference's "high");
sampling as training under project, strict fp32 under paper; attention at the bf16 peak (its kernels run
in bf16 under both protocols); evaluation TF32 (cuDNN's default), MS-SSIM at its memory traffic over the
GPU's bandwidth when that takes longer. MFU is ASSUMED_MFU unless a calibration file measured on the GPU
exists (CALIBRATION, written by benchmarks/gpu_check.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from prdit import paths, topology
from prdit.config import Params
from prdit.plan import limits
from prdit.plan.gpus import CUDA_OVERHEAD_GIB, GPU, MEM_FRACTION
from prdit.plan.measure import Flops
from prdit.plan.steps import (  # noqa: F401  (also what benchmarks/gpu_check.py and the tests measure)
    extractor_cost,
    micro_batch,
    model_calls,
    pair_bytes,
    peak_kind,
    sample_call,
    sample_model,
    sampling_precision,
    stage_model,
    train_step_bytes,
    train_step_flops,
    training_precision,
)
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
    """The stage's training processes: resources.train.<stage>.gpu, the job's GPUs over all its nodes."""
    return int(p.resources.get("train", {}).get(stage, {}).get("gpu", 1))


def train_job(p: Params, dataset: str, stage: str, gpu: GPU) -> JobCost:
    cfg = p.train.stage(stage)
    gpus = _train_resources(p, stage)
    highres = stage == "highres"
    lim = limits.limit("train", highres)
    choice = micro_batch(p, stage, gpus, budget_gib=gpu.mem_gib)
    per_sample = train_step_flops(p, stage)
    total = per_sample * (cfg.steps * cfg.batch_size)
    util = mfu(gpu, "train")
    kind = peak_kind(training_precision(p))
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
    kind = peak_kind(sampling_precision(p))
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
    n_real = p.conventions.real_set_n or n_gen  # else assumed: as many real as generated
    pairs = n_gen * (n_gen - 1) // 2 if p.conventions.all_generated_pairs else p.evaluate.ms_ssim_pairs
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


def _named(job: JobCost, name: str | None) -> JobCost:
    """`job` of experiment or baseline `name`: its job name as the DAG's paths spell it (<ds>/<name>/<size>)."""
    if name is None:
        return job
    kind, dataset, rest = job.job.split("/", 2)
    return dataclasses.replace(job, job=f"{kind}/{dataset}/{name}/{rest}")


def plan(p: Params, gpu: GPU) -> list[JobCost]:
    """Every GPU job of the DAG these parameters define, in DAG order: a model shared by experiments
    (Params.model_key) is one training job, named after its folder; samples and evaluations per experiment,
    then one evaluation per baseline."""
    jobs: list[JobCost] = []
    views = [p.view(name) for name in p.experiments()] or [p]
    for dataset in p.datasets:
        trained: set[tuple[str, str | None]] = set()
        for view in views:
            for stage in topology.present(p.preprocess.highres_size):
                key = view.model_key(stage)
                if (stage, key) not in trained:
                    trained.add((stage, key))
                    job = train_job(view, dataset, stage, gpu)  # named after its model folder
                    jobs.append(
                        dataclasses.replace(job, job=f"train-{paths.model_name(stage, key)}/{dataset}")
                    )
        for view in views:
            jobs += [_named(sample_jobs(view, dataset, size, gpu), view.exp_name) for size in p.sizes()]
            jobs += [_named(evaluate_job(view, dataset, size, gpu), view.exp_name) for size in p.sizes()]
        jobs += [
            _named(evaluate_job(p, dataset, b.size, gpu), name)
            for name, b in p.baselines.items()
            if b.dataset == dataset
        ]
    return jobs
