"""One call on one GPU: the figures `prdit plan` assumes, measured, and the calibration file it reads.

    python benchmarks/gpu_check.py                # on an H100/H200, under 6 minutes: writes benchmarks/gpu_calibration.json
    python benchmarks/gpu_check.py --dry --out /tmp/cal.json   # the same code at tiny sizes on a CPU (a test runs it)

One JSON line per figure on stdout: environment (GPU, capability, torch/CUDA/cuDNN, SDPA backends); which SDPA
kernel runs at head dims 64 and 72 in each precision mode (aten ops seen by a TorchDispatchMode: `_softmax`
means the math fallback); training step time, TFLOP/s, MFU and peak memory of PRDiT-B/12/0, B/12/4 and
XL/12/4 at the micro-batch train.<stage>.micro_batch: auto picks, both protocols (prdit.precision), eager
and compiled; the stage-3 256^3 step; sampler seconds per model call at 128^3 and 256^3 in each protocol's
precision and the hours for 1,000 volumes; the feature extractor's forward. Then the MFU per job kind
(train, sample, evaluate) under the GPU's prdit.plan.gpus key, with the figures it came from.

FLOPs are prdit.plan.cost's (FlopCounterMode's convention: attention backward 2.5x its forward matmuls, as
benchmarks/model.py's flash figure also charges it), so a measured MFU is in the plan's units: "mfu_plan" is
the plan's time at MFU 1 (attention at the bf16 peak, the rest at the peak of the precision the job computes
in) over the measured time, which is what the calibration file stores; "mfu_bf16" / "mfu_tf32" are the
achieved FLOP/s over the bf16 / TF32 peak of that exact GPU. Compiled figures come last and are skipped, with
a line saying so, once --budget-s is spent.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from prdit import precision  # noqa: E402
from prdit.config import Params, deep_merge, load  # noqa: E402
from prdit.diffusion.ian import loss as ian_loss  # noqa: E402
from prdit.plan import cost  # noqa: E402
from prdit.plan.gpus import GPU, GPUS, key_of  # noqa: E402
from prdit.plan.report import CONVENTION  # noqa: E402
from prdit.plan.steps import micro_batch  # noqa: E402

GIB = 2**30
BASE = [ROOT / "params.yaml", ROOT / "configs" / "lidc-256.yaml"]  # the paper-scale jobs the plan is for
# (stage-1 model, stage-2 model, stage timed); the stage-3 model; the two sizes; attention tokens per head
FULL = dict(
    train=[
        ("PRDiT-B/12/0", "PRDiT-B/12/4", "local"),
        ("PRDiT-B/12/0", "PRDiT-B/12/4", "global"),
        ("PRDiT-XL/12/0", "PRDiT-XL/12/4", "global"),
    ],
    highres="PRDiT-HR-B/12/4",
    sizes=(128, 256),
    tokens=16**3,
    reps=3,
)
DRY = dict(
    train=[
        ("PRDiT-T/8/0", "PRDiT-T/8/1", "local"),
        ("PRDiT-T/8/0", "PRDiT-T/8/1", "global"),
        ("PRDiT-T/8/0", "PRDiT-T/8/2", "global"),
    ],
    highres="PRDiT-HR-T/8/1",
    sizes=(16, 32),
    tokens=64,
    reps=1,
)
DRY_BATCHES = {  # small global batches: a CPU step at the paper's 64 would take minutes
    "train": {"local": {"batch_size": 2}, "global": {"batch_size": 2}, "highres": {"batch_size": 1}},
    "sample": {"batch_size": 2},
}
PROTOCOLS = ("paper", "project")
LINES: list[dict] = []


def emit(figure: str, **fields: object) -> dict:
    """Print one figure as a JSON line and keep it for the calibration file."""
    line = {"figure": figure, **fields}
    LINES.append(line)
    print(json.dumps(line), flush=True)
    return line


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, reps: int, warmup: int = 1) -> tuple[float, float]:  # noqa: ANN001
    """(seconds of the first call, median seconds of `reps` calls after `warmup`)."""
    t0 = time.perf_counter()
    fn()
    sync(device)
    first = time.perf_counter() - t0
    for _ in range(warmup - 1):
        fn()
    sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None


def reset(device: torch.device) -> None:
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def rates(flops: cost.Flops, seconds: float, gpu: GPU, kind: str) -> dict[str, float]:
    """TFLOP/s and MFU of `flops` done in `seconds` (see the module docstring for the three MFUs)."""
    achieved = flops.total / seconds
    return {
        "tflops": achieved / 1e12,
        "mfu_bf16": achieved / gpu.peak("bf16"),
        "mfu_tf32": achieved / gpu.peak("tf32"),
        "mfu_plan": cost.seconds(flops, gpu, kind, 1.0) / seconds,
        "peak_kind": kind,
    }


# ------------------------------------------------------------------------------------------ setup
def params(setup: dict, proto: str, local: str, glob: str, dry: bool) -> Params:
    """The paper-scale parameters under `proto` with these stage models (tiny sizes when dry)."""
    models = {"local": local, "global": glob, "highres": setup["highres"]}
    over: dict = {"protocol": proto, "train": {stage: {"model": m} for stage, m in models.items()}}
    if dry:
        sizes = {"preprocess": {"size": setup["sizes"][0], "highres_size": setup["sizes"][1]}}
        over = deep_merge(deep_merge(over, DRY_BATCHES), sizes)
    return load(BASE, overrides=over)


def proto_of(p: Params) -> str:
    return p.protocol


def detect(dry: bool) -> tuple[GPU, str, torch.device]:
    """The prdit.plan.gpus entry of this GPU, the key to write under, the device."""
    if dry or not torch.cuda.is_available():
        if not dry:
            raise SystemExit(
                "gpu_check.py: no CUDA device (use --dry to run the code at tiny sizes on a CPU)"
            )
        emit("gpu", key="cpu", note="dry run on the CPU: rates against the h100's peaks, not a calibration")
        return GPUS["h100"], "cpu", torch.device("cpu")
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    key = key_of(name)
    if key is None:
        emit("gpu", key=name, note=f"{name} is not in prdit.plan.gpus: written under its name, which "
             "prdit plan does not read; MFU against the h100's peaks")  # fmt: skip
        return GPUS["h100"], name, device
    emit("gpu", key=key, name=name)
    return GPUS[key], key, device


def environment(device: torch.device) -> dict:
    sdpa = {
        name: getattr(torch.backends.cuda, f"{name}_sdp_enabled")()
        for name in ("flash", "mem_efficient", "cudnn", "math")
        if hasattr(torch.backends.cuda, f"{name}_sdp_enabled")
    }
    try:
        from torch.nn.attention import SDPBackend

        order = [SDPBackend(int(i)).name for i in torch._C._get_sdp_priority_order()]
    except (AttributeError, ValueError, TypeError):
        order = None
    cuda = device.type == "cuda"
    return emit(
        "environment",
        gpu=torch.cuda.get_device_name(device) if cuda else "cpu",
        capability=list(torch.cuda.get_device_capability(device)) if cuda else None,
        torch=torch.__version__,
        cuda=torch.version.cuda,
        cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        sdpa_enabled=sdpa,
        sdpa_priority=order,
    )


# ------------------------------------------------------------------------------------------ SDPA
class _Ops(TorchDispatchMode):
    """The aten ops that run (below autograd: the kernel SDPA chose, not the composite call)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        self.names.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def kernel_of(names: set[str]) -> str:
    found = sorted(n for n in names if n.startswith("_scaled_dot_product") or n.startswith("_flash"))
    if any("_softmax" in n for n in names) and not found:
        return "math (decomposed: _softmax)"
    return ", ".join(found) or "none seen"


def sdpa_kernels(device: torch.device, tokens: int) -> None:
    """The kernel the model's Attention layer runs at head dims 64 (B) and 72 (XL) in each mode."""
    from prdit.model.layers import Attention

    modes = {
        "train/project": precision.training(False),
        "train/paper": precision.training(True),
        "sample/paper": precision.sampling(True),
    }
    for head_dim, heads in ((64, 12), (72, 16)):
        for mode, prec in modes.items():
            precision.set_backends(prec, device)
            layer = Attention(head_dim * heads, heads).to(device)
            layer.kernel_dtype = prec.attention
            x = torch.randn(
                1, tokens, head_dim * heads, device=device, requires_grad=mode.startswith("train")
            )
            ac = precision.autocast_dtype(prec, device)
            forward, backward = _Ops(), _Ops()
            with forward, torch.autocast(device.type, dtype=ac or torch.bfloat16, enabled=ac is not None):
                y = layer(x)
            if x.requires_grad:
                with backward:
                    y.float().square().mean().backward()
            emit(
                "sdpa",
                head_dim=head_dim,
                mode=mode,
                forward=kernel_of(forward.names),
                backward=kernel_of(backward.names) if x.requires_grad else None,
            )


# ------------------------------------------------------------------------------------------ training
_CHOICES: dict[tuple, object] = {}


def train_step(p: Params, stage: str, gpu: GPU, device: torch.device, compiled: bool, reps: int) -> dict:
    """Step time, rates and peak memory of `stage` at the micro-batch `auto` picks on this GPU."""
    prec = p.conventions.training
    precision.set_backends(prec, device)
    key = (json.dumps(p.raw, sort_keys=True, default=str), stage)
    if key not in _CHOICES:
        _CHOICES[key] = micro_batch(p, stage, 1, budget_gib=gpu.mem_gib)
    choice = _CHOICES[key]
    reset(device)
    torch.manual_seed(0)
    model = cost.stage_model(p, stage).to(device)
    net = torch.compile(model) if compiled else model
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-4, fused=True)
    size, m = model.input_size, choice.micro
    x0 = torch.rand(m, model.in_channels, size, size, size, device=device) * 2 - 1
    t = torch.randint(0, p.diffusion.timesteps, (m,), device=device)
    noise = torch.randn_like(x0) * p.diffusion.noise_std
    ac = precision.autocast_dtype(prec, device)

    def step() -> None:
        with torch.autocast(device.type, dtype=ac or torch.bfloat16, enabled=ac is not None):
            loss, _ = ian_loss(net, x0, t=t, noise=noise)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    first, s = timed(step, device, reps, warmup=2 if compiled else 1)
    flops = cost.train_step_flops(p, stage) * m
    line = emit(
        "train_step",
        model=p.train.stage(stage).model,
        stage=stage,
        size=size,
        protocol=proto_of(p),
        compiled=compiled,
        micro_batch=m,
        step_s=s,
        first_call_s=first,
        **rates(flops, s, gpu, cost.peak_kind(prec)),
        peak_gib=peak_gib(device),
        planned_gib=choice.bytes / GIB,
        flops_convention="FlopCounterMode (prdit.plan.cost.train_step_flops)",
    )
    return line


# ------------------------------------------------------------------------------------------ sampling
def sampler_call(p: Params, size: int, gpu: GPU, device: torch.device, reps: int) -> dict:
    """Seconds per model call of the sampler at `size` in the protocol's sampling precision (one batch)."""
    prec = p.conventions.sampling
    precision.set_backends(prec, device)
    reset(device)
    torch.manual_seed(0)
    model = cost.sample_model(p, size).to(device).eval()
    batch = p.sample.batch_size
    x = torch.randn(batch, model.in_channels, size, size, size, device=device)
    t = torch.full((batch,), p.diffusion.timesteps // 2, device=device)
    ac = precision.autocast_dtype(prec, device)

    def call() -> None:  # as prdit.plan.cost.sample_call counts it: a model call and the update
        with torch.no_grad(), torch.autocast(device.type, dtype=ac or torch.bfloat16, enabled=ac is not None):
            out = model(x, t)
        x.add_(out[:, : model.in_channels].float(), alpha=0.01)

    _, s = timed(call, device, reps)
    flops, planned = cost.sample_call(p, size, batch)
    calls = cost.model_calls(p)
    line = emit(
        "sample_call",
        size=size,
        protocol=proto_of(p),
        batch=batch,
        call_s=s,
        model_calls_per_volume=calls,
        hours_per_1000_volumes=s * calls * math.ceil(1000 / batch) / 3600,
        **rates(flops, s, gpu, cost.peak_kind(prec)),
        peak_gib=peak_gib(device),
        planned_gib=planned / GIB,
        flops_convention="FlopCounterMode (prdit.plan.cost.sample_call)",
    )
    return line


def extractor(size: int, gpu: GPU, device: torch.device, reps: int) -> dict:
    """The evaluation's feature extractor forward (TF32: cuDNN's default) at its batch."""
    from prdit.evaluate.features import BATCH
    from prdit.evaluate.resnet3d import MedicalNetResNet50

    precision.set_backends(precision.training(True), device)  # TF32 convolutions, as evaluation runs
    reset(device)
    model = MedicalNetResNet50().to(device).eval()
    x = torch.randn(BATCH, 1, size, size, size, device=device)

    def forward() -> None:
        with torch.no_grad():
            model(x)

    _, s = timed(forward, device, reps)
    per_volume, planned = cost.extractor_cost(size, BATCH)
    line = emit(
        "extractor",
        size=size,
        batch=BATCH,
        forward_s=s,
        **rates(per_volume * BATCH, s, gpu, "tf32"),
        peak_gib=peak_gib(device),
        planned_gib=planned / GIB,
        flops_convention="FlopCounterMode (prdit.plan.cost.extractor_cost)",
    )
    return line


# ------------------------------------------------------------------------------------------ main
def calibration(gpu_name: str, found: dict[str, list[dict]]) -> dict:
    """MFU per job kind in the plan's units, from the figures of the jobs the paper configs run."""
    mfu, source = {}, {}
    for kind, lines in found.items():
        if lines:
            mfu[kind] = statistics.fmean(line["mfu_plan"] for line in lines)
            source[kind] = [
                {k: line.get(k) for k in ("figure", "model", "size", "protocol", "compiled")}
                for line in lines
            ]
    env = next(line for line in LINES if line["figure"] == "environment")
    return {
        "gpu": gpu_name,
        "date": datetime.datetime.now(datetime.UTC).date().isoformat(),
        "torch": env["torch"],
        "cuda": env["cuda"],
        "cudnn": env["cudnn"],
        "flops_convention": CONVENTION,
        "mfu": mfu,
        "mfu_from": source,
        "figures": LINES,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--dry", action="store_true", help="tiny sizes on the CPU, no compile (the test suite runs it)"
    )
    ap.add_argument("--out", type=Path, default=ROOT / cost.CALIBRATION, help="calibration file to write")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=240.0,
        help="on CUDA, only the calibration's own figures start after this many seconds",
    )
    args = ap.parse_args(argv)
    if args.dry and args.out.resolve() == (ROOT / cost.CALIBRATION).resolve():
        ap.error(f"--dry writes no calibration to {cost.CALIBRATION}: give --out")
    start = time.monotonic()
    setup = DRY if args.dry else FULL
    gpu, key, device = detect(args.dry)
    env = environment(device)
    sdpa_kernels(device, setup["tokens"])
    reps = setup["reps"]
    cuda = device.type == "cuda"
    runs = [
        (params(setup, proto, local, glob, args.dry), stage)
        for proto in PROTOCOLS
        for local, glob, stage in setup["train"]
    ]
    paper = params(setup, "paper", *setup["train"][1][:2], args.dry)
    project = params(setup, "project", *setup["train"][1][:2], args.dry)
    configs = {(paper.train.stage("local").model, "local"), (paper.train.stage("global").model, "global")}

    def feeds(p: Params, stage: str) -> bool:  # a job of the paper configs: what the calibration is from
        return p.protocol == "paper" and (p.train.stage(stage).model, stage) in configs

    def step(p: Params, stage: str, compiled: bool = False) -> tuple[str, Callable[[], dict]]:
        name = f"train_step {p.train.stage(stage).model}" + (" compiled" if compiled else "")
        return name, lambda: train_step(p, stage, gpu, device, compiled, reps)

    def call(p: Params, size: int) -> tuple[str, Callable[[], dict]]:
        return f"sample_call {size}", lambda: sampler_call(p, size, gpu, device, reps)

    # what the calibration needs first; the rest, then the compiled steps, while --budget-s lasts (on CUDA)
    first = [step(p, st) for p, st in runs if feeds(p, st)] + [step(paper, "highres")]
    first += [call(paper, n) for n in setup["sizes"]]
    first.append(("extractor", lambda: extractor(setup["sizes"][0], gpu, device, reps)))
    rest = [step(p, st) for p, st in runs if not feeds(p, st)] + [call(project, n) for n in setup["sizes"]]
    rest += [step(p, st, compiled=True) for p, st in sorted(runs, key=lambda run: not feeds(*run))]
    lines = [figure() for _, figure in first]
    for name, figure in rest:
        if cuda and time.monotonic() - start > args.budget_s:
            emit(name.split()[0], what=name, skipped=f"--budget-s {args.budget_s:g} spent")
        elif not cuda and name.endswith("compiled"):
            emit(name.split()[0], what=name, compiled=True, skipped="no CUDA: no torch.compile here")
        else:
            lines.append(figure())
    train = [line for line in lines if line["figure"] == "train_step"]
    samples = [line for line in lines if line["figure"] == "sample_call"]
    features = [line for line in lines if line["figure"] == "extractor"]
    # the jobs the paper configs run: their models, the paper protocol, compiled where measured (compile: true)
    chosen = [t for t in train if (t["model"], t["stage"]) in configs and t["protocol"] == "paper"]
    compiled = [t for t in chosen if t["compiled"]]
    found = {
        "train": compiled or chosen,
        "sample": [s for s in samples if s["protocol"] == "paper"],
        "evaluate": features,
    }
    entry = calibration(env["gpu"], found)
    emit("calibration", key=key, out=str(args.out), mfu=entry["mfu"], seconds=time.monotonic() - start)
    entry["figures"] = list(LINES)
    table = json.loads(args.out.read_text()) if args.out.is_file() else {}
    table[key] = entry
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(table, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
