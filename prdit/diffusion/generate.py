"""`prdit sample`: draw volumes from a trained model and write them as NIfTI in HU."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prdit.diffusion.sampler import sample

log = logging.getLogger(__name__)


def sample_seeds(seed: int, n: int) -> list[int]:
    """Independent per-sample seeds derived from (seed, i): sample i never depends on n or the batch."""
    return [int(np.random.SeedSequence([seed, i]).generate_state(1, dtype=np.uint64)[0] >> 1) for i in range(n)]


def to_hu(x: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Model space [-1, 1] -> HU on the preprocessing window (values outside are clipped first)."""
    lo, hi = window
    return ((np.clip(x, -1.0, 1.0) + 1.0) * 0.5 * (hi - lo) + lo).astype(np.float32)


def model_path(p: Any, dataset: str, size: int) -> Path:
    """The model file that generates `size`: the highres model at highres_size, else the stage-2 model."""
    if size not in p.sizes():
        raise ValueError(f"size {size} is not one of this config's sizes {p.sizes()} (preprocess.size / highres_size)")
    stage = "highres" if size == p.preprocess.highres_size else "global"
    return Path("models") / dataset / stage / "model.pt"


def run_sample(p: Any, dataset: str, size: int) -> None:
    """Write p.sample.n volumes to samples/<dataset>/<size>/<i>.nii.gz (HU, spacing fov/size mm).

    The folder is replaced atomically and also holds montage.png (mid-slices of the first samples).
    """
    from prdit import io, tracking, viz
    from prdit.model import load

    path = model_path(p, dataset, size)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load(path, map_location=device).eval()
    if model.input_size != size:
        raise ValueError(f"{path}: model works at {model.input_size}^3, asked for {size}^3")
    s, n, bs = p.sample, p.sample.n, max(1, p.sample.batch_size)
    seeds = sample_seeds(s.seed, n)
    spacing = (p.preprocess.fov_mm / size,) * 3
    amp = torch.bfloat16 if device.type == "cuda" else None
    out_dir = Path("samples") / dataset / str(size)
    with tracking.stage_run(p, stage="sample", dataset=dataset, size=size, used=p.used("sample", dataset)) as run:
        run.log_params({"model_file": str(path), "model": getattr(model, "spec", {}).get("name", "?"), "device": device.type})
        previews: list[np.ndarray] = []
        with io.atomic_dir(out_dir) as tmp:
            for start in range(0, n, bs):
                idx = list(range(start, min(n, start + bs)))
                x = sample(
                    model, (len(idx), model.in_channels, size, size, size), steps=s.steps, k=s.k,
                    seeds=[seeds[i] for i in idx], device=device, timesteps=p.diffusion.timesteps,
                    noise_std=p.diffusion.noise_std, amp_dtype=amp,
                    progress_desc=f"sample {dataset}/{size} {idx[0]}-{idx[-1]}",
                )
                for i, vol in zip(idx, x[:, 0].cpu().numpy()):
                    io.write_nifti(tmp / f"{i}.nii.gz", to_hu(vol, p.preprocess.window), spacing)
                    if len(previews) < 4:
                        previews.append(np.clip(vol, -1, 1))
                run.log_metrics({"samples_written": idx[-1] + 1}, step=idx[-1] + 1)
            viz.montage(previews, tmp / "montage.png", titles=[f"sample {i}" for i in range(len(previews))])
        log.info("wrote %d samples to %s", n, out_dir)
        run.log_image(out_dir / "montage.png", artifact_path="montages")
