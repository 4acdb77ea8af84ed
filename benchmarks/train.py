"""Training-engine benchmark: step time, data wait and throughput of every stage on a params file.

Builds a synthetic float16 training cache at the params' sizes in a temporary project folder (or uses
`--project` with real preprocessed data), then trains the stage chain local -> global -> highres with
the real engine (`fit`: VolumeDataset loader, AdamW, EMA, clipping, the IaN loss) for `--steps` steps
each. Reports medians over the steps after `--warmup` (and the fastest step, robust to other load on a
shared machine): step time, the part of it spent waiting for data, volumes/s and peak memory.
Checkpoints, validation and previews are off (they are not per step).

    python benchmarks/train.py [--params params.yaml] [--steps 20] [--warmup 3] [--workers N]
                               [--stages local global highres] [--batch B] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prdit import paths, topology  # noqa: E402
from prdit.config import load  # noqa: E402
from prdit.stages import _models  # noqa: E402
from prdit.stages.train import job_from_params  # noqa: E402
from prdit.train import distributed  # noqa: E402
from prdit.train.engine import fit  # noqa: E402

DS = "bench"


class Recorder:
    """Tracking stand-in that keeps the per-step metrics fit() logs."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if "perf/step_time_s" in metrics:
            self.rows.append(metrics)

    def __getattr__(self, name: str):
        return lambda *a, **k: None


def make_cache(root: Path, sizes: list[int], n: int = 16) -> None:
    """n smooth random volumes per size (the cache format VolumeDataset reads) and a split."""
    rng = np.random.default_rng(0)
    cases = [f"c{i:03d}" for i in range(n)]
    for size in sizes:
        folder = root / paths.processed(DS, size)
        folder.mkdir(parents=True, exist_ok=True)
        for c in cases:
            np.save(folder / f"{c}.npy", rng.uniform(-1, 1, (size,) * 3).astype(np.float16))
    splits = root / paths.splits(DS)
    splits.mkdir(parents=True, exist_ok=True)
    (splits / "train.txt").write_text("\n".join(cases) + "\n")
    (splits / "val.txt").write_text("")


def bench_stage(p, stage: str, args: argparse.Namespace, env: distributed.DistEnv) -> dict[str, float]:
    torch.manual_seed(0)
    sm = _models.build(p, DS, stage)
    job = job_from_params(p, DS, stage, sm.parents)
    steps = args.warmup + args.steps
    job = job.with_settings(
        steps=steps,
        checkpoint_every=10**9,
        val_every=10**9,
        log_every=1,
        preview_n=0,
        batch_size=args.batch or job.train.batch_size,
        num_workers=job.common.num_workers if args.workers is None else args.workers,
    )
    rec = Recorder()
    start = time.perf_counter()
    fit(job, sm, _models.volume_dataset(DS, sm.input_size, "train"), None, env=env, run=rec)
    wall = time.perf_counter() - start
    rows = rec.rows[args.warmup :]
    step = statistics.median(r["perf/step_time_s"] for r in rows)
    fastest = min(r["perf/step_time_s"] for r in rows)  # robust to other load on a shared machine
    wait = statistics.median(r["perf/data_wait_s"] for r in rows)
    return {
        "stage": stage,
        "model": p.train.stage(stage).model,
        "size": sm.input_size,
        "batch": job.train.batch_size,
        "workers": job.common.num_workers,
        "device": str(env.device),
        "trained_params_M": sum(q.numel() for n, q in sm.model.named_parameters() if n in set(sm.trained))
        / 1e6,
        "step_time_s": step,
        "min_step_time_s": fastest,
        "data_wait_s": wait,
        "data_wait_pct": 100 * wait / step,
        "volumes_per_s": job.train.batch_size / step,
        "peak_memory_gb": rows[-1]["perf/peak_memory_gb"],
        "wall_s": wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument(
        "--project", type=Path, default=None, help="use this project's data/ (dataset name 'bench')"
    )
    ap.add_argument("--stages", nargs="+", default=list(topology.STAGES))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--workers", type=int, default=None, help="loader workers (default: params)")
    ap.add_argument("--batch", type=int, default=None, help="global batch (default: params)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    p = load(args.params.resolve())
    json_out = args.json.resolve() if args.json else None
    os.environ.setdefault("PRDIT_TRACKING", "off")
    workdir = args.project or Path(tempfile.mkdtemp(prefix="prdit-bench-train-"))
    if args.project is None:
        make_cache(workdir, p.sizes())
    cwd = Path.cwd()
    os.chdir(workdir)
    try:
        results = run_all(p, args)
    finally:
        os.chdir(cwd)
        if args.project is None:
            shutil.rmtree(workdir, ignore_errors=True)
    if json_out:
        json_out.write_text(json.dumps(results, indent=2) + "\n")


def run_all(p, args: argparse.Namespace) -> list[dict[str, float]]:
    env = distributed.setup()
    results = []
    print(
        f"{'stage':8} {'model':16} {'size':>4} {'batch':>5} {'step s':>8} {'min s':>8} {'wait s':>8} {'wait %':>6} "
        f"{'vol/s':>7} {'peak GB':>7}  ({env.device}, torch threads {torch.get_num_threads()})"
    )
    for stage in args.stages:
        r = bench_stage(p, stage, args, env)
        results.append(r)
        print(
            f"{r['stage']:8} {r['model']:16} {r['size']:>4} {r['batch']:>5} {r['step_time_s']:8.4f} "
            f"{r['min_step_time_s']:8.4f} "
            f"{r['data_wait_s']:8.4f} {r['data_wait_pct']:6.1f} {r['volumes_per_s']:7.2f} {r['peak_memory_gb']:7.2f}",
            flush=True,
        )
    return results


if __name__ == "__main__":
    main()
