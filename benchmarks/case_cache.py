"""Per-case caching of ingest + preprocess: full build, adding one case, and resuming after a kill.

A synthetic dataset of N phantom patients (DICOM, small matrix so it fits anywhere) goes through the
real `prdit ingest` and `prdit preprocess` commands (what DVC runs, and Snakemake's unsharded rules),
with --threads T and tracking off, timing:
- full:    N-1 cases from nothing (what every re-run cost before the per-case cache),
- again:   the same command with nothing changed,
- add one: case N added to the raw folder,
- resume:  a fresh project over all N cases, ingest killed (SIGKILL) once half of them are done,
           then ingest + preprocess run again (and the outputs compared, byte for byte, with the
           full run's cases).
Each row gives the wall time and the cases computed / reused, read from the commands' logs.

    python benchmarks/case_cache.py [--patients 200] [--matrix 64] [--threads 2] [--workdir DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from prdit import paths  # noqa: E402
from prdit.data.cache import CaseCache  # noqa: E402

COUNTS = re.compile(r"(ingest|preprocess) (.+?): (\d+) case\(s\) computed, (\d+) reused from the cache")


def env() -> dict[str, str]:
    e = dict(os.environ, PRDIT_TRACKING="off")
    e["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{e.get('PATH', '')}"
    return e


def prdit(cwd: Path, *args: str) -> tuple[float, str]:
    start = time.perf_counter()
    res = subprocess.run(["prdit", *args], cwd=cwd, capture_output=True, text=True, env=env())
    if res.returncode != 0:
        sys.exit(f"prdit {' '.join(args)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return time.perf_counter() - start, res.stdout + res.stderr


def stages(cwd: Path, params: list[str], threads: int) -> dict:
    out = {}
    for stage in ("ingest", "preprocess"):
        seconds, log = prdit(cwd, stage, *params, "--dataset", "bench", "--threads", str(threads))
        ((_, _, computed, reused),) = COUNTS.findall(log)[-1:]
        out[stage] = {"seconds": round(seconds, 2), "computed": int(computed), "reused": int(reused)}
    out["total_s"] = round(out["ingest"]["seconds"] + out["preprocess"]["seconds"], 2)
    return out


def project(work: Path, raw: Path) -> list[str]:
    work.mkdir(parents=True)
    over = {"sources": {"bench": {"format": "dicom", "path": str(raw), "download": "none"}}}
    (work / "over.yaml").write_text(json.dumps(over))  # JSON is YAML
    (work / "params.yaml").write_text((ROOT / "params.yaml").read_text())  # a project root
    return ["--params", "params.yaml", "--params", "over.yaml"]


def digests(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix in (".gz", ".npy")
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=200)
    ap.add_argument("--matrix", type=int, default=64, help="in-plane pixels of the phantom slices")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--workdir", type=Path, default=None, help="default: a temporary folder, removed afterwards"
    )
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    base = args.workdir or Path(tempfile.mkdtemp(prefix="prdit-cache-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "patients": args.patients,
        "matrix": args.matrix,
        "threads": args.threads,
        "cpus": os.cpu_count(),
    }
    try:
        gen = base / "gen"
        gen.mkdir(exist_ok=True)
        (gen / "o.yaml").write_text(
            json.dumps({"phantom": {"patients": args.patients, "matrix": args.matrix}})
        )
        (gen / "params.yaml").write_text((ROOT / "params.yaml").read_text())  # a project root
        seconds, _ = prdit(gen, "phantom", "--params", "params.yaml", "--params", "o.yaml", "--out", "raw")
        everyone = sorted(p for p in (gen / "raw").iterdir() if p.is_dir())
        results["phantom_s"] = round(seconds, 1)
        print(f"{len(everyone)} phantom patients in {seconds:.1f} s", flush=True)

        # full build of N-1 cases, the same again, then one case added
        raw = base / "raw"
        raw.mkdir()
        for p in everyone[:-1]:
            shutil.copytree(p, raw / p.name)
        params = project(base / "a", raw)
        for name in ("full", "again"):
            results[name] = stages(base / "a", params, args.threads)
            print(name, results[name], flush=True)
        shutil.copytree(everyone[-1], raw / everyone[-1].name)
        results["add_one"] = stages(base / "a", params, args.threads)
        print("add_one", results["add_one"], flush=True)

        # a fresh project over all N cases: ingest killed at half, then resumed
        params = project(base / "b", raw)
        cache = CaseCache("ingest", "bench", base / "b" / ".prdit" / "cache")
        start = time.perf_counter()
        proc = subprocess.Popen(
            ["prdit", "ingest", *params, "--dataset", "bench", "--threads", str(args.threads)],
            cwd=base / "b",
            env=env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        while cache.complete_entries() < args.patients // 2:
            if proc.poll() is not None:
                sys.exit("ingest ended before half of the cases")
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        killed_after = time.perf_counter() - start
        results["resume"] = {
            "killed_after_s": round(killed_after, 2),
            "finished_before_kill": cache.complete_entries(),
            **stages(base / "b", params, args.threads),
        }
        same = all(
            digests(base / "a" / where) == digests(base / "b" / where)
            for where in (paths.interim("bench"), paths.processed("bench"))
        )
        results["resume"]["outputs_identical_to_full_run"] = same
        print("resume", results["resume"], flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(base, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
