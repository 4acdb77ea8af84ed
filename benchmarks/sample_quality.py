"""Sample-quality check of a built project: texture ratio, seam ratio (generated and real), FID and its floor.

Reads metrics/<dataset>/<size>.json of a project that has run `prdit evaluate` (e.g. the demo:
`snakemake --cores 2 all`) for both sizes of params.yaml (preprocess.size and preprocess.highres_size)
and checks them against the goal figures:

    texture ratio (generated / real train, mean |second difference|)   within 0.7 - 1.3
    seam ratio of the generated volumes (token-grid tiling)             at most 1.15 x the real volumes'

and prints PASS or MISS per goal (FID and its floor are shown, not judged). A metrics file written before
these diagnostics existed lacks their keys: they are then computed here from samples/<dataset>/<size>/
and the real train split in data/processed (the evaluation's FID reference set), and marked so.

    python benchmarks/sample_quality.py [--project .] [--dataset NAME] [--sizes 32 64] [--json out.json]

Exit status 0 when every goal passes, 1 when one misses, 2 when a metrics file is missing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prdit.evaluate.texture import compare  # noqa: E402

TEXTURE_RANGE = (0.7, 1.3)
SEAM_FACTOR = 1.15
KEYS = ("texture_ratio", "seam_ratio", "seam_ratio_real")


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def _from_files(project: Path, dataset: str, size: int, window: list[float]) -> dict:
    """The diagnostics from the volumes themselves (for a metrics file that predates them)."""
    from prdit import paths
    from prdit.data.dataset import case_ids
    from prdit.evaluate.volumes import read_volume, sample_paths

    real = [
        read_volume(project / paths.processed(dataset, size) / f"{c}.nii.gz", size, "real", window)
        for c in case_ids(project / paths.splits(dataset, "train"), dataset)
    ]
    gen = [
        read_volume(p, size, "generated", window)
        for p in sample_paths(project / paths.samples(dataset, size))
    ]
    return compare(gen, real)


def check(project: Path, dataset: str, size: int, window: list[float]) -> dict:
    path = project / "metrics" / dataset / f"{size}.json"
    if not path.is_file():
        return {
            "dataset": dataset,
            "size": size,
            "error": f"{path}: not found (run the pipeline's evaluate stage)",
        }
    m = json.loads(path.read_text())
    source = str(path)
    if any(k not in m for k in KEYS):
        m = {**m, **_from_files(project, dataset, size, window)}
        source += " (seam/texture computed from samples/ and data/processed: the file predates them)"
    tr, seam, seam_real = m.get("texture_ratio"), m.get("seam_ratio"), m.get("seam_ratio_real")
    goals = {
        f"texture ratio within {TEXTURE_RANGE[0]}-{TEXTURE_RANGE[1]}": tr is not None
        and TEXTURE_RANGE[0] <= tr <= TEXTURE_RANGE[1],
        f"seam ratio <= {SEAM_FACTOR} x real": seam is not None
        and seam_real is not None
        and seam <= SEAM_FACTOR * seam_real,
    }
    return {
        "dataset": dataset,
        "size": size,
        "source": source,
        "texture_ratio": tr,
        "texture_ratio_floor": m.get("texture_ratio_floor"),
        "texture_generated": m.get("texture_generated"),
        "texture_real": m.get("texture_real"),
        "seam_ratio": seam,
        "seam_ratio_real": seam_real,
        "fid": m.get("fid"),
        "fid_floor": m.get("fid_floor"),
        "n_generated": m.get("n", {}).get("generated"),
        "goals": goals,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--project", type=Path, default=Path("."), help="project folder with params.yaml and metrics/"
    )
    ap.add_argument("--dataset", help="default: every dataset in params.yaml")
    ap.add_argument(
        "--sizes", type=int, nargs="+", help="default: preprocess.size and preprocess.highres_size"
    )
    ap.add_argument("--json", type=Path, help="also write the results here")
    a = ap.parse_args(argv)
    params = yaml.safe_load((a.project / "params.yaml").read_text())
    pre = params.get("preprocess", {})
    sizes = a.sizes or [s for s in (pre.get("size"), pre.get("highres_size")) if s]
    datasets = [a.dataset] if a.dataset else list(params.get("datasets", []))
    window = pre.get("window", [-1000.0, 1000.0])
    results, status = [], 0
    for ds in datasets:
        for size in sizes:
            r = check(a.project, ds, size, window)
            results.append(r)
            print(f"== {ds} {size}^3")
            if "error" in r:
                print(f"   {r['error']}")
                status = max(status, 2)
                continue
            print(f"   from {r['source']}; {r['n_generated']} generated volumes")
            print(
                f"   texture ratio  {_fmt(r['texture_ratio'])}  (generated {_fmt(r['texture_generated'])}, "
                f"real {_fmt(r['texture_real'])}; held-out/real floor {_fmt(r['texture_ratio_floor'])})"
            )
            print(f"   seam ratio     generated {_fmt(r['seam_ratio'])}, real {_fmt(r['seam_ratio_real'])}")
            print(f"   FID            {_fmt(r['fid'])}  (floor {_fmt(r['fid_floor'])})")
            for goal, ok in r["goals"].items():
                print(f"   {'PASS' if ok else 'MISS'}  {goal}")
                if not ok:
                    status = max(status, 1)
    if a.json:
        a.json.write_text(json.dumps(results, indent=2) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
