"""The training feed moves float16 (the cache's dtype) and the step converts on the device: the loss is the
float32 loader's to the bit, and `prdit plan` counts the loader's host memory as the loader holds it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from prdit import paths
from prdit.config import deep_merge
from prdit.data.dataset import VolumeDataset
from prdit.plan.cost import GIB, HOST_BASE_GIB, train_job
from prdit.plan.gpus import GPUS
from prdit.plan.steps import micro_batch
from prdit.stages._models import build, volume_dataset
from prdit.stages.train import job_from_params
from prdit.train import data
from prdit.train.engine import diffusion_loss, fit
from tests.support.project import params_with

DS, SIZE = "d", 16


def _cache(root: Path, n: int) -> list[Path]:
    """`n` float16 cases of random values in [-1, 1], drawn in float32 and rounded as preprocessing does."""
    (root / "data/splits" / DS).mkdir(parents=True)
    cases = [f"c{i}" for i in range(n)]
    (root / "data/splits" / DS / "train.txt").write_text("".join(f"{c}\n" for c in cases))
    folder = root / "data/processed" / DS / str(SIZE)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    files = []
    for c in cases:
        np.save(folder / f"{c}.npy", (rng.random((SIZE,) * 3, np.float32) * 2 - 1).astype(np.float16))
        files.append(folder / f"{c}.npy")
    return files


def test_loader_yields_float16_and_its_host_bytes_are_the_plans(tmp_path: Path) -> None:
    _cache(tmp_path, 3)
    ds = VolumeDataset(
        tmp_path / paths.processed(DS, SIZE), tmp_path / paths.splits(DS, "train"), SIZE, DS, "train"
    )
    batches = data.MicroBatches(start=0, global_batch=2, accum=1, rank=0, world_size=1)
    loader = data.train_loader(ds, batches, seed=0, workers=0, pin=False)
    x, pos = next(iter(loader))
    assert x.dtype == torch.float16 == data.HOST_DTYPE and tuple(x.shape) == (2, 1, SIZE, SIZE, SIZE)
    assert x.numel() * x.element_size() == data.host_bytes(0, 2, SIZE)  # one micro-batch without workers


def test_step_sees_float32_on_the_device_with_the_float32_loaders_loss(tiny_train) -> None:
    files = _cache(Path("."), 4)
    sm = build(tiny_train, DS, "local")
    job = job_from_params(tiny_train, DS, "local", sm.parents).with_settings(
        steps=2, preview_n=0, grad_accum=1
    )
    stream = data.SampleStream(volume_dataset(DS, SIZE, "train"), job.common.seed)
    assert stream.dataset[0].dtype == torch.float16  # what the host holds and copies to the device
    inner = diffusion_loss(job)
    seen: list[tuple[torch.dtype, torch.device, torch.Tensor, torch.Tensor]] = []

    def recording(model, x0, positions, s):  # noqa: ANN001 - the LossFn signature
        loss, parts = inner(model, x0, positions, s)
        # today's path: the cache read as float32 on the host (np.asarray(..., float32), as before)
        old = torch.stack(
            [torch.from_numpy(np.load(files[stream.index(q)]).astype(np.float32))[None] for q in positions]
        )
        seen.append((x0.dtype, x0.device, loss.detach(), inner(model, old, positions, s)[0].detach()))
        return loss, parts

    assert fit(job, sm, stream.dataset, None, loss_fn=recording) == 0
    assert len(seen) == 2
    for dtype, device, loss, old in seen:
        assert dtype == torch.float32 and device == torch.device("cpu")
        # float16 -> float32 is exact (float16's values are a subset of float32's), so the network sees
        # the same numbers and computes the same loss bit for bit: no tolerance
        assert torch.equal(loss, old)


def test_plan_host_memory_is_the_loaders_float16_batches_in_flight(tiny_train) -> None:
    p = params_with(deep_merge(tiny_train.raw, {"train": {"common": {"num_workers": 3}}}))
    job = train_job(p, DS, "local", GPUS["h100"])
    micro = micro_batch(p, "local", 1, estimate=False).micro
    in_flight = 3 * data.PREFETCH + 1
    assert job.host_mem_gib == HOST_BASE_GIB + in_flight * micro * SIZE**3 * 2 / GIB
