"""MS-SSIM throughput of the evaluation: the old per-pair path against the batched one, per volume size.

Synthetic generated volumes (HU, smooth noise) are written as .nii.gz into a temporary folder, then for
each size:
- per pair: what `evaluate` did before: every pair re-reads and gunzips both files, then `ms_ssim`;
- batched:  every volume read once into a VolumeBank, then `pairwise_values` (ms_ssim_batch in chunks,
            on CUDA when available);
both over the same pairs, whose values must agree (the test suite holds the tolerance; here the largest
difference is printed). Each row gives seconds per read, pairs/s and the estimated hours for the paper
protocol's 499,500 pairs (all pairs of 1,000 volumes) on this machine, plus FLOPs per pair
(`pair_flops`, FlopCounterMode: the Gaussian filtering; the element-wise rest is memory-bound) and, with
--peak-tflops, the time those FLOPs take at that peak (a lower bound for a GPU).

    python benchmarks/evaluate.py [--sizes 32 128] [--pairs 100 20] [--threads 2] [--peak-tflops 60] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from prdit.evaluate.ms_ssim import ms_ssim, pair_flops, pair_indices, pairwise_values  # noqa: E402
from prdit.evaluate.volumes import VolumeBank, read_volume  # noqa: E402
from prdit.hu import to_hu as unit_to_hu  # noqa: E402
from prdit.io import write_nifti  # noqa: E402

PAPER_VOLUMES = 1000
PAPER_PAIRS = PAPER_VOLUMES * (PAPER_VOLUMES - 1) // 2  # 499,500
WINDOW = (-1000.0, 1000.0)


def volumes_for(n_pairs: int) -> int:
    """The fewest volumes with at least `n_pairs` distinct pairs."""
    return math.ceil((1 + math.sqrt(1 + 8 * n_pairs)) / 2)


def write_volumes(folder: Path, n: int, size: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        noise = torch.from_numpy(rng.normal(size=(1, size + 3, size + 3, size + 3)).astype(np.float32))
        x = np.clip(torch.nn.functional.avg_pool3d(noise, 4, stride=1)[0].numpy() * 2, -1, 1)
        path = folder / f"{i}.nii.gz"
        write_nifti(path, unit_to_hu(x, WINDOW), (1.0, 1.0, 1.0))
        out.append(path)
    return out


def bench(size: int, n_pairs: int, folder: Path) -> dict:
    paths = write_volumes(folder, volumes_for(n_pairs), size)
    pairs = pair_indices(len(paths), n_pairs, seed=0)
    start = time.perf_counter()
    old = [
        ms_ssim(
            read_volume(paths[i], size, "generated", WINDOW), read_volume(paths[j], size, "generated", WINDOW)
        )
        for i, j in pairs
    ]
    t_old = time.perf_counter() - start
    start = time.perf_counter()
    bank = VolumeBank()
    for p in paths:
        bank.append(read_volume(p, size, "generated", WINDOW))
    t_read = time.perf_counter() - start
    start = time.perf_counter()
    new = pairwise_values(bank, pairs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t_new = time.perf_counter() - start
    per_read = t_read / len(paths)
    per_pair_old, per_pair_new = t_old / len(pairs), t_new / len(pairs)
    flops = pair_flops(size)
    return {
        "size": size,
        "pairs": len(pairs),
        "volumes": len(paths),
        "read_s_per_volume": round(per_read, 4),
        "per_pair": {"pairs_per_s": round(1 / per_pair_old, 3), "s_per_pair": round(per_pair_old, 4)},
        "batched": {"pairs_per_s": round(1 / per_pair_new, 3), "s_per_pair": round(per_pair_new, 4)},
        "max_abs_difference": float(np.abs(np.array(old) - new).max()),
        "flops_per_pair": flops,
        "paper_protocol_hours": {
            "per_pair": round(PAPER_PAIRS * per_pair_old / 3600, 2),
            "batched": round((PAPER_PAIRS * per_pair_new + PAPER_VOLUMES * per_read) / 3600, 2),
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--pairs", type=int, nargs="+", default=[100, 20], help="pairs per size, in order")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--peak-tflops", type=float, default=None, help="a device's peak fp32 TFLOP/s")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if len(args.pairs) != len(args.sizes):
        sys.exit("--pairs needs one count per --sizes entry")
    torch.set_num_threads(args.threads)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({args.threads} threads)"
    results: dict = {"device": device, "cpus": os.cpu_count(), "paper_pairs": PAPER_PAIRS, "sizes": []}
    with tempfile.TemporaryDirectory(prefix="prdit-eval-bench-") as tmp:
        for size, n in zip(args.sizes, args.pairs):
            folder = Path(tmp) / str(size)
            folder.mkdir()
            row = bench(size, n, folder)
            results["sizes"].append(row)
            print(json.dumps(row), flush=True)
    measured = {row["size"]: row for row in results["sizes"]}
    if 128 in measured and 256 not in measured:  # cost is linear in the voxel count: 8x from 128^3
        results["paper_protocol_hours_256_from_128"] = {
            k: round(8 * v, 1) for k, v in measured[128]["paper_protocol_hours"].items()
        }
        print(
            "256^3 (8 x the 128^3 figures), paper protocol hours:",
            results["paper_protocol_hours_256_from_128"],
        )
    for size in (128, 256):
        flops = pair_flops(size)
        line = f"{size}^3: {flops / 1e9:.3f} GFLOP per pair (FlopCounterMode), {flops * PAPER_PAIRS / 1e15:.1f} PFLOP for 499,500 pairs"
        if args.peak_tflops:
            line += f", {flops * PAPER_PAIRS / (args.peak_tflops * 1e12) / 60:.1f} min at {args.peak_tflops} TFLOP/s"
        results.setdefault("flops", {})[size] = flops
        print(line)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
