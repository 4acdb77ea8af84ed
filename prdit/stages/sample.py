"""`prdit sample`: draw volumes from a trained model and write them as NIfTI in HU (the sampler: prdit.diffusion)."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from prdit import hu, io, paths, precision, topology, tracking, viz
from prdit.device import announce, describe_device, select_device
from prdit.diffusion.batches import sample_seeds, shard_batches
from prdit.diffusion.sampler import SamplerOptions, sample
from prdit.errors import MissingInputError
from prdit.model import content_hash, load
from prdit.train.signals import EXIT_OK, StopRequest

if TYPE_CHECKING:
    from prdit.config import Params

log = logging.getLogger(__name__)


def model_path(p: Params, dataset: str, size: int) -> Path:
    """The model file that generates `size`: the highres model at highres_size, else the stage-2 model."""
    stage = model_stage(p, size)
    return paths.model_file(dataset, stage, p.model_key(stage))


def model_stage(p: Params, size: int) -> str:
    """The training stage whose model generates `size` (prdit.topology: highres at highres_size, else global)."""
    return topology.sampler(size, p.preprocess.size, p.preprocess.highres_size)


def out_dir(dataset: str, size: int, shard: int | None = None, name: str | None = None) -> Path:
    """samples/<dataset>[/<experiment>]/<size>, or for one shard samples/<dataset>[/<experiment>]/<size>.shards/<shard>."""
    base = paths.samples(dataset, size, name)
    return base if shard is None else paths.shards(base) / str(shard)


MONTAGE_ROWS = viz.MONTAGE_VOLUMES


def montage_from_files(folder: Path, n: int, window: tuple[float, float]) -> None:
    """montage.png of the first samples as written (so every way of producing a folder draws the same)."""
    previews = [
        hu.to_unit(io.read_nifti(folder / f"{i}.nii.gz")[0], window) for i in range(min(MONTAGE_ROWS, n))
    ]
    viz.montage(previews, folder / "montage.png", titles=[f"sample {i}" for i in range(len(previews))])


def link(src: Path, dst: Path) -> None:
    """Hard-link src to dst (a copy across filesystems): the source stays until the destination is whole."""
    try:
        dst.hardlink_to(src)
    except OSError:
        shutil.copy2(src, dst)


def _marker(partial: Path, idx: list[int]) -> Path:
    return partial / f"batch_{idx[0]}.done"


def _batch_done(partial: Path, idx: list[int]) -> bool:
    """A batch is done when its marker (written after its files) and every one of its files exist."""
    return _marker(partial, idx).is_file() and all((partial / f"{i}.nii.gz").is_file() for i in idx)


def sample_manifest(p: Params, dataset: str, size: int, shard: int | None, device: torch.device) -> dict:
    """What the files of a sampling run depend on: its partial folder is reused only if this is unchanged."""
    return {
        "model": content_hash(model_path(p, dataset, size)),
        "size": size,
        "shard": shard,
        "device": device.type,
        "params": p.used("sample", dataset),
    }


def open_partial(partial: Path, manifest: dict) -> None:
    """Make `partial` the folder of this run: keep it if its manifest.json is `manifest`, else start over.

    The manifest names what the files depend on (model content, sampling and diffusion parameters,
    protocol, size, shard, device), so batches drawn under other settings are never mixed in.
    """
    manifest = json.loads(json.dumps(manifest, default=str))  # as it reads back
    if partial.exists():
        try:
            old = json.loads((partial / "manifest.json").read_text())
        except (OSError, ValueError):
            old = None
        if old == manifest:
            return
        changed = sorted(k for k in set(old or {}) | set(manifest) if (old or {}).get(k) != manifest.get(k))
        log.warning("%s was drawn with other %s: starting over", partial, ", ".join(changed) or "settings")
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    io.write_json(partial / "manifest.json", manifest)


def run(p: Params, dataset: str, size: int, shard: int | None = None) -> int:
    """Write p.sample.n volumes to samples/<dataset>/<size>/<i>.nii.gz (HU, spacing fov/size mm); exit status.

    Finished batches are kept in samples/<dataset>/<size>.partial/ (paths.partial) as they are written; a
    re-run with the same model and settings draws only the missing ones, so a killed job loses at most
    the batch in progress. SIGTERM/SIGUSR1 (SLURM's warning) stops after the current batch with exit
    status 75 (signals.EXIT_REQUEUE: rerun to resume). When every batch is there the folder, with
    montage.png (mid-slices of the first samples), replaces samples/<dataset>/<size>/ atomically and the
    partial folder goes. With `shard` (0 <= shard < sample.shards) only that shard's batches are drawn,
    into samples/<dataset>/<size>.shards/<shard>/ without a montage; `prdit merge-samples` joins the shards.
    """
    device, why = select_device()  # a requested but unusable GPU stops here, before any file is touched
    with StopRequest() as stop:
        return _run_sample(p, dataset, size, shard, stop, device, why)


def _run_sample(
    p: Params,
    dataset: str,
    size: int,
    shard: int | None,
    stop: StopRequest,
    device: torch.device,
    why: dict[str, str],
) -> int:
    stage = model_stage(p, size)
    path = paths.model_file(dataset, stage, p.model_key(stage))
    s, n = p.sample, p.sample.n
    batches = shard_batches(n, s.batch_size, s.shards, shard)
    numerics = p.conventions.sampling
    precision.set_backends(numerics, device)
    # the stage-2 (or highres) model at this size, before anything is written: a copied stage-1 file is named
    if not path.is_file():
        experiment = f" --experiment {p.exp_name}" if p.exp_name else ""
        raise MissingInputError(
            f"{path}: model file not found (run `prdit train --dataset {dataset} --stage {stage}{experiment}` first)"
        )
    model = _sampling_model(path, stage, size, device, numerics)
    seeds = sample_seeds(s.seed, n)
    options = SamplerOptions(
        steps=s.steps,
        k=s.k,
        grid=p.conventions.sampler_grid,
        timesteps=p.diffusion.timesteps,
        noise_std=p.diffusion.noise_std,
        amp_dtype=precision.autocast_dtype(numerics, device),
    )
    spacing = (p.preprocess.fov_mm / size,) * 3
    dest = out_dir(dataset, size, shard, p.exp_name)
    partial = paths.partial(dest)
    open_partial(partial, sample_manifest(p, dataset, size, shard, device))
    todo = [idx for idx in batches if not _batch_done(partial, idx)]
    with tracking.stage_run(
        p, stage="sample", dataset=dataset, size=size, used=p.used("sample", dataset)
    ) as run:
        tracking.log_split(run, p, dataset, size, "train", "training")  # what the sampled model learned from
        announce(run, describe_device(device, why, numerics))
        run.log_params(
            {
                "model_file": str(path),
                "model": getattr(model, "spec", {}).get("name", "?"),
                "shard": "all" if shard is None else f"{shard}/{s.shards}",
            }
        )
        kept = len(batches) - len(todo)
        log.info("%s: %d of %d batches already done, drawing %d", partial, kept, len(batches), len(todo))
        drawn = 0
        for idx in todo:
            if stop.requested:
                break
            x = sample(
                model,
                (len(idx), model.in_channels, size, size, size),
                options,
                seeds=[seeds[i] for i in idx],
                device=device,
                progress_desc=f"sample {dataset}/{size} {idx[0]}-{idx[-1]}",
            )
            for i, vol in zip(idx, x[:, 0].cpu().numpy()):
                io.write_nifti(partial / f"{i}.nii.gz", hu.to_hu(vol, p.preprocess.window), spacing)
            io.write_json(_marker(partial, idx), {"samples": idx})
            drawn += 1
            run.log_metrics({"batches_drawn": drawn, "batches_done": kept + drawn}, step=kept + drawn)
        log.info("drew %d of %d batches (%d already done)", drawn, len(batches), kept)
        if kept + drawn < len(batches):
            log.warning(
                "stop signal %s: %d of %d batches kept in %s, exit status %d (rerun to resume)",
                stop.signum,
                kept + drawn,
                len(batches),
                partial,
                stop.exit_status,
            )
            run.set_tags({"prdit.exit": "requeue"})
            return stop.exit_status
        _publish(partial, dest, batches, p.preprocess.window if shard is None else None)
        log.info("wrote %d samples to %s", sum(map(len, batches)), dest)
        if shard is None:
            run.log_image(dest / "montage.png", artifact_path="montages")
    return EXIT_OK


def _sampling_model(
    path: Path, stage: str, size: int, device: torch.device, numerics: precision.Precision
) -> torch.nn.Module:
    """The model file's network in eval mode on `device`, with the reference's bf16 attention kernels
    when the protocol's numerics ask for them."""
    model = load(path, map_location=device, stage=stage, input_size=size).eval()
    if numerics.attention is not None:  # the reference: bf16 attention kernels inside an fp32 network
        from prdit.model.layers import set_attention_kernel_dtype

        set_attention_kernel_dtype(model, numerics.attention)
    return model


def _publish(
    partial: Path, dest: Path, batches: list[list[int]], montage_window: Sequence[float] | None
) -> None:
    """Every batch's files become `dest` at once (hard links, then the partial folder goes); with a
    `montage_window` (a whole run, not a shard) montage.png is drawn beside them first."""
    with io.atomic_dir(dest) as tmp:
        for i in (i for idx in batches for i in idx):
            link(partial / f"{i}.nii.gz", tmp / f"{i}.nii.gz")
        if montage_window is not None:
            montage_from_files(tmp, sum(map(len, batches)), montage_window)
    shutil.rmtree(partial)
