"""Sampler oracle tests: models that return the exact posterior (eps, x0) of a known data set."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import pytest
import torch

import prdit.diffusion as D
from prdit.model import create
from tests.support.oracles import STD, GaussianOracle, MixtureOracle, T
from tests.support.project import params_with


@pytest.mark.parametrize("k", [1, 2, 4])
def test_generated_gaussian_matches_the_data_statistics(k):
    """Mean within 0.01 (sampling error ~0.001); std within 1.5% x k (the Euler jump's error grows with k)."""
    y = D.sample(
        GaussianOracle(0.3, 0.2), (8, 1, 16, 16, 16), D.SamplerOptions(steps=200, k=k), seeds=range(8)
    )
    assert abs(y.mean().item() - 0.3) < 0.01
    assert abs(y.std().item() / 0.2 - 1) < 0.015 * k


@pytest.mark.parametrize("k", [1, 2, 4])
def test_sampler_recovers_the_data_volumes_in_their_proportions(k):
    vols = torch.rand(3, 1, 8, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    y = D.sample(MixtureOracle(vols), (60, 1, 8, 8, 8), D.SamplerOptions(steps=25, k=k), seeds=range(60))
    rms = (y[:, None] - vols[None]).square().flatten(2).mean(-1).sqrt()
    nearest, which = rms.min(1)
    assert nearest.max() < 0.01  # every sample is (almost exactly) one of the data volumes
    counts = torch.bincount(which, minlength=3)
    assert counts.min() >= 8, counts  # each of 3 equally likely volumes: 20 +- 3.7 expected of 60


def test_corrector_lands_on_the_marginal_of_the_next_step():
    # exact algebra for many angle pairs: signal cos b_{t-1}, noise variance sin^2 b_{t-1}
    for bt, bj in [(0.3, 0.1), (1.2, 0.9), (1.55, 0.2), (0.01, 0.0)]:
        g = D.corrector_gamma(bt, bj)
        assert g * math.cos(bj) == pytest.approx(math.cos(bt), abs=1e-12)
        assert g**2 * math.sin(bj) ** 2 + (1 - g**2) == pytest.approx(math.sin(bt) ** 2, abs=1e-12)
    # and empirically, as the sampler applies it
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(1 << 20, generator=gen) * 2 - 1
    bt, bj = 0.8, 0.5
    xj = math.cos(bj) * x0 + math.sin(bj) * STD * torch.randn(x0.shape, generator=gen)
    g = D.corrector_gamma(bt, bj)
    y = g * xj + math.sqrt(1 - g**2) * STD * torch.randn(x0.shape, generator=gen)
    coef = (y * x0).mean() / x0.square().mean()
    assert coef.item() == pytest.approx(math.cos(bt), abs=0.003)
    assert (y - math.cos(bt) * x0).std().item() == pytest.approx(STD * math.sin(bt), rel=0.003)


def test_sample_i_does_not_depend_on_the_batch():
    oracle = GaussianOracle(0.0, 0.4)
    batch = D.sample(oracle, (3, 1, 8, 8, 8), D.SamplerOptions(steps=10, k=2), seeds=[11, 12, 13])
    alone = D.sample(oracle, (1, 1, 8, 8, 8), D.SamplerOptions(steps=10, k=2), seeds=[12])
    assert torch.equal(batch[1:2], alone)
    other = D.sample(oracle, (1, 1, 8, 8, 8), D.SamplerOptions(steps=10, k=2), seeds=[99])
    assert not torch.equal(other, alone)


def test_sample_i_does_not_depend_on_the_batch_with_a_network():
    model = create("PRDiT-T/8/1", 16).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    batch = D.sample(model, (3, 1, 16, 16, 16), D.SamplerOptions(steps=4, k=2), seeds=[1, 2, 3])
    alone = D.sample(model, (1, 1, 16, 16, 16), D.SamplerOptions(steps=4, k=2), seeds=[3])
    # batched and single matmuls sum in another order in each of the ~10 layers of 4 steps: a few hundred
    # float32 ulps (2^-24 ~ 6e-8) of values of order 1, not a machine's luck
    torch.testing.assert_close(batch[2:], alone, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("steps,k", [(1, 1), (1, 3), (7, 2), (13, 5)])
def test_any_step_count_and_jump(steps, k):
    y = D.sample(
        MixtureOracle(torch.ones(1, 1, 4, 4, 4) * 0.5),
        (2, 1, 4, 4, 4),
        D.SamplerOptions(steps=steps, k=k),
        seeds=[0, 1],
    )
    assert y.shape == (2, 1, 4, 4, 4) and torch.isfinite(y).all()


def test_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError, match="k must be"):
        D.sample(GaussianOracle(0, 1), (1, 1, 4, 4, 4), D.SamplerOptions(steps=5, k=0))
    with pytest.raises(ValueError, match="seeds"):
        D.sample(GaussianOracle(0, 1), (2, 1, 4, 4, 4), D.SamplerOptions(steps=5), seeds=[1])


def test_trajectory_is_written_every_n_steps(tmp_path):
    y = D.sample(
        GaussianOracle(0.0, 0.3),
        (2, 1, 8, 8, 8),
        D.SamplerOptions(steps=10, k=2),
        seeds=[0, 1],
        trajectory=D.Trajectory(tmp_path, every=3),
    )
    files = sorted(tmp_path.glob("step_*.pt"))
    assert [f.name for f in files] == ["step_00003.pt", "step_00006.pt", "step_00009.pt", "step_00010.pt"]
    states = [torch.load(f, weights_only=True) for f in files]
    assert [s["t"] for s in states] == [700, 400, 100, 0]
    assert torch.equal(states[-1]["x_t"], y) and states[0]["x0_hat"].shape == y.shape


_MEMORY_PROBE = textwrap.dedent(
    """
    import resource, sys, torch
    import prdit.diffusion as D
    torch.set_num_threads(1)  # tiny tensors: threads only add contention on a shared machine
    def model(x, t):  # cheap voxel-wise stand-in for a network
        return torch.cat([x * 0.5, x * 0.1], 1)
    D.sample(model, (2, 1, 32, 32, 32), D.SamplerOptions(steps=int(sys.argv[1]), k=2), seeds=[0, 1])
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    """
)


def test_sampling_memory_does_not_grow_with_the_number_of_steps():
    def peak_kib(steps):
        out = subprocess.run(
            [sys.executable, "-c", _MEMORY_PROBE, str(steps)], check=True, capture_output=True, text=True
        )
        return int(out.stdout.split()[-1])

    short, long = peak_kib(50), peak_kib(1000)
    # one state is 256 KiB: keeping the trajectory would add ~250 MiB over 1000 steps
    assert long - short < 16 * 1024, (short, long)


@pytest.fixture
def sampling(tmp_path, monkeypatch):
    """An empty project folder holding a random 16^3 stage-2 model; returns sample-params(**sample)."""
    from prdit.model import save

    monkeypatch.chdir(tmp_path)
    model = create("PRDiT-T/8/1", 16)
    with torch.no_grad():
        for q in model.parameters():
            q.normal_(0, 0.02)
    save(tmp_path / "models/phantom/global/model.pt", model, meta={})
    base = {"preprocess": {"size": 16, "highres_size": None, "fov_mm": 256.0}}
    return lambda **sample: params_with({**base, "sample": {"steps": 3, "k": 2, **sample}})


def test_run_sample_writes_hu_volumes_independent_of_batch_size(tmp_path, sampling):
    from prdit.io import read_nifti
    from prdit.stages.sample import run as run_sample

    vols = {}
    for bs in (1, 3):
        p = sampling(n=3, batch_size=bs)
        run_sample(p, "phantom", 16)
        out = tmp_path / "samples/phantom/16"
        assert sorted(f.name for f in out.iterdir()) == ["0.nii.gz", "1.nii.gz", "2.nii.gz", "montage.png"]
        vols[bs] = [read_nifti(out / f"{i}.nii.gz") for i in range(3)]
    for (a, spacing), (b, _) in zip(vols[1], vols[3]):
        assert spacing == pytest.approx((16.0, 16.0, 16.0)) and a.shape == (16, 16, 16)
        assert -1000 <= a.min() and a.max() <= 1000
        assert (
            abs(a - b).max() < 0.1
        )  # HU = 1e-4 in model space: float rounding of batched matmuls only (as above)
    assert abs(vols[1][0][0] - vols[1][1][0]).max() > 1  # different seeds, different samples
    with pytest.raises(ValueError, match="size 24"):
        run_sample(p, "phantom", 24)


def test_shard_batches_split_whole_batches():
    from prdit.diffusion.batches import shard_batches

    assert shard_batches(5, 2) == [[0, 1], [2, 3], [4]]
    assert [shard_batches(5, 2, 3, k) for k in range(3)] == [[[0, 1]], [[2, 3]], [[4]]]
    parts = [shard_batches(9, 2, 2, k) for k in range(2)]
    assert parts == [[[0, 1], [2, 3]], [[4, 5], [6, 7], [8]]]
    with pytest.raises(ValueError, match="shard 3"):
        shard_batches(5, 2, 3, 3)
    with pytest.raises(ValueError, match="exceeds"):
        shard_batches(4, 2, 3, 0)


def test_sharded_sampling_writes_the_same_bytes_as_one_job(tmp_path, sampling):
    from prdit import config
    from prdit.errors import PrditError
    from prdit.stages.merge_samples import run as merge_samples
    from prdit.stages.sample import run as run_sample

    one = sampling(n=5, batch_size=2, shards=1)
    run_sample(one, "phantom", 16)
    out = tmp_path / "samples/phantom/16"
    ref = {f.name: f.read_bytes() for f in out.iterdir()}
    assert sorted(ref) == ["0.nii.gz", "1.nii.gz", "2.nii.gz", "3.nii.gz", "4.nii.gz", "montage.png"]

    three = sampling(n=5, batch_size=2, shards=3)
    for k in (2, 0, 1):
        run_sample(three, "phantom", 16, shard=k)
    shard_files = {
        k: sorted(f.name for f in (tmp_path / f"samples/phantom/16.shards/{k}").iterdir()) for k in range(3)
    }
    assert shard_files == {0: ["0.nii.gz", "1.nii.gz"], 1: ["2.nii.gz", "3.nii.gz"], 2: ["4.nii.gz"]}
    union = {
        f.name: f.read_bytes()
        for k in range(3)
        for f in (tmp_path / f"samples/phantom/16.shards/{k}").iterdir()
    }
    assert union == {name: data for name, data in ref.items() if name != "montage.png"}

    import shutil

    shutil.rmtree(out)
    merge_samples(three, "phantom", 16)
    assert {f.name: f.read_bytes() for f in out.iterdir()} == ref  # montage included

    (tmp_path / "samples/phantom/16.shards/1/3.nii.gz").unlink()
    with pytest.raises(PrditError, match="shard 1/3"):
        merge_samples(three, "phantom", 16)
    assert {f.name: f.read_bytes() for f in out.iterdir()} == ref  # a failed merge leaves the old folder
    with pytest.raises(config.ConfigError, match="sample.shards"):
        sampling(n=5, batch_size=2, shards=4)


def _two_loop_sampler(model, shape, steps, k, seeds, grid, noise_std=STD):
    """The sampler as it was before the one loop (two grid loops, in-place updates), kept as the oracle."""
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    randn = lambda: torch.stack([torch.randn(tuple(shape[1:]), generator=g) for g in gens])  # noqa: E731
    x = randn().mul_(noise_std)
    ts = D.timestep_grid(steps, T) if grid == "project" else D.sampler.reference_grid(steps, T)
    beta = [t * math.pi / 2 / T for t in ts]
    for i in range(len(ts) - 1):
        out = model(x, torch.full((shape[0],), min(ts[i], T - 1), dtype=torch.long))
        eps_hat, x0_hat = out[:, :1].float(), out[:, 1:].float()
        if grid == "project":
            j = min(i + k, steps)
            b_jump, corrector = beta[j], j > i + 1
        else:
            t_jump = ts[i] - k * (ts[i] - ts[i + 1])
            corrector = k > 1 and t_jump > 0
            b_jump = t_jump * math.pi / 2 / T if corrector else beta[i + 1]
        h = beta[i] - b_jump
        x.add_(x0_hat, alpha=h * math.sin(beta[i])).sub_(eps_hat, alpha=h * math.cos(beta[i]))
        if corrector:
            gamma = math.cos(beta[i + 1]) / math.cos(b_jump)
            x.mul_(gamma).add_(randn(), alpha=noise_std * math.sqrt(max(0.0, 1 - gamma**2)))
    return x


@pytest.mark.parametrize("grid", ["project", "reference"])
@pytest.mark.parametrize("steps,k", [(1, 2), (3, 2), (7, 3), (10, 1), (26, 2), (100, 4)])
def test_one_loop_is_bit_identical_to_the_two_grid_loops(grid, steps, k):
    oracle = GaussianOracle(0.2, 0.3)
    shape, seeds = (3, 1, 4, 4, 4), [1, 7, 2**61]
    new = D.sample(oracle, shape, D.SamplerOptions(steps=steps, k=k, grid=grid), seeds=seeds)
    assert torch.equal(new, _two_loop_sampler(oracle, shape, steps, k, seeds, grid))


def test_step_plans_of_both_grids():
    from prdit.diffusion.sampler import step_plan

    assert step_plan(4, 1) == [(1000, 750, 750), (750, 500, 500), (500, 250, 250), (250, 0, 0)]
    assert step_plan(4, 2) == [(1000, 750, 500), (750, 500, 250), (500, 250, 0), (250, 0, 0)]
    # the reference: never t = T, a jump only while it stays above 0, then plain Euler steps
    assert step_plan(4, 2, "reference") == [(750, 500, 250), (500, 250, 250), (250, 0, 0)]
    assert step_plan(5, 3, "reference") == [(800, 600, 200), (600, 400, 400), (400, 200, 200), (200, 0, 0)]
    with pytest.raises(ValueError, match="grid"):
        step_plan(4, 2, "other")


def test_stacked_generator_draws_per_sample():
    from prdit.diffusion.sampler import StackedRandomGenerator

    both = StackedRandomGenerator("cpu", [3, 4]).randn((2, 1, 2, 2, 2))
    alone = StackedRandomGenerator("cpu", [4]).randn((1, 1, 2, 2, 2))
    assert torch.equal(both[1:], alone)
    with pytest.raises(ValueError, match="3 draws from 2"):
        StackedRandomGenerator("cpu", [3, 4]).randn((3, 1))


def test_reference_grid_trajectory_is_written_too(tmp_path):
    D.sample(
        GaussianOracle(0.0, 0.3),
        (1, 1, 4, 4, 4),
        D.SamplerOptions(steps=5, k=2, grid="reference"),
        seeds=[0],
        trajectory=D.Trajectory(tmp_path, every=2),
    )
    saved = {f.name: torch.load(f)["t"] for f in sorted(tmp_path.iterdir())}
    assert saved == {"step_00002.pt": 400, "step_00004.pt": 0}


def test_sampling_precision_follows_the_protocol():
    from prdit import precision

    assert precision.sampling(paper=False) == precision.training(paper=False)  # project: as it trains
    paper = precision.sampling(paper=True)  # the reference's sample.py: no autocast, no TF32 matmuls
    assert paper.autocast is None and not paper.tf32_matmul and paper.attention == torch.bfloat16
    assert precision.training(paper=True).tf32_matmul  # its train.py:479 sets "high"
    before = torch.backends.cuda.matmul.allow_tf32
    precision.set_backends(precision.sampling(paper=False), torch.device("cpu"))
    assert torch.backends.cuda.matmul.allow_tf32 == before  # on the CPU nothing changes
    assert precision.autocast_dtype(precision.sampling(paper=False), torch.device("cpu")) is None
