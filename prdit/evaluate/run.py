"""`prdit evaluate`: metrics/<dataset>/<size>.json and reports/<dataset>/<size>/ for one dataset and size."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from prdit import paths, protocol, tracking
from prdit.evaluate.extractor import build_extractor
from prdit.evaluate.features import cache_path, real_summaries, summarise
from prdit.evaluate.memorization import audit
from prdit.evaluate.ms_ssim import ms_ssim, pair_indices, scales_for
from prdit.evaluate.report import write_report
from prdit.evaluate.scores import feature_scores
from prdit.evaluate.texture import compare as texture_compare
from prdit.evaluate.volumes import Summary, hist_edges, read_volume, sample_paths
from prdit.io import atomic_dir, write_json
from prdit.protocol import PAPER_REAL_N

if TYPE_CHECKING:
    from prdit.config import Params

log = logging.getLogger(__name__)


MONTAGE_ROWS = 4
INPUT_NOTE = (
    "real (data/processed, [-1, 1]) and generated (samples, HU clipped to preprocess.window and mapped "
    "linearly to [-1, 1]) volumes enter the extractor and MS-SSIM identically as [-1, 1] cubes, as in the "
    "PRDiT reference evaluation; MS-SSIM maps them to [0, 1] with data_range 1"
)
DIAG_NOTE = (
    "seam_ratio: mean |step| across the model's token boundaries (every seam_stride voxels, where "
    "un-patchified cells meet) over the mean |step| elsewhere, all three axes, on [-1, 1] volumes; 1 = no "
    "tiling; seam_ratio_real: the same on the real train split (the FID reference set). texture_*: mean "
    "|second difference|; texture_ratio = generated / real train (above 1: noise, below 1: over-smoothing), "
    "texture_ratio_floor = held-out real / real train"
)


def _diversity(
    paths: list[Path],
    kind: str,
    size: int,
    window: Any,
    n_pairs: int,
    seed: int,
    label: str,
    notes: list[str],
) -> tuple[float | None, float | None, int]:
    if len(paths) < 2 or n_pairs == 0:
        if n_pairs:
            notes.append(f"MS-SSIM ({label}): not computed (needs >= 2 volumes, has {len(paths)})")
        return None, None, 0
    vals = []
    for i, j in pair_indices(len(paths), n_pairs, seed):
        try:
            vals.append(
                ms_ssim(read_volume(paths[i], size, kind, window), read_volume(paths[j], size, kind, window))
            )
        except ValueError as exc:
            notes.append(f"MS-SSIM ({label}): pair skipped ({exc})")
    if not vals:
        return None, None, 0
    return float(np.mean(vals)), float(np.std(vals)), len(vals)


def evaluate(
    dataset: str,
    size: int,
    window: tuple[float, float],
    weights: str | None,
    sha256: str | None,
    ms_ssim_pairs: int,
    n_boot: int,
    seed: int,
    num_samples: int | None = None,
    protocol_name: str = "project",
    samples_root: Path = paths.SAMPLES,
    processed_root: Path = paths.PROCESSED,
    splits_root: Path = paths.SPLITS,
    features_root: Path = paths.FEATURES,
    metrics_root: Path = paths.METRICS,
    reports_root: Path = paths.REPORTS,
) -> tuple[dict, Path, Path]:
    """Compute every number and write the metrics file and report; returns (metrics, json path, report dir).

    protocol_name 'paper' follows the reference evaluation (prdit.protocol): features of volumes in
    nibabel (x, y, z) axis order, the real set the first 1,000 of train + val in split order, MS-SSIM over
    all pairs of generated volumes; the floors stay held-out (val) against train.
    """
    paper = protocol_name == "paper"
    axes = "xyz" if paper else "zyx"
    t0 = time.monotonic()
    gen_dir = samples_root / dataset / str(size)
    gen_paths = sample_paths(gen_dir)[:num_samples]
    if not gen_paths:
        raise FileNotFoundError(
            f"{gen_dir}: no generated volumes (*.nii.gz) to evaluate (run `prdit sample`)"
        )
    torch.manual_seed(seed)
    model, info = build_extractor(weights, sha256)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    skipped: list[str] = []
    real = real_summaries(
        dataset, size, window, model, info, skipped, processed_root, splits_root, features_root, axes=axes
    )
    train, heldout = real["train"], Summary.concat([real["val"], real["test"]])
    if not train.ids:
        raise ValueError(
            f"{processed_root / dataset / str(size)}: none of the training cases could be read: {skipped}"
        )
    gen_ids = [p.name.removesuffix(".nii.gz") for p in gen_paths]
    generated = summarise(
        gen_paths,
        gen_ids,
        "generated",
        size,
        window,
        model,
        skipped,
        desc=f"sample features {dataset}/{size}",
        axes=axes,
    )
    if not generated.ids:
        raise ValueError(
            f"{gen_dir}: none of the {len(gen_paths)} generated volumes could be read: {skipped[-1]}"
        )
    t_feat = time.monotonic() - t0

    reference = paper_real_set(real) if paper else train
    scores, notes = feature_scores(reference, heldout, generated, n_boot, seed)
    if paper:  # the floors compare held-out with train only: the paper's real set contains val
        floors, floor_notes = feature_scores(train, heldout, Summary.concat([]), n_boot, seed)
        scores.update({k: v for k, v in floors.items() if "_floor" in k})
        notes = [n for n in notes if "held-out" not in n] + [n for n in floor_notes if "held-out" in n]
    ok_gen = [p for p, i in zip(gen_paths, gen_ids) if i in set(generated.ids)]
    train_paths = [processed_root / dataset / str(size) / f"{c}.nii.gz" for c in train.ids]
    gen_pairs = len(ok_gen) * (len(ok_gen) - 1) // 2 if paper else ms_ssim_pairs
    ms, ms_sd, ms_n = _diversity(ok_gen, "generated", size, window, gen_pairs, seed, "generated", notes)
    msf, msf_sd, msf_n = _diversity(
        train_paths, "real", size, window, ms_ssim_pairs, seed, "real train", notes
    )
    memo = audit(generated, train, heldout)
    diag = texture_compare(generated.stats, train.stats, heldout.stats, precomputed=True)
    if diag["seam_ratio"] is None:
        notes.append(
            f"seam ratio: not computed (needs volumes larger than the {diag['seam_stride']}-voxel token grid)"
        )
    if memo["threshold_voxel_rmse"] is None:
        notes.append("memorization: no held-out real volumes; near-copies judged by SSIM alone")
    m = {
        "dataset": dataset,
        "size": size,
        "protocol": protocol_name,
        **scores,
        "ms_ssim": ms,
        "ms_ssim_std": ms_sd,
        "ms_ssim_floor": msf,
        "ms_ssim_floor_std": msf_sd,
        "ms_ssim_scales": scales_for(size),
        **diag,
        "memorization": {
            k: memo[k]
            for k in (
                "near_copy_ratio",
                "near_copy_ssim",
                "threshold_voxel_rmse",
                "near_copies",
                "median_ratio_feature",
                "median_ratio_voxel",
            )
        }
        | {"n_near_copies": len(memo["near_copies"])},
        "n": {
            **({"real_reference": len(reference.ids)} if paper else {}),
            "real_train": len(train.ids),
            "real_heldout": len(heldout.ids),
            "generated": len(generated.ids),
            "ms_ssim_pairs": ms_n,
            "ms_ssim_floor_pairs": msf_n,
            "bootstrap": n_boot,
        },
        "extractor": {
            "name": info.name,
            "pretrained": info.pretrained,
            "note": info.note,
            "sha256": info.sha256,
        },
        "input": {"window": list(window), "note": INPUT_NOTE, "extractor_axes": axes},
        "reference_set": (
            f"protocol paper: the first {PAPER_REAL_N} of real train + val in split order (the reference's "
            "real set); floors: real val vs real train"
            if paper
            else "real train split; floors: real val + test vs the same train split"
        ),
        **({"reference_ids": list(reference.ids)} if paper else {}),
        "feature_cache": str(cache_path(dataset, size, features_root)),
        "notes": notes,
        "skipped": skipped,
    }
    if len(generated.ids) < len(gen_paths):
        notes.append(
            f"{len(gen_paths) - len(generated.ids)} generated volume(s) could not be read (see skipped)"
        )
    metrics_path = metrics_root / dataset / f"{size}.json"
    report_dir = reports_root / dataset / str(size)
    edges = hist_edges(window)
    real_vols = [read_volume(p, size, "real", window) for p in train_paths[:MONTAGE_ROWS]]
    gen_vols = [read_volume(p, size, "generated", window) for p in ok_gen[:MONTAGE_ROWS]]
    info_lines = [
        f"protocol: {protocol_name} (docs/reproducing.md); extractor input axis order {axes}; "
        f"MS-SSIM over {ms_n} generated pairs",
        f"extractor: {info.name} (pretrained: {str(info.pretrained).lower()}). {info.note}",
        f"input: {INPUT_NOTE}",
        f"reference set: {m['reference_set']}",
        f"tiling and texture: {DIAG_NOTE}",
        f"N: {len(train.ids)} real train, {len(heldout.ids)} real held-out, {len(generated.ids)} generated; "
        f"{n_boot} bootstrap replicates (95% percentile intervals)",
        f"real-set feature cache: {m['feature_cache']}",
    ]
    with atomic_dir(report_dir) as tmp:
        write_report(
            tmp,
            m,
            real_vols,
            [f"real {c}" for c in train.ids[:MONTAGE_ROWS]],
            gen_vols,
            [f"generated {c}" for c in generated.ids[:MONTAGE_ROWS]],
            edges,
            train.hists.mean(0),
            generated.hists.mean(0),
            memo,
            info_lines,
        )
        write_json(tmp / "metrics.json", m)
    write_json(metrics_path, m)
    log.info(
        "evaluate %s/%d: FID %s (floor %s), MMD %s (floor %s), MS-SSIM %s, seam ratio %s (real %s), "
        "texture ratio %s (floor %s); features %.1f s, total %.1f s",
        dataset,
        size,
        m["fid"],
        m["fid_floor"],
        m["mmd_reference"],
        m["mmd_reference_floor"],
        m["ms_ssim"],
        m["seam_ratio"],
        m["seam_ratio_real"],
        m["texture_ratio"],
        m["texture_ratio_floor"],
        t_feat,
        time.monotonic() - t0,
    )
    return m, metrics_path, report_dir


def paper_real_set(real: dict[str, Summary]) -> Summary:
    """The reference's real set: train then val in split order, the first PAPER_REAL_N volumes."""
    both = Summary.concat([real["train"], real["val"]])
    return both.take(range(min(PAPER_REAL_N, len(both.ids))))


def numeric(m: dict, prefix: str = "") -> dict[str, float]:
    """Flat numeric view of the metrics for MLflow (nested keys dotted; intervals keep low and high)."""
    out: dict[str, float] = {}
    for k, v in m.items():
        if isinstance(v, bool) or v is None or (prefix.endswith("_ci95.") and k not in ("low", "high")):
            continue
        if isinstance(v, (int, float)):
            out[prefix + k] = float(v)
        elif isinstance(v, dict) and k not in ("extractor", "input"):
            out.update(numeric(v, f"{prefix}{k}."))
    return out


def run_evaluate(p: Params, dataset: str, size: int) -> None:
    """Stage function of `prdit evaluate`: one MLflow run logging the metrics, the report and its pictures."""
    ev = p.evaluate
    used = {
        "evaluate": p.raw.get("evaluate", {}),
        "preprocess.window": list(p.preprocess.window),
        "protocol": protocol.name(p),
    }
    with tracking.stage_run(p, stage="evaluate", dataset=dataset, size=size, used=used) as run:
        for split in ("train", "val", "test"):  # the real reference and floor sets
            tracking.log_split(run, p, dataset, size, split, "evaluation")
        run.log_dataset(f"samples/{dataset}/{size}", paths.samples(dataset, size), "samples")
        m, metrics_path, report_dir = evaluate(
            dataset,
            size,
            tuple(p.preprocess.window),
            ev.weights,
            ev.sha256,
            ev.ms_ssim_pairs,
            ev.bootstrap,
            ev.seed,
            ev.num_samples,
            protocol.name(p),
        )
        run.set_tags(
            {
                "prdit.protocol": m["protocol"],
                "prdit.extractor": m["extractor"]["name"],
                "prdit.extractor_pretrained": str(m["extractor"]["pretrained"]).lower(),
            }
        )
        run.log_metrics(numeric(m))
        run.log_artifact(metrics_path, artifact_path="metrics")
        for f in sorted(report_dir.iterdir()):
            if f.suffix == ".png":
                run.log_image(f, artifact_path="report")
            else:
                run.log_artifact(f, artifact_path="report")
