"""Training previews: fixed seeds, same slices, same layout, so previews differ only by the weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import prdit.model as models
from prdit.diffusion import SamplerOptions, sample
from prdit.train import stages
from prdit.train.engine import fit
from prdit.train.validate import PREVIEW_SEED, preview
from prdit.viz import montage
from tests.support.training_checks import make_job

SIZE = 16
CPU = torch.device("cpu")


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = models.create("PRDiT-T/8/0", SIZE)
    with torch.no_grad():  # the output head starts at zero: give it weights so samples show structure
        for q in model.parameters():
            if q.abs().sum() == 0:
                q.normal_(0, 0.02)
    return model


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def _kw(**kw):
    return dict(n=2, options=SamplerOptions(steps=3, k=2), device=CPU, title="t") | kw


def test_two_previews_of_one_model_are_identical_images(tmp_path: Path) -> None:
    model = _model()
    a = preview(model, SIZE, tmp_path / "a.png", **_kw())
    torch.manual_seed(123)  # the global RNG (used by training) plays no part
    torch.rand(10)
    b = preview(model, SIZE, tmp_path / "b.png", **_kw())
    assert a.read_bytes() == b.read_bytes()
    assert model.training  # the caller's mode is restored
    # the same noise per row whatever the number of rows: row 0 of a 3-row preview is row 0 of a 2-row one
    c = preview(model, SIZE, tmp_path / "c.png", **_kw(n=3))
    rows2, rows3 = _pixels(a), _pixels(c)
    assert rows3.shape[1] == rows2.shape[1] and rows3.shape[0] == rows2.shape[0] * 3 // 2
    assert np.array_equal(rows3[: rows2.shape[0]], rows2)


def test_preview_is_the_mid_slice_montage_of_seeded_samples(tmp_path: Path) -> None:
    model = _model().eval()
    vols = sample(
        model,
        (2, 1, SIZE, SIZE, SIZE),
        SamplerOptions(steps=3, k=2),
        seeds=[PREVIEW_SEED, PREVIEW_SEED + 1],
        device=CPU,
    )
    expected = montage(
        [v[0].numpy() for v in vols],
        tmp_path / "expected.png",
        titles=[f"t seed {PREVIEW_SEED + i}" for i in range(2)],
    )
    got = preview(model, SIZE, tmp_path / "got.png", **_kw())
    assert np.array_equal(_pixels(got), _pixels(expected))


def test_previews_of_different_weights_differ_in_content_not_layout(tmp_path: Path) -> None:
    a = preview(_model(0), SIZE, tmp_path / "a.png", **_kw())
    b = preview(_model(1), SIZE, tmp_path / "b.png", **_kw())
    pa, pb = _pixels(a), _pixels(b)
    assert pa.shape == pb.shape
    assert not np.array_equal(pa, pb)


def test_previews_during_training_show_the_same_samples_as_the_saved_model(tmp_path: Path) -> None:
    """preview_every: one montage per interval, all from the same seeds; the last one is reproducible."""
    torch.manual_seed(0)
    model = models.create("PRDiT-T/8/0", SIZE)
    sm = stages.StageModel(model, SIZE, [n for n, _ in model.named_parameters()])
    out = tmp_path / "run"
    job = make_job(
        out,
        steps=4,
        batch_size=2,
        lr=1e-2,
        ema_decay=0.5,
        log_every=1,
        checkpoint_every=100,
        val_every=100,
        preview_every=2,
        preview_n=2,
        preview_steps=3,
        preview_k=2,
    )
    g = torch.Generator().manual_seed(0)
    vols = [torch.rand(1, SIZE, SIZE, SIZE, generator=g) * 2 - 1 for _ in range(4)]
    assert fit(job, sm, vols, None) == 0
    shots = sorted((out / "previews").glob("step_*.png"))
    assert [p.name for p in shots] == ["step_0000002.png", "step_0000004.png"]
    p2, p4 = _pixels(shots[0]), _pixels(shots[1])
    assert p2.shape == p4.shape  # same layout
    assert not np.array_equal(p2, p4)  # different weights, different pictures
    # the final preview is exactly what the saved EMA model gives with the preview's fixed seeds
    saved = models.load(out / "model.pt")
    again = preview(saved, SIZE, tmp_path / "again.png", **_kw(title="local step 4"))
    assert again.read_bytes() == shots[1].read_bytes()
    assert json.loads((out / "metrics.json").read_text())["steps"] == 4
