"""The demo's goal figures, measured: DAG wall time on this machine and the sample-quality goals.

Clones this repository's HEAD into a temporary folder, reuses this checkout's .venv (the README's
`make demo` creates it; its setup time is not part of the DAG goal), runs the demo DAG exactly as
`make demo` does (`snakemake --profile profiles/local --cores N all`), then benchmarks/sample_quality.py
on the result. Run by hand on an idle machine; not a test.

    python benchmarks/demo.py [--cores 2] [--keep DIR]

Goals: DAG <= 8 minutes on 2 cores; texture ratio 0.7-1.3 and seam ratio within 1.15x of the real
volumes' at both sizes (see sample_quality.py). Exit status 0 when all pass, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DAG_GOAL_S = 8 * 60


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--keep", type=Path, help="build here and keep it (default: a temporary folder, removed)")
    args = ap.parse_args()
    venv = ROOT / ".venv" / "bin"
    if not (venv / "snakemake").exists():
        sys.exit(f"{venv}: no virtual environment; run `make setup` first")
    work = args.keep or Path(tempfile.mkdtemp(prefix="prdit-demo-"))
    try:
        subprocess.run(["git", "clone", "-q", str(ROOT), str(work)], check=True)
        env = {**os.environ, "PATH": f"{venv}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(work)}
        t0 = time.perf_counter()
        subprocess.run(
            [str(venv / "snakemake"), "--profile", "profiles/local", "--cores", str(args.cores), "all"],
            cwd=work,
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        dag_s = time.perf_counter() - t0
        ok = dag_s <= DAG_GOAL_S
        print(
            f"DAG wall time: {dag_s / 60:.2f} min on {args.cores} cores (goal <= {DAG_GOAL_S / 60:.0f} min): "
            f"{'PASS' if ok else 'MISS'}"
        )
        for tsv in sorted((work / "logs" / "benchmarks").rglob("*.tsv")):
            seconds = tsv.read_text().splitlines()[1].split("\t")[0]
            print(f"  {tsv.relative_to(work / 'logs' / 'benchmarks')}: {float(seconds):.0f} s")
        quality = subprocess.run(
            [str(venv / "python"), str(ROOT / "benchmarks" / "sample_quality.py"), "--project", str(work)],
            env=env,
        )
        return 0 if ok and quality.returncode == 0 else 1
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
