"""`prdit sample`: draw volumes from a trained model and write them as NIfTI in HU."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from prdit import io, paths, protocol, tracking, viz
from prdit.diffusion.sampler import sample
from prdit.errors import PrditError
from prdit.model import load

if TYPE_CHECKING:
    from prdit.config import Params

log = logging.getLogger(__name__)


def sample_seeds(seed: int, n: int) -> list[int]:
    """Independent per-sample seeds derived from (seed, i): sample i never depends on n or the batch."""
    return [
        int(np.random.SeedSequence([seed, i]).generate_state(1, dtype=np.uint64)[0] >> 1) for i in range(n)
    ]


def to_hu(x: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Model space [-1, 1] -> HU on the preprocessing window (values outside are clipped first)."""
    lo, hi = window
    return ((np.clip(x, -1.0, 1.0) + 1.0) * 0.5 * (hi - lo) + lo).astype(np.float32)


def model_path(p: Params, dataset: str, size: int) -> Path:
    """The model file that generates `size`: the highres model at highres_size, else the stage-2 model."""
    if size not in p.sizes():
        raise ValueError(
            f"size {size} is not one of this config's sizes {p.sizes()} (preprocess.size / highres_size)"
        )
    stage = "highres" if size == p.preprocess.highres_size else "global"
    return paths.model_file(dataset, stage)


def shard_batches(n: int, batch_size: int, shards: int = 1, shard: int | None = None) -> list[list[int]]:
    """The batches of sample indices one job draws: all of them, or shard `shard` of `shards`.

    A shard gets whole, contiguous batches of the unsharded run (never a re-batched subset), so every
    sample goes through the network in the same batch as in one job and the files are bit-identical on
    a CPU. Shard sizes differ by at most one batch.
    """
    bs = max(1, batch_size)
    batches = [list(range(s, min(n, s + bs))) for s in range(0, n, bs)]
    if shard is None:
        return batches
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} is not in 0..{shards - 1} (sample.shards = {shards})")
    if shards > len(batches):
        raise ValueError(
            f"sample.shards = {shards} exceeds the {len(batches)} batches of sample.n / sample.batch_size"
        )
    return batches[shard * len(batches) // shards : (shard + 1) * len(batches) // shards]


def from_hu(hu: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """HU on the preprocessing window -> model space [-1, 1] (for montages made from written files)."""
    lo, hi = window
    return ((hu.astype(np.float32) - lo) / (hi - lo) * 2.0 - 1.0).astype(np.float32)


def out_dir(dataset: str, size: int, shard: int | None = None) -> Path:
    """samples/<dataset>/<size>, or for one shard samples/<dataset>/<size>.shards/<shard>."""
    base = paths.samples(dataset, size)
    return base if shard is None else paths.shards(base) / str(shard)


MONTAGE_ROWS = 4


def _montage(previews: list[np.ndarray], path: Path) -> None:

    viz.montage(previews, path, titles=[f"sample {i}" for i in range(len(previews))])


def run_sample(p: Params, dataset: str, size: int, shard: int | None = None) -> None:
    """Write p.sample.n volumes to samples/<dataset>/<size>/<i>.nii.gz (HU, spacing fov/size mm).

    The folder is replaced atomically and also holds montage.png (mid-slices of the first samples).
    With `shard` (0 <= shard < sample.shards) only that shard's batches are drawn, into
    samples/<dataset>/<size>.shards/<shard>/ without a montage; `merge_samples` joins the shards.
    """

    path = model_path(p, dataset, size)
    s, n = p.sample, p.sample.n
    batches = shard_batches(n, s.batch_size, s.shards, shard)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load(path, map_location=device).eval()
    if model.input_size != size:
        raise ValueError(f"{path}: model works at {model.input_size}^3, asked for {size}^3")
    seeds = sample_seeds(s.seed, n)
    spacing = (p.preprocess.fov_mm / size,) * 3
    amp = torch.bfloat16 if device.type == "cuda" else None
    if protocol.is_paper(p):  # the reference samples in fp32/TF32 with bf16 attention kernels only
        from prdit.model.layers import set_attention_kernel_dtype

        amp = None
        set_attention_kernel_dtype(model, torch.bfloat16)
    dest = out_dir(dataset, size, shard)
    with tracking.stage_run(
        p, stage="sample", dataset=dataset, size=size, used=p.used("sample", dataset)
    ) as run:
        tracking.log_split(run, p, dataset, size, "train", "training")  # what the sampled model learned from
        run.log_params(
            {
                "model_file": str(path),
                "model": getattr(model, "spec", {}).get("name", "?"),
                "device": device.type,
                "shard": "all" if shard is None else f"{shard}/{s.shards}",
            }
        )
        previews: list[np.ndarray] = []
        written = 0
        with io.atomic_dir(dest) as tmp:
            for idx in batches:
                x = sample(
                    model,
                    (len(idx), model.in_channels, size, size, size),
                    steps=s.steps,
                    k=s.k,
                    seeds=[seeds[i] for i in idx],
                    device=device,
                    timesteps=p.diffusion.timesteps,
                    noise_std=p.diffusion.noise_std,
                    amp_dtype=amp,
                    grid="reference" if protocol.is_paper(p) else "project",
                    progress_desc=f"sample {dataset}/{size} {idx[0]}-{idx[-1]}",
                )
                for i, vol in zip(idx, x[:, 0].cpu().numpy()):
                    hu = to_hu(vol, p.preprocess.window)
                    io.write_nifti(tmp / f"{i}.nii.gz", hu, spacing)
                    if shard is None and len(previews) < MONTAGE_ROWS:
                        previews.append(from_hu(hu, p.preprocess.window))  # as merge_samples sees the files
                written += len(idx)
                run.log_metrics({"samples_written": written}, step=written)
            if shard is None:
                _montage(previews, tmp / "montage.png")
        log.info("wrote %d samples to %s", written, dest)
        if shard is None:
            run.log_image(dest / "montage.png", artifact_path="montages")


def merge_samples(p: Params, dataset: str, size: int) -> None:
    """Join samples/<dataset>/<size>.shards/{0..shards-1}/ into samples/<dataset>/<size>/ (atomically).

    Every sample index must come from exactly the shard that owns it; files are hard-linked (copied
    across filesystems), and montage.png is drawn from the written files, so the folder is byte for
    byte what one unsharded `prdit sample` writes.
    """
    import shutil

    s = p.sample
    dest = out_dir(dataset, size)
    with tracking.stage_run(
        p, stage="sample", dataset=dataset, size=size, used=p.used("sample", dataset)
    ) as run:
        tracking.log_split(run, p, dataset, size, "train", "training")  # what the sampled model learned from
        run.log_params({"shard": f"merge of {s.shards}"})
        with io.atomic_dir(dest) as tmp:
            for k in range(s.shards):
                src = out_dir(dataset, size, k)
                want = {f"{i}.nii.gz" for b in shard_batches(s.n, s.batch_size, s.shards, k) for i in b}
                have = {f.name for f in src.glob("*.nii.gz")} if src.is_dir() else set()
                if have != want:
                    raise PrditError(
                        f"{src}: shard {k}/{s.shards} holds {sorted(have) or 'nothing'}, expected "
                        f"{sorted(want, key=lambda f: int(f.split('.')[0]))} (re-run its sampling job)"
                    )
                for name in sorted(want):
                    try:
                        (tmp / name).hardlink_to(src / name)
                    except OSError:
                        shutil.copy2(src / name, tmp / name)
            previews = [
                from_hu(io.read_nifti(tmp / f"{i}.nii.gz")[0], p.preprocess.window)
                for i in range(min(MONTAGE_ROWS, s.n))
            ]
            _montage(previews, tmp / "montage.png")
        log.info("merged %d shards (%d samples) into %s", s.shards, s.n, dest)
        run.log_image(dest / "montage.png", artifact_path="montages")
