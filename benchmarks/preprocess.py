"""Preprocessing benchmark: one realistic chest CT series -> 256^3 and 128^3, ours vs scipy.ndimage.zoom.

Input: 512 x 512 x 300 int16 HU, 0.7 mm in-plane, 1.25 mm slices (synthetic anatomy from the phantom).
- ours:   prdit.data.preprocess.cubes_default (ROI crop, per-axis anti-alias Gaussian, one linear
          SimpleITK resample onto 256^3 at 1 mm; 128^3 by 2x average pooling), SimpleITK on N threads.
- scipy:  the naive way: scipy.ndimage.zoom(order=3) of the full volume to 1 mm, centre crop/pad to
          256^3, window and scale; 128^3 by 2x average pooling.
- case:   the whole per-case stage work (read the interim NIfTI, ours, write NIfTI + .npy at both sizes).
Each method runs in a fresh process so its peak resident memory (VmHWM) is that method's own.

    python benchmarks/preprocess.py [--threads 2] [--repeat 3] [--skip-baseline] [--json out.json]
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

import numpy as np

SHAPE = (300, 512, 512)  # z, y, x
SPACING = (0.7, 0.7, 1.25)  # x, y, z mm
WINDOW = (-1000.0, 1000.0)
FOV = 256.0
SIZES = [256, 128]


def make_input(path: Path) -> None:
    """Synthetic chest anatomy at half resolution, upsampled 2x with noise: realistic values and edges."""
    from scipy import ndimage

    from prdit.data.phantom import Grid, chest_anatomy

    rng = np.random.default_rng(0)
    half = chest_anatomy(rng, Grid(256, 256, 150, 2 * SPACING[0], 2 * SPACING[2]))
    vol = ndimage.zoom(half, 2, order=1)
    vol += rng.normal(0, 15, vol.shape).astype(np.float32)
    np.save(path, np.clip(np.rint(vol), -1024, 3071).astype(np.int16))


def load_image(path: Path):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.load(path))
    image.SetSpacing(SPACING)
    return image


def run_ours(path: Path, threads: int) -> dict[int, np.ndarray]:
    import SimpleITK as sitk

    from prdit.data.preprocess import cubes_default

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    image = load_image(path)
    start = time.perf_counter()
    cubes = cubes_default(image, SIZES, FOV, WINDOW)
    return {s: c for s, (c, _) in cubes.items()}, time.perf_counter() - start


def run_scipy(path: Path, threads: int) -> dict[int, np.ndarray]:
    from scipy import ndimage

    from prdit.data.paper_recipe import avg_pool2, centre_crop
    from prdit.hu import to_unit

    vol = np.load(path)
    start = time.perf_counter()
    zoom = (SPACING[2] / 1.0, SPACING[1] / 1.0, SPACING[0] / 1.0)
    iso = ndimage.zoom(vol.astype(np.float32), zoom, order=3, mode="nearest")
    cube = to_unit(np.clip(centre_crop(iso, 256), *WINDOW), WINDOW)  # the benchmark volume covers 256 mm
    return {256: cube, 128: avg_pool2(cube)}, time.perf_counter() - start


def run_case(path: Path, threads: int):
    """The stage's per-case work, I/O included (interim NIfTI prepared outside the timing)."""
    import SimpleITK as sitk

    from prdit.data.preprocess import PreprocessJob, preprocess_case

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    nii = path.with_suffix(".nii.gz")
    with tempfile.TemporaryDirectory(dir=path.parent) as out:
        start = time.perf_counter()
        preprocess_case(
            PreprocessJob("bench", "bench", str(nii), out, SIZES, "default", "dicom", FOV, WINDOW)
        )
        return {}, time.perf_counter() - start


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM; unlike ru_maxrss it is not inherited across fork+exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(method: str, path: Path, threads: int, repeat: int) -> None:
    fn = {"ours": run_ours, "scipy": run_scipy, "case": run_case}[method]
    times = []
    for _ in range(repeat):
        cubes, seconds = fn(path, threads)
        times.append(seconds)
    if cubes:
        np.save(path.parent / f"{method}-256.npy", cubes[256])
    peak_mb = peak_rss_mb()
    print(json.dumps({"method": method, "seconds": times, "peak_rss_mb": round(peak_mb, 1)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--child", nargs=2, metavar=("METHOD", "INPUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child[0], Path(args.child[1]), args.threads, args.repeat)

    with tempfile.TemporaryDirectory(prefix="prdit-bench-") as tmp:
        src = Path(tmp) / "input.npy"
        make_input(src)
        import SimpleITK as sitk

        sitk.WriteImage(load_image(src), str(src.with_suffix(".nii.gz")), True)
        results = {}
        methods = ["ours", "case"] + ([] if args.skip_baseline else ["scipy"])
        for method in methods:
            repeat = 1 if method == "scipy" else args.repeat
            cmd = [
                sys.executable,
                __file__,
                "--child",
                method,
                str(src),
                "--threads",
                str(args.threads),
                "--repeat",
                str(repeat),
            ]
            env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
            results[method] = json.loads(out.strip().splitlines()[-1])
            r = results[method]
            print(
                f"{method:6s} best {min(r['seconds']):7.2f} s  (runs {', '.join(f'{s:.2f}' for s in r['seconds'])})"
                f"  peak RSS {r['peak_rss_mb']:.0f} MB",
                flush=True,
            )
        if "scipy" in results:
            ours, naive = np.load(Path(tmp) / "ours-256.npy"), np.load(Path(tmp) / "scipy-256.npy")
            speedup = min(results["scipy"]["seconds"]) / min(results["ours"]["seconds"])
            diff = np.abs(ours - naive)
            results["speedup"] = round(speedup, 1)
            results["mean_abs_diff_hu"] = round(float(diff.mean()) * 1000, 2)
            print(
                f"speed-up ours vs scipy zoom(order=3): {speedup:.1f}x; mean |difference| "
                f"{results['mean_abs_diff_hu']:.1f} HU"
            )
    results.update(
        input_shape_zyx=SHAPE,
        spacing_xyz=SPACING,
        sizes=SIZES,
        threads=args.threads,
        cpu_count=os.cpu_count(),
        load_average=os.getloadavg(),
    )
    print(
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other work on the machine slows both)"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
