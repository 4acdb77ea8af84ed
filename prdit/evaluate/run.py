"""One evaluation: the metrics file and the report folder of a set of generated volumes (our samples, an
experiment's or a baseline's) at one dataset and size. Every file it reads or writes is given (EvalInputs,
the metrics path, the report folder) and every setting is explicit (EvalSettings); the stage that resolves
them from the parameters and the layout, chooses the set and logs the run is prdit.stages.evaluate."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prdit import hu, viz
from prdit.device import select_device
from prdit.errors import MissingInputError
from prdit.evaluate.extractor import ExtractorInfo, build_extractor
from prdit.evaluate.features import Extractor, real_summaries, summarise
from prdit.evaluate.memorization import audit
from prdit.evaluate.ms_ssim import pair_indices, pairwise_values, scales_for
from prdit.evaluate.report import Histograms, write_report
from prdit.evaluate.scores import feature_scores
from prdit.evaluate.texture import compare as texture_compare
from prdit.evaluate.volumes import (
    EvalInputs,
    GeneratedSet,
    Summary,
    VolumeBank,
    hist_edges,
    read_volume,
    samples_set,
)
from prdit.io import atomic_dir, write_json

log = logging.getLogger(__name__)


MONTAGE_ROWS = viz.MONTAGE_VOLUMES
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


@dataclass(frozen=True)
class EvalSettings:
    """How one evaluation is run, each setting here: params.yaml evaluate.*, preprocess.window and what the
    resolved protocol conventions decide (prdit.protocol.Conventions; prdit.stages.evaluate fills them in)."""

    window: tuple[float, float]  # preprocess.window: generated HU clipped to it and mapped to [-1, 1]
    ms_ssim_pairs: int  # random pairs for MS-SSIM (generated, unless all_generated_pairs) and its floor
    bootstrap: int  # bootstrap replicates of each feature score's 95% interval (0: none)
    seed: int  # seed of the extractor's fallback weights, the MS-SSIM pairs and the bootstrap
    weights: str | None = None  # the extractor's weights file (None: the untrained fallback)
    sha256: str | None = None  # its expected SHA-256 (None: not checked)
    num_samples: int | None = None  # score the first n of our samples (None: all; a given set is kept whole)
    protocol: str = "project"  # the protocol's name, "project" or "paper": a label in the metrics, report
    extractor_axes: str = "zyx"  # axis order the extractor sees: "zyx" (ours) or "xyz" (nibabel's)
    real_set_n: int | None = None  # FID/MMD against the first n of train + val in split order; None: train
    all_generated_pairs: bool = False  # MS-SSIM over every pair of generated volumes (else ms_ssim_pairs)


@dataclass
class Scored:
    """Every number of one evaluation and what it was computed from, before it is laid out as a record."""

    dataset: str
    size: int
    protocol: str
    real_set_n: int | None  # EvalSettings.real_set_n: the reference set is the paper's (None: train)
    axes: str
    window: tuple[float, float]
    n_boot: int
    info: ExtractorInfo
    train: Summary
    heldout: Summary
    generated: Summary
    reference: Summary
    scores: dict
    diversity: dict[str, tuple[float | None, float | None, int]]  # 'generated', 'floor': (mean, sd, pairs)
    memo: dict
    diag: dict
    notes: list[str]
    skipped: list[str]
    feature_cache: Path
    montage: dict[str, tuple[list, list[str]]]  # 'real', 'generated': up to MONTAGE_ROWS volumes, labels
    seconds_features: float = 0.0
    source: dict = field(default_factory=dict)  # what was evaluated as generated (GeneratedSet.source)
    mid_slices: dict[str, np.ndarray] = field(default_factory=dict)  # mid_slices.npz: HU planes


MID_SLICE_KEYS = tuple(
    f"{who}_{plane}" for who in ("generated", "real") for plane in ("axial", "coronal", "sagittal")
)


def mid_slices(volume: np.ndarray, window: Sequence[float], prefix: str) -> dict[str, np.ndarray]:
    """The three mid-planes of a [z, y, x] cube in [-1, 1] as float32 HU: axial (middle z), coronal
    (middle y), sagittal (middle x), keyed `<prefix>_<plane>` (the comparison report reads these keys)."""
    v = hu.to_hu(volume, window)
    d, h, w = v.shape
    return {
        f"{prefix}_axial": v[d // 2],
        f"{prefix}_coronal": v[:, h // 2],
        f"{prefix}_sagittal": v[:, :, w // 2],
    }


def _diversity(
    volumes: Sequence | dict,
    n_volumes: int,
    n_pairs: int,
    seed: int,
    label: str,
    notes: list[str],
    unreadable: dict[int, str] | None = None,
    device: torch.device | None = None,
) -> tuple[float | None, float | None, int]:
    """Mean and sd of MS-SSIM over `n_pairs` pairs of `n_volumes` volumes held in memory (batched)."""
    if n_volumes < 2 or n_pairs == 0:
        if n_pairs:
            notes.append(f"MS-SSIM ({label}): not computed (needs >= 2 volumes, has {n_volumes})")
        return None, None, 0
    pairs, unreadable = [], unreadable or {}
    for i, j in pair_indices(n_volumes, n_pairs, seed):
        if i in unreadable or j in unreadable:
            notes.append(f"MS-SSIM ({label}): pair skipped ({unreadable.get(i) or unreadable[j]})")
        else:
            pairs.append((i, j))
    try:
        vals = pairwise_values(volumes, pairs, device)
    except ValueError as exc:  # every pair has the same shape: all fail alike (volume below the window)
        notes.extend([f"MS-SSIM ({label}): pair skipped ({exc})"] * len(pairs))
        vals = np.zeros(0)
    if not len(vals):
        return None, None, 0
    return float(np.mean(vals)), float(np.std(vals)), len(vals)


def _read_each_once(
    paths: Sequence[Path], idx: Iterable[int], kind: str, size: int, window: Any, device: torch.device | None
) -> tuple[dict[int, Any], dict[int, str]]:
    """Volumes `idx` of `paths`, each read once (on the GPU when it has room); unreadable ones with why."""
    bank, ok, bad = VolumeBank(device), {}, {}
    for i in sorted(set(idx)):
        try:
            bank.append(read_volume(paths[i], size, kind, window))
            ok[i] = bank[-1]
        except ValueError as exc:
            bad[i] = str(exc)
    return ok, bad


def score(
    dataset: str,
    size: int,
    settings: EvalSettings,
    inputs: EvalInputs,
    *,
    device: torch.device | None = None,
    generated: GeneratedSet | None = None,
) -> Scored:
    """Compute every number of the evaluation: features and their scores, MS-SSIM, audit, diagnostics.

    Each generated volume is read once: feature extraction fills a VolumeBank that MS-SSIM then scores
    in batches; real train volumes for the MS-SSIM floor are read once each. `inputs`: the real cubes,
    split files, feature cache and samples folder of `dataset` at `size`. `device`: prdit.device's choice
    (default: select_device()). `generated`: the volumes to score (e.g. a baseline's,
    prdit.evaluate.baselines.baseline_set); default our samples in inputs.samples, the first
    settings.num_samples (ignored when `generated` is given: its set is already chosen).
    """
    window, axes, real_n = settings.window, settings.extractor_axes, settings.real_set_n
    t0 = time.monotonic()
    gen = generated or samples_set(inputs.samples, size, window, settings.num_samples)
    if not gen.paths:
        raise MissingInputError(
            f"{gen.source['path']}: no generated volumes (*.nii.gz) to evaluate (run `prdit sample`)"
        )
    device = device or select_device()[0]

    # features: the real splits (cached), then each generated volume, read once and kept for MS-SSIM
    torch.manual_seed(settings.seed)
    model, info = build_extractor(settings.weights, settings.sha256)
    extractor = Extractor(model.to(device), info, axes)
    skipped: list[str] = []
    real = real_summaries(dataset, size, window, extractor, skipped, inputs)
    train, heldout = real["train"], Summary.concat([real["val"], real["test"]])
    if not train.ids:
        raise ValueError(f"{inputs.real}: none of the training cases could be read: {skipped}")
    gen_vols = VolumeBank(device)
    desc = f"sample features {dataset}/{size}"
    fake = summarise(gen.paths, gen.ids, window, extractor, skipped, read=gen.read, desc=desc, keep=gen_vols)
    if not fake.ids:
        raise ValueError(
            f"{gen.source['path']}: none of the {len(gen.paths)} generated volumes could be read: {skipped[-1]}"
        )
    t_feat = time.monotonic() - t0

    # FID / MMD against the reference set, and MS-SSIM of the generated set and of real train (its floor)
    reference, scores, notes = _feature_scores(real, train, heldout, fake, settings)
    train_paths = [inputs.real / f"{c}.nii.gz" for c in train.ids]
    diversity, real_vols = _diversities(gen_vols, train_paths, settings, size, notes, device)

    # the memorisation audit, the tiling / texture diagnostics and the caveats they call for
    memo = audit(fake, train, heldout)
    diag = texture_compare(fake.stats, train.stats, heldout.stats, precomputed=True)
    notes.extend(_caveats(diag, memo, gen, len(fake.ids)))

    montage = _montage_sets(real_vols, train.ids, gen_vols, fake.ids)
    first_real = montage["real"][0]
    return Scored(
        dataset=dataset,
        size=size,
        protocol=settings.protocol,
        real_set_n=real_n,
        axes=axes,
        window=window,
        n_boot=settings.bootstrap,
        info=info,
        train=train,
        heldout=heldout,
        generated=fake,
        reference=reference,
        scores=scores,
        diversity=diversity,
        memo=memo,
        diag=diag,
        notes=notes,
        skipped=skipped,
        feature_cache=inputs.feature_cache,
        montage=montage,
        seconds_features=t_feat,
        source=gen.source,
        # the first generated volume and the first readable real train volume (the montages' first rows)
        mid_slices=mid_slices(_host(gen_vols[0]), window, "generated")
        | (mid_slices(first_real[0], window, "real") if first_real else {}),
    )


def _feature_scores(
    real: dict[str, Summary], train: Summary, heldout: Summary, fake: Summary, settings: EvalSettings
) -> tuple[Summary, dict, list[str]]:
    """FID / MMD of `fake` against the reference set (train, or the paper's real set) with bootstrap
    intervals, and the held-out floors, which compare held-out with train only; the reference set too."""
    n_boot, seed, real_n = settings.bootstrap, settings.seed, settings.real_set_n
    reference = paper_real_set(real, real_n) if real_n is not None else train
    scores, notes = feature_scores(reference, heldout, fake, n_boot, seed)
    if real_n is not None:  # the paper's real set contains val: its floors would compare val with itself
        floors, floor_notes = feature_scores(train, heldout, Summary.concat([]), n_boot, seed)
        scores.update({k: v for k, v in floors.items() if "_floor" in k})
        notes = [n for n in notes if "held-out" not in n] + [n for n in floor_notes if "held-out" in n]
    return reference, scores, notes


def _diversities(
    gen_vols: VolumeBank,
    train_paths: list[Path],
    settings: EvalSettings,
    size: int,
    notes: list[str],
    device: torch.device | None,
) -> tuple[dict[str, tuple[float | None, float | None, int]], dict[int, Any]]:
    """MS-SSIM of the generated set and of real train (the floor), and the real train volumes read: those
    of the floor's pairs and the montage's rows, each read once."""
    pairs, seed = settings.ms_ssim_pairs, settings.seed
    n_gen = len(gen_vols)
    gen_pairs = n_gen * (n_gen - 1) // 2 if settings.all_generated_pairs else pairs
    diversity = {"generated": _diversity(gen_vols, n_gen, gen_pairs, seed, "generated", notes, device=device)}
    floor_pairs = pair_indices(len(train_paths), pairs, seed) if len(train_paths) >= 2 else []
    wanted = [k for pair in floor_pairs for k in pair] + list(range(min(MONTAGE_ROWS, len(train_paths))))
    real_vols, unreadable = _read_each_once(train_paths, wanted, "real", size, settings.window, device)
    diversity["floor"] = _diversity(
        real_vols, len(train_paths), pairs, seed, "real train", notes, unreadable, device
    )
    return diversity, real_vols


def _montage_sets(
    real_vols: dict[int, Any], train_ids: list[str], gen_vols: VolumeBank, gen_ids: list[str]
) -> dict[str, tuple[list, list[str]]]:
    """The montages' rows: the first MONTAGE_ROWS real train volumes that could be read, and the first
    generated ones, on the host with their labels."""
    shown = [i for i in range(min(MONTAGE_ROWS, len(train_ids))) if i in real_vols]
    return {
        "real": ([_host(real_vols[i]) for i in shown], [f"real {train_ids[i]}" for i in shown]),
        "generated": (
            [_host(v) for v in gen_vols[:MONTAGE_ROWS]],
            [f"generated {c}" for c in gen_ids[:MONTAGE_ROWS]],
        ),
    }


def _caveats(diag: dict, memo: dict, gen: GeneratedSet, n_read: int) -> list[str]:
    """The notes the diagnostics, the audit and the generated set (`n_read` of its files read) call for."""
    notes = []
    if diag["seam_ratio"] is None:
        notes.append(
            f"seam ratio: not computed (needs volumes larger than the {diag['seam_stride']}-voxel token grid)"
        )
    if memo["threshold_voxel_rmse"] is None:
        notes.append("memorization: no held-out real volumes; near-copies judged by SSIM alone")
    if n_read < len(gen.paths):
        notes.append(f"{len(gen.paths) - n_read} generated volume(s) could not be read (see skipped)")
    if gen.ignored:
        notes.append(
            f"{len(gen.ignored)} file(s) in {gen.source['path']} are not volumes and were ignored: {gen.ignored}"
        )
    return notes


def _host(v: Any) -> np.ndarray:
    return v.cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)


def record(s: Scored) -> dict:
    """The metrics record (the metrics file's contents) of a scored evaluation."""
    paper = s.real_set_n is not None
    (ms, ms_sd, ms_n), (msf, msf_sd, msf_n) = s.diversity["generated"], s.diversity["floor"]
    memo_keys = (
        "near_copy_ratio",
        "near_copy_ssim",
        "threshold_voxel_rmse",
        "near_copies",
        "median_ratio_feature",
        "median_ratio_voxel",
    )
    return {
        "dataset": s.dataset,
        "size": s.size,
        "protocol": s.protocol,
        **s.scores,
        "ms_ssim": ms,
        "ms_ssim_std": ms_sd,
        "ms_ssim_floor": msf,
        "ms_ssim_floor_std": msf_sd,
        "ms_ssim_scales": scales_for(s.size),
        **s.diag,
        "memorization": {k: s.memo[k] for k in memo_keys} | {"n_near_copies": len(s.memo["near_copies"])},
        "n": {
            **({"real_reference": len(s.reference.ids)} if paper else {}),
            "real_train": len(s.train.ids),
            "real_heldout": len(s.heldout.ids),
            "generated": len(s.generated.ids),
            "ms_ssim_pairs": ms_n,
            "ms_ssim_floor_pairs": msf_n,
            "bootstrap": s.n_boot,
        },
        "extractor": {
            "name": s.info.name,
            "pretrained": s.info.pretrained,
            "note": s.info.note,
            "sha256": s.info.sha256,
        },
        "input": {"window": list(s.window), "note": INPUT_NOTE, "extractor_axes": s.axes},
        "generated": s.source,
        "reference_set": (
            f"protocol {s.protocol}: the first {s.real_set_n} of real train + val in split order "
            "(the reference's real set); floors: real val vs real train"
            if paper
            else "real train split; floors: real val + test vs the same train split"
        ),
        **({"reference_ids": list(s.reference.ids)} if paper else {}),
        "feature_cache": str(s.feature_cache),
        "notes": s.notes,
        "skipped": s.skipped,
    }


def write(m: dict, s: Scored, metrics_path: Path, report_dir: Path) -> tuple[Path, Path]:
    """Write the report folder `report_dir` and the metrics file `metrics_path`, each atomically; returns
    (metrics_path, report_dir). The report folder also gets mid_slices.npz (float32 HU planes, keys
    MID_SLICE_KEYS) for the comparison report.
    """
    info_lines = [
        f"protocol: {s.protocol} (docs/reproducing.md); extractor input axis order {s.axes}; "
        f"MS-SSIM over {m['n']['ms_ssim_pairs']} generated pairs",
        f"extractor: {s.info.name} (pretrained: {str(s.info.pretrained).lower()}). {s.info.note}",
        f"input: {INPUT_NOTE}",
        f"reference set: {m['reference_set']}",
        f"tiling and texture: {DIAG_NOTE}",
        f"N: {len(s.train.ids)} real train, {len(s.heldout.ids)} real held-out, "
        f"{len(s.generated.ids)} generated; {s.n_boot} bootstrap replicates (95% percentile intervals)",
        f"real-set feature cache: {m['feature_cache']}",
        "generated: " + ", ".join(f"{k} {v}" for k, v in s.source.items()),
    ]
    with atomic_dir(report_dir) as tmp:
        hists = Histograms(hist_edges(s.window), s.train.hists.mean(0), s.generated.hists.mean(0))
        write_report(tmp, m, s.montage, hists, s.memo, info_lines)
        write_json(tmp / "metrics.json", m)
        with open(tmp / "mid_slices.npz", "wb") as fh:
            np.savez(fh, **{k: np.asarray(v, np.float32) for k, v in s.mid_slices.items()})
    write_json(metrics_path, m)
    return metrics_path, report_dir


def evaluate(
    dataset: str,
    size: int,
    settings: EvalSettings,
    inputs: EvalInputs,
    *,
    metrics_path: Path,
    report_dir: Path,
    device: torch.device | None = None,
    generated: GeneratedSet | None = None,
) -> tuple[dict, Path, Path]:
    """Score, build the record, write the metrics file and report; returns (metrics, json path, report dir).

    The paper protocol's settings (prdit.stages.evaluate fills them in from the resolved conventions)
    follow the reference evaluation: features of volumes in nibabel (x, y, z) axis order, the real set
    the first 1,000 of train + val in split order, MS-SSIM over all pairs of generated volumes; the floors
    stay held-out (val) against train. `inputs` and `generated`: see score(); `metrics_path` and
    `report_dir`: see write(); everything else is the same for samples, experiments and baselines.
    """
    t0 = time.monotonic()
    s = score(dataset, size, settings, inputs, device=device, generated=generated)
    m = record(s)
    write(m, s, metrics_path, report_dir)
    name = s.source.get("name")
    log.info(
        "evaluate %s/%d%s: FID %s (floor %s), MMD %s (floor %s), MS-SSIM %s, seam ratio %s (real %s), "
        "texture ratio %s (floor %s); features %.1f s, total %.1f s",
        dataset,
        size,
        f" ({s.source['kind']} {name})" if name else "",
        m["fid"],
        m["fid_floor"],
        m["mmd_reference"],
        m["mmd_reference_floor"],
        m["ms_ssim"],
        m["seam_ratio"],
        m["seam_ratio_real"],
        m["texture_ratio"],
        m["texture_ratio_floor"],
        s.seconds_features,
        time.monotonic() - t0,
    )
    return m, metrics_path, report_dir


def paper_real_set(real: dict[str, Summary], n: int) -> Summary:
    """The reference's real set: train then val in split order, the first `n` volumes
    (prdit.protocol.PAPER_REAL_N under the paper protocol)."""
    both = Summary.concat([real["train"], real["val"]])
    return both.take(range(min(n, len(both.ids))))
