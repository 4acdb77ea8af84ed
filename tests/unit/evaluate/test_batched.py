"""Evaluation at scale: batched MS-SSIM and batched features give the numbers of the per-pair / per-volume path.

Every tolerance here is derived from float rounding (u = 2^-24, the float32 unit roundoff), not taken
from one machine's output; each comment says where it comes from.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from prdit.evaluate.extractor import build_extractor, extract_features
from prdit.evaluate.features import Extractor, summarise
from prdit.evaluate.fid import fid
from prdit.evaluate.metrics import METRICS, docs_rows
from prdit.evaluate.ms_ssim import (
    ms_ssim,
    ms_ssim_batch,
    pair_flops,
    pair_indices,
    pairwise_values,
    scales_for,
)
from prdit.evaluate.run import EvalSettings
from prdit.evaluate.volumes import VolumeBank, read_volume, sample_paths
from tests.support.evaluation import SIZE, WINDOW, score_toy

U32 = 2.0**-24  # float32 unit roundoff
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def ms_ssim_rtol(size: int) -> float:
    """Relative bound on |batched - per pair| for one MS-SSIM value of `size`^3 volumes.

    Both paths do the same element-wise float32 operations in the same order (the shifted-sum blur,
    moments, maps, average pooling); only the voxel means may be summed in another order (batch shape,
    device). A pairwise or blocked sum of N terms is off by at most log2(N) u relative for terms of one
    sign (the maps of the correlated volumes below are positive). MS-SSIM = prod v_i^w_i with sum w_i = 1
    carries a relative error of each v_i through with weight w_i (so at most the largest, log2(N) u),
    plus one rounding per power and product (2 per scale) and the final float32 rounding.
    """
    return (math.log2(size**3) + 2 * scales_for(size) + 1) * U32


def _volumes(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """Correlated [-1, 1] volumes: a shared smooth field plus a small independent part each."""
    rng = np.random.default_rng(seed)
    base = torch.nn.functional.avg_pool3d(
        torch.from_numpy(rng.normal(size=(1, size + 3, size + 3, size + 3))), 4
    )
    base = base[0].numpy()
    return [np.clip(base + 0.1 * rng.normal(size=base.shape), -1, 1).astype(np.float32) for _ in range(n)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size", [20, 32])  # 3 and 4 scales
def test_ms_ssim_batch_matches_the_per_pair_definition(size, device):
    vols = _volumes(6, size)
    pairs = pair_indices(len(vols), 10, seed=1)
    reference = np.array([ms_ssim(vols[i], vols[j]) for i, j in pairs])
    tol = ms_ssim_rtol(size) * np.abs(reference)
    for chunk in (1, 4, len(pairs)):  # chunking only splits the batch
        batched = pairwise_values(vols, pairs, device=device, chunk=chunk)
        assert batched.shape == reference.shape
        np.testing.assert_array_less(np.abs(batched - reference), tol + np.finfo(np.float32).tiny)
    a = torch.from_numpy(np.stack([vols[i] for i, _ in pairs])).to(device)
    assert ms_ssim_batch(a, a).cpu().numpy() == pytest.approx(1.0, abs=ms_ssim_rtol(size))


def test_ms_ssim_batch_rejects_what_ms_ssim_rejects():
    with pytest.raises(ValueError, match="smaller than the 3-voxel SSIM window"):
        ms_ssim_batch(torch.zeros(2, 2, 2, 2), torch.zeros(2, 2, 2, 2))
    with pytest.raises(ValueError, match="one shape"):
        ms_ssim_batch(torch.zeros(2, 8, 8, 8), torch.zeros(2, 8, 8, 4))


def test_pair_flops_is_flop_counter_mode_on_the_batched_function():
    size, batch = 24, 3
    a = torch.zeros(batch, size, size, size)
    with FlopCounterMode(display=False) as counter:
        ms_ssim_batch(a, a, blur="conv")
    assert counter.get_total_flops() == batch * pair_flops(size)
    # by hand: 5 moment maps x 3 separable passes x 2k FLOPs per output voxel, at every scale
    k, expected = 3, 0
    for s in range(scales_for(size)):
        n = size // 2**s
        m = n - k + 1
        expected += 5 * 2 * k * (m * n * n + m * m * n + m * m * m)
    assert pair_flops(size) == expected


def test_the_conv_blur_is_the_same_filter():
    """The FLOP-counted conv path and the shifted sums filter alike (the blur itself: 3 k-term sums of
    values in [0, 1] with weights summing to 1, so each differs from the exact value by at most 3k u)."""
    from prdit.evaluate.ms_ssim import _blur, _blur_conv, _window

    x = torch.from_numpy(np.stack(_volumes(2, 16)))[:, None].add(1).div(2)
    w = _window(3, 1.5)
    assert (_blur(x, w) - _blur_conv(x, w)).abs().max() <= 2 * 3 * 3 * U32


def test_volume_bank_keeps_float32_volumes_unchanged():
    bank = VolumeBank("cpu")
    vols = _volumes(2, 8)
    for v in vols:
        bank.append(v)
    assert all(t.dtype == torch.float32 and np.array_equal(t.numpy(), v) for t, v in zip(bank, vols))


def _feature_rtol(model: torch.nn.Module) -> float:
    """Relative bound (to the largest feature) on batched - per-volume features.

    Batch size can change the convolution algorithm and so the order of each output's K-term float32
    accumulation; the rounding of a K-term dot product is about sqrt(K) u relative (Higham, Accuracy and
    Stability, 2.8, the probabilistic bound), and each of the network's conv layers adds its own: at
    most (number of convs) x sqrt(largest fan-in) x u, carried to the pooled features.
    """
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv3d)]
    fan_in = max(m.in_channels // m.groups * math.prod(m.kernel_size) for m in convs)
    return len(convs) * math.sqrt(fan_in) * U32


def _fid_bound(x: np.ndarray, y: np.ndarray, delta: float) -> float:
    """First-order bound on |FID(x + dx, y + dy) - FID(x, y)| for |dx|, |dy| <= delta element-wise.

    FID = |mu_x - mu_y|^2 + |A|_F^2/(n-1) + |B|_F^2/(m-1) - 2 |A B^T|_* / sqrt((n-1)(m-1)) with A, B the
    centred features; a centred perturbation is at most 2 delta per element, and |P Q^T|_* <= sqrt(r)
    |P|_F |Q|_F (r = min(n, m)).
    """
    (n, d), m = x.shape, y.shape[0]
    a, b = x - x.mean(0), y - y.mean(0)
    da, db, dmu = 2 * delta * math.sqrt(n * d), 2 * delta * math.sqrt(m * d), 2 * delta * math.sqrt(d)
    fa, fb = np.linalg.norm(a), np.linalg.norm(b)
    r = min(n, m)
    return (
        2 * np.linalg.norm(x.mean(0) - y.mean(0)) * dmu
        + 2 * fa * da / (n - 1)
        + 2 * fb * db / (m - 1)
        + 2 * math.sqrt(r) * (da * fb + fa * db) / math.sqrt((n - 1) * (m - 1))
    )


def test_evaluate_gives_the_per_pair_and_per_volume_numbers(toy_eval):
    """score() (volumes read once, MS-SSIM batched, features in batches) against the old path: every pair
    re-read from disk and scored by `ms_ssim`, every volume's features extracted alone."""
    s = score_toy(EvalSettings(WINDOW, ms_ssim_pairs=4, bootstrap=0, seed=0))
    gen_paths = [p for p in sample_paths(toy_eval / f"samples/toy/{SIZE}") if p.stem != "6.nii"]
    train_paths = [toy_eval / f"data/processed/toy/{SIZE}/{c}.nii.gz" for c in s.train.ids]
    for key, paths, kind, n_pairs in (
        ("generated", gen_paths, "generated", 4),
        ("floor", train_paths, "real", 4),
    ):
        vals = np.array(
            [
                ms_ssim(read_volume(paths[i], SIZE, kind, WINDOW), read_volume(paths[j], SIZE, kind, WINDOW))
                for i, j in pair_indices(len(paths), n_pairs, 0)
            ]
        )
        mean, sd, n = s.diversity[key]
        assert n == len(vals)
        # each value within ms_ssim_rtol; a mean and a standard deviation move by at most the largest
        # change of one value (sd is 1-Lipschitz in the max norm); float64 rounding of both is far below.
        bound = ms_ssim_rtol(SIZE) * np.abs(vals).max()
        assert abs(mean - vals.mean()) <= bound and abs(sd - vals.std()) <= bound

    model, _ = build_extractor(None)
    one_by_one, delta = {}, 0.0
    for summary, paths, kind in ((s.generated, gen_paths, "generated"), (s.train, train_paths, "real")):
        assert summary.ids == [p.name.removesuffix(".nii.gz") for p in paths]
        f = np.concatenate(
            [extract_features(model, [read_volume(p, SIZE, kind, WINDOW)], batch_size=1) for p in paths]
        )
        bound = _feature_rtol(model) * np.abs(f).max()
        assert np.abs(summary.features - f).max() <= bound
        one_by_one[kind], delta = f, max(delta, bound)
    train_f, gen_f = one_by_one["real"], one_by_one["generated"]
    assert abs(s.scores["fid"] - fid(train_f, gen_f)) <= _fid_bound(train_f, gen_f, delta)


def test_summarise_keeps_each_volume_it_read(toy_eval):
    model, info = build_extractor(None)
    paths = sample_paths(toy_eval / f"samples/toy/{SIZE}")
    kept: list = []
    read = partial(read_volume, size=SIZE, kind="generated", window=WINDOW)
    summary = summarise(
        paths, [p.name for p in paths], WINDOW, Extractor(model, info), [], read=read, keep=kept
    )
    assert len(kept) == len(summary.ids) == len(paths) - 1  # 6.nii.gz has the wrong size
    ok = [p for p in paths if p.name in summary.ids]
    assert all(np.array_equal(k, read_volume(p, SIZE, "generated", WINDOW)) for k, p in zip(kept, ok))


def test_the_docs_metrics_table_lists_every_declared_metric():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[3] / "prdit/evaluate/README.md").read_text().splitlines()
    table = [ln for ln in readme if ln.startswith("| `")]
    assert table[: len(METRICS)] == docs_rows()  # python -m prdit.evaluate.metrics prints them
