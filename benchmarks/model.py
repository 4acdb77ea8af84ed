"""Speed and memory of the PRDiT networks and samplers (fp32 CPU; bf16 + MFU when a GPU is present).

    python benchmarks/model.py                      # B/12/4 and B/12/0 at 128^3: s/train step, s/forward, peak RSS
    python benchmarks/model.py --reference          # same, plus the reference implementation ($PRDIT_REFERENCE)
    python benchmarks/model.py --sampling-memory    # peak memory of 50 vs 1000 sampler steps
    python benchmarks/model.py --highres-memory     # 256^3 branch step: analytic estimate + CPU calibration

Every measurement runs in a fresh subprocess so peak RSS (ru_maxrss) belongs to it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import reference  # noqa: E402

STUB = ROOT / "tests" / "reference_stub"
TARGET = {"PRDiT-B/12/4": (7.2 * 0.7, 2.0 * 0.7)}  # the 0.7 x (7.2 s/step, 2.0 s/forward)


def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_mib() -> float:
    """Peak RSS since the last `reset_peak()` (VmHWM), else since the start."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> None:
    """Start peak-RSS accounting afresh (Linux >= 4.0), so building the model does not count."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


# ------------------------------------------------------------------------------------ workers
def _build(impl: str, name: str, size: int, ref_dir: str | None):
    import torch

    torch.manual_seed(0)
    if impl == "ours":
        from prdit.model import create

        return create(name, size)
    sys.path[:0] = [ref_dir, str(STUB)]
    import types

    util = types.ModuleType("util")
    util.requires_grad = lambda m, flag=True: [p.requires_grad_(flag) for p in m.parameters()]
    sys.modules["util"] = util
    from models import PRDiT_models

    return PRDiT_models[name](
        input_size=size, in_channels=1, num_classes=1, learn_sigma=True, flash_attn=False
    )


def worker_speed(impl: str, name: str, size: int, reps: int, ref_dir: str | None) -> dict:
    import torch

    import prdit.diffusion as D

    model = _build(impl, name, size, ref_dir)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)
    x0 = torch.rand(1, 1, size, size, size) * 2 - 1
    gen = torch.Generator().manual_seed(0)
    base = rss_mib()
    reset_peak()

    def step():
        loss, _ = D.loss(model, x0, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up (allocations, optimizer state)
    train = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        train.append(time.perf_counter() - t0)
    peak_train = peak_mib()
    model.eval()
    fwd = []
    t = torch.tensor([500])
    with torch.no_grad():
        model(x0, t)
        for _ in range(reps):
            t0 = time.perf_counter()
            model(x0, t)
            fwd.append(time.perf_counter() - t0)
    return {"train_s": train, "forward_s": fwd, "rss_after_build_mib": base, "peak_mib": peak_train}


def worker_race(name: str, size: int, reps: int, ref_dir: str) -> dict:
    """Ours and the reference in one process, alternating every repetition (fair under a changing load)."""
    import torch

    import prdit.diffusion as D

    x0 = torch.rand(1, 1, size, size, size) * 2 - 1
    runs = {}
    for impl in ("ours", "reference"):
        model = _build(impl, name, size, ref_dir)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)
        runs[impl] = (model, opt, torch.Generator().manual_seed(0))
    times: dict = {impl: {"train_s": [], "forward_s": []} for impl in runs}

    def train(impl):
        model, opt, gen = runs[impl]
        model.train()
        loss, _ = D.loss(model, x0, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def forward(impl):
        model = runs[impl][0].eval()
        with torch.no_grad():
            model(x0, torch.tensor([500]))

    for impl in runs:  # warm-up
        train(impl)
        forward(impl)
    for _ in range(reps):
        for impl in runs:
            for kind, fn in (("train_s", train), ("forward_s", forward)):
                t0 = time.perf_counter()
                fn(impl)
                times[impl][kind].append(time.perf_counter() - t0)
    return times


def worker_gpu(name: str, size: int, batch: int, reps: int) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import prdit.diffusion as D
    from prdit.model import create

    dev = torch.device("cuda")
    model = create(name, size).to(dev)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    x0 = torch.rand(batch, 1, size, size, size, device=dev) * 2 - 1

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, _ = D.loss(model, x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    flops = counter.get_total_flops()
    for _ in range(2):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(reps):
        step()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / reps
    from prdit.plan.gpus import GPUS, key_of

    gpu = torch.cuda.get_device_name()
    key = key_of(gpu)  # prdit.plan.gpus: the one table of peaks
    peak = GPUS[key].bf16_tflops if key else float("nan")
    return {
        "gpu": gpu,
        "batch": batch,
        "train_s": dt,
        "samples_per_s": batch / dt,
        "tflops": flops / dt / 1e12,
        "mfu": flops / dt / 1e12 / peak,  # against the bf16 peak; FLOPs as FlopCounterMode counts them
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
    }


def worker_sampling(name: str, size: int, steps: int) -> dict:
    import torch

    import prdit.diffusion as D
    from prdit.model import create

    model = create(name, size).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    base = rss_mib()
    reset_peak()
    t0 = time.perf_counter()
    D.sample(model, (2, 1, size, size, size), D.SamplerOptions(steps=steps, k=2), seeds=[0, 1])
    return {
        "steps": steps,
        "seconds": time.perf_counter() - t0,
        "rss_after_build_mib": base,
        "peak_mib": peak_mib(),
    }


def worker_highres(size: int, checkpointing: bool, name: str) -> dict:
    import torch

    import prdit.diffusion as D
    from prdit.model import create

    backbone_name = name.replace("HR-", "").rsplit("/", 1)[0] + "/4"
    backbone = create(backbone_name, size // 2)
    model = create(name, size, backbone=backbone, checkpointing=checkpointing)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    x0 = torch.rand(1, 1, size, size, size) * 2 - 1

    def step():
        loss, _ = D.loss(model, x0, t=torch.tensor([500]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # allocates the Adam moments: the measured step is a steady-state one
    base = rss_mib()
    reset_peak()
    t0 = time.perf_counter()
    step()
    return {
        "size": size,
        "seconds": time.perf_counter() - t0,
        "rss_before_step_mib": base,
        "peak_mib": peak_mib(),
        "ckpt": checkpointing,
    }


# ------------------------------------------------------------------------------------ analytic memory
def highres_step_bytes(
    size: int,
    hidden: int = 768,
    depth: int = 4,
    patch: int = 12,
    stride: int = 8,
    act_bytes: int = 4,
    checkpointing: bool = False,
    local_ratio: float = 1.0,
    backbone_params: int = 93_228_992,
) -> dict:
    """Peak bytes of one training step (batch 1) of the highres branch with AdamW + an EMA copy.

    Counts what autograd keeps for backward per token (widths below), plus parameters, gradients,
    the two Adam moments and the EMA of the branch, the frozen fp32 backbone and the volumes.
    Attention goes through SDPA's flash / memory-efficient kernels: O(tokens), not O(tokens^2).
    """
    n = (size // stride) ** 3
    w = 2 * patch**3  # token width: noisy volume + prior
    wl = int(w * local_ratio)
    h = hidden
    out = 2 * stride**3
    import torch

    from prdit.model import create

    size_key = {96: "T", 192: "XS", 384: "S", 768: "B", 1024: "L", 1152: "XL"}[hidden]
    with torch.device("meta"):  # exact parameter count, no memory
        backbone = create(f"PRDiT-{size_key}/{patch}/1", size // 2)
        branch = create(
            f"PRDiT-HR-{size_key}/{patch}/{depth}", size, backbone=backbone, local_mlp_ratio=local_ratio
        ).branch
    branch_params = sum(p.numel() for p in branch.parameters())
    per_token = {
        "tokens": w,
        "local": (w if checkpointing else 6 * w + 8 * wl),
        "patch_embed": 10 * h,
        "dit_blocks": depth * (h if checkpointing else 19 * h),
        "final": 2 * h + out,
    }
    recompute = (19 * h if checkpointing else 0) + 2 * max(w, 4 * h)  # one block re-run + gradient buffers
    act = act_bytes * n * (sum(per_token.values()) + recompute)
    volumes = 4 * 14 * size**3  # x0, noise, x_t, prior, [x_t, prior], outputs, loss temporaries
    states = 4 * branch_params * 5  # weights, grads, Adam m and v, EMA
    total = act + volumes + states + 4 * backbone_params
    math_attention = 4 * depth * (hidden // 64) * n * n  # what explicit softmax(QK^T) would keep
    return {
        "tokens": n,
        "branch_params": branch_params,
        "activations_gib": act / 2**30,
        "volumes_gib": volumes / 2**30,
        "param_states_gib": states / 2**30,
        "total_gib": total / 2**30,
        "without_ema_gib": (total - 4 * branch_params) / 2**30,
        "math_attention_would_add_gib": math_attention / 2**30,
    }


# ------------------------------------------------------------------------------------ driver
def run_worker(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", *args],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=["PRDiT-B/12/4", "PRDiT-B/12/0"])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument(
        "--reference", action="store_true", help="also time the reference implementation (naive attention)"
    )
    ap.add_argument("--sampling-memory", action="store_true")
    ap.add_argument("--highres-memory", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--out", type=Path, help="also write all results as JSON here")
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.worker:
        kind, *rest = a.worker
        if kind == "race":
            res = worker_race(rest[0], int(rest[1]), int(rest[2]), rest[3])
        elif kind == "speed":
            res = worker_speed(
                rest[0], rest[1], int(rest[2]), int(rest[3]), rest[4] if len(rest) > 4 else None
            )
        elif kind == "gpu":
            res = worker_gpu(rest[0], int(rest[1]), int(rest[2]), int(rest[3]))
        elif kind == "sampling":
            res = worker_sampling(rest[0], int(rest[1]), int(rest[2]))
        else:
            res = worker_highres(int(rest[0]), rest[1] == "1", rest[2])
        print(json.dumps(res))
        return

    import torch

    results: dict = {"cpu_threads": torch.get_num_threads(), "load_avg_at_start": os.getloadavg()}
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}"
    )
    if a.reference and (why := reference.unavailable()):
        sys.exit(f"--reference: {why}")
    if not a.skip_speed:
        with tempfile.TemporaryDirectory() as tmp:
            ref_dir = str(reference.extract_models(Path(tmp))) if a.reference else None
            for name in a.variants:
                impls = ["ours"] + (["reference"] if a.reference else [])
                for impl in impls:  # alone in a process: peak memory, and times when there is no reference
                    r = run_worker(
                        "speed", impl, name, str(a.size), str(a.reps), *([ref_dir] if ref_dir else [])
                    )
                    results[f"{impl} {name}"] = r
                    tr, fw = min(r["train_s"]), min(r["forward_s"])
                    print(
                        f"{impl:9s} {name:13s} {a.size}^3 b1 fp32 CPU: {tr:7.2f} s/train step  {fw:6.2f} s/forward  "
                        f"peak RSS {r['peak_mib']:7.0f} MiB (after build {r['rss_after_build_mib']:.0f})  [alone, best of {a.reps}]"
                    )
                if a.reference:  # the fair comparison: both in one process, alternating
                    r = run_worker("race", name, str(a.size), str(a.reps), ref_dir)
                    results[f"race {name}"] = r
                    o, rf = r["ours"], r["reference"]
                    rt, rfw = (
                        min(o["train_s"]) / min(rf["train_s"]),
                        min(o["forward_s"]) / min(rf["forward_s"]),
                    )
                    results[f"ratio {name}"] = {"train": rt, "forward": rfw}
                    print(
                        f"  alternating, best of {a.reps}: ours {min(o['train_s']):.2f} / {min(o['forward_s']):.2f} s, "
                        f"reference {min(rf['train_s']):.2f} / {min(rf['forward_s']):.2f} s (train step / forward) "
                        f"-> ours/reference: train {rt:.2f}x, forward {rfw:.2f}x"
                    )
        if torch.cuda.is_available():
            for name in a.variants:
                r = run_worker("gpu", name, str(a.size), "8", "10")
                results[f"gpu {name}"] = r
                print(
                    f"GPU {r['gpu']} {name} bf16 b8: {r['samples_per_s']:.2f} samples/s, {r['tflops']:.0f} TFLOP/s, "
                    f"MFU {100 * r['mfu']:.1f}%, peak {r['peak_gib']:.1f} GiB"
                )
    if a.sampling_memory:
        for steps in (50, 1000):
            r = run_worker("sampling", "PRDiT-T/8/1", "32", str(steps))
            results[f"sampling {steps}"] = r
            print(
                f"sampling PRDiT-T/8/1 32^3 b2, {steps:4d} steps: peak RSS {r['peak_mib']:.0f} MiB "
                f"(after build {r['rss_after_build_mib']:.0f}), {r['seconds']:.1f} s"
            )
    if a.highres_memory:
        for size, ckpt in ((64, False), (128, False), (128, True)):
            r = run_worker("highres", str(size), str(int(ckpt)), "PRDiT-HR-B/12/4")
            est = highres_step_bytes(size, checkpointing=ckpt)
            r["analytic_without_ema_gib"] = est["without_ema_gib"]
            results[f"highres {size} ckpt={ckpt}"] = r
            print(
                f"highres B/12/4 branch {size}^3 fp32 CPU step, checkpointing={ckpt!s:5s}: peak RSS "
                f"{r['peak_mib'] / 1024:.2f} GiB measured ({r['rss_before_step_mib'] / 1024:.2f} before the step), "
                f"{est['without_ema_gib']:.2f} GiB analytic (no EMA in this probe), {r['seconds']:.0f} s"
            )
        for ckpt in (False, True):
            for ab, label in ((4, "fp32"), (2, "bf16 autocast")):
                est = highres_step_bytes(256, act_bytes=ab, checkpointing=ckpt)
                results[f"highres 256 {label} ckpt={ckpt}"] = est
                print(
                    f"highres B/12/4 branch 256^3 {label:13s} checkpointing={ckpt!s:5s}: {est['total_gib']:5.1f} GiB "
                    f"(activations {est['activations_gib']:.1f}, params/grads/Adam/EMA {est['param_states_gib']:.1f}); "
                    f"explicit attention would add {est['math_attention_would_add_gib']:.0f} GiB"
                )
    if a.out:
        a.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
