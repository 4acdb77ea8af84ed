"""`protocol: paper`: the reference implementation's conventions, pinned on small inputs.

The expected preprocessing figures in tests/fixtures/paper_recipe_reference.json were computed once, outside
this repository, by running the reference code's own functions (github Fredy-Zhang/PRDiT; the file names
which) on the volumes of tests/support/paper_volumes.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch

import prdit.model as models
from prdit import protocol
from prdit.acquire.weights import PaperWeightsError
from prdit.config import ConfigError, load
from prdit.data.preprocess import cubes_reference
from prdit.data.splits import assign_paper
from prdit.evaluate.extractor import ExtractorInfo
from prdit.evaluate.run import EvalSettings
from prdit.model.layers import Attention
from prdit.stages import _models
from prdit.stages.evaluate import protocol_fields, settings
from prdit.stages.fetch_weights import run as run_fetch_weights
from prdit.stages.preprocess import run as run_preprocess
from prdit.stages.train import job_from_params
from prdit.train.engine import fit
from tests.support import paper_volumes as pv
from tests.support.evaluation import evaluate_toy

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = json.loads((Path(__file__).parents[1] / "fixtures" / "paper_recipe_reference.json").read_text())
F16 = 2.0**-12 + 1e-6  # float16 rounding of values in [-1, 1] (half a unit in the last place at 0.5..1)


def assert_matches(v: np.ndarray, fig: dict, tol: float) -> None:
    """v ([z, y, x]) agrees with the reference's figures to `tol` at every recorded number."""
    assert list(v.shape) == fig["shape"]
    v = v.astype(np.float64)
    got = v[tuple(pv.probe_indices(v.shape[0]).T)]
    assert np.abs(got - np.array(fig["probe_values"])).max() <= tol
    assert np.abs(v.mean(axis=(1, 2)) - np.array(fig["slice_means_z"])).max() <= tol
    for key in ("mean", "std", "min", "max"):
        assert float(getattr(v, key)()) == pytest.approx(fig[key], abs=tol), key


def write_lidc_nifti(path: Path, vol_zyx: np.ndarray, spacing_xyz) -> None:
    sx, sy, sz = spacing_xyz
    nib.save(nib.Nifti1Image(vol_zyx.transpose(2, 1, 0), np.diag([-sx, -sy, sz, 1.0])), path)


def test_paper_preprocessing_equals_the_reference_recipe_and_rejects_a_200_mm_case(tmp_path, monkeypatch):
    """`protocol: paper` alone (preprocess.mode left at default) runs the reference recipe."""
    monkeypatch.setenv("PRDIT_TRACKING", "off")
    monkeypatch.chdir(tmp_path)
    interim = tmp_path / "data" / "interim" / "t"
    interim.mkdir(parents=True)
    write_lidc_nifti(interim / "case.nii.gz", pv.lidc_zyx(), pv.LIDC_SPACING_XYZ)
    short = pv.chest_zyx((80, 130, 130), seed=3)  # z: 80 x 2.5 mm = 200 mm long
    write_lidc_nifti(interim / "short.nii.gz", short, (2.0, 2.0, 2.5))
    pd.DataFrame({"case": ["case", "short"], "patient_id": ["case", "short"], "status": ["ok", "ok"]}).to_csv(
        interim / "qc.csv", index=False
    )
    over = {
        "protocol": "paper",
        "datasets": ["t"],
        "sources": {"t": {"format": "nifti", "path": "raw", "download": "none"}},
        "preprocess": {"size": 128, "highres_size": 256},
    }
    p = load(ROOT / "params.yaml", overrides=over)
    assert p.preprocess.mode == "default"
    assert run_preprocess(p, "t") == 0
    out = tmp_path / "data" / "processed" / "t"
    qc = pd.read_csv(out / "qc.csv", keep_default_na=False).set_index("case")
    assert qc.loc["case", "status"] == "ok" and qc.loc["case", "mode"] == "reference"
    assert qc.loc["short", "status"] == "rejected"
    reason = qc.loc["short", "reason"]
    assert "under 256 mm" in reason and "z is 200 mm" in reason
    assert not (out / "128" / "short.npy").exists()
    for size in (128, 256):
        cache = np.load(out / str(size) / "case.npy")
        assert cache.dtype == np.float16
        assert_matches(cache, FIXTURE[f"lidc_{size}"], F16)
        stored = sitk.ReadImage(str(out / str(size) / "case.nii.gz"))
        assert stored.GetSpacing() == pytest.approx((256 / size,) * 3)
        assert_matches(sitk.GetArrayFromImage(stored), FIXTURE[f"lidc_{size}"], 5e-4 + 1e-6)  # int16/1000


def test_reference_preprocessing_of_rad_chestct_in_both_ranges():
    image = sitk.GetImageFromArray(pv.rad_zyx())
    image.SetSpacing((0.8, 0.8, 0.8))
    unit = cubes_reference(
        image, [128, 256], "rad-chestct", (0.0, 1.0)
    )  # the reference loader as run: [0, 1]
    signed = cubes_reference(image, [128, 256], "rad-chestct", (-1.0, 1.0))
    for size in (128, 256):
        cube, spacing, _ = unit[size]
        assert spacing == pytest.approx(0.8 * 256 / size)
        assert_matches(cube, FIXTURE[f"rad_{size}"], 1e-5)
        np.testing.assert_allclose(signed[size][0], 2 * cube - 1, atol=1e-6)


@pytest.mark.parametrize("recipe", ["rad-chestct", "auto"])
def test_the_dataset_not_the_file_format_chooses_the_recipe(tmp_path, monkeypatch, recipe):
    """A NIfTI export of RAD-ChestCT declared `recipe: rad-chestct` gets the RAD-ChestCT recipe (it used to
    get LIDC's, by format: a 204.8 mm cube is under LIDC's 256 mm and was rejected); `auto` keeps LIDC's."""
    monkeypatch.setenv("PRDIT_TRACKING", "off")
    monkeypatch.chdir(tmp_path)
    interim = tmp_path / "data" / "interim" / "t"
    interim.mkdir(parents=True)
    write_lidc_nifti(interim / "case.nii.gz", pv.rad_zyx(), (0.8, 0.8, 0.8))
    pd.DataFrame({"case": ["case"], "patient_id": ["case"], "status": ["ok"]}).to_csv(
        interim / "qc.csv", index=False
    )
    source = {"format": "nifti", "path": "raw", "download": "none", "recipe": recipe}
    over = {
        "protocol": "paper",
        "datasets": ["t"],
        "sources": {"t": source},
        "preprocess": {"size": 128, "highres_size": 256, "reference_range": [0.0, 1.0]},
    }
    run_preprocess(load(ROOT / "params.yaml", overrides=over), "t")
    out = tmp_path / "data" / "processed" / "t"
    qc = pd.read_csv(out / "qc.csv", keep_default_na=False).set_index("case")
    if recipe == "auto":
        assert qc.loc["case", "status"] == "rejected" and "under 256 mm" in qc.loc["case", "reason"]
        return
    assert qc.loc["case", "status"] == "ok", qc.loc["case", "reason"]
    assert_matches(np.load(out / "128" / "case.npy"), FIXTURE["rad_128"], F16)


# ---------------------------------------------------------------------------------------------
# the switch


def paper_params(**over):
    return load(ROOT / "params.yaml", overrides={"protocol": "paper", **over})


def test_protocol_is_project_by_default_and_paper_implies_the_reference_preprocessing():
    p = load(ROOT / "params.yaml")
    assert (
        p.protocol == "project" and p.conventions.preprocess_recipe is None and p.preprocess.mode == "default"
    )
    assert paper_params().conventions.preprocess_recipe == "reference"
    assert p.conventions == protocol.CONVENTIONS["project"]
    assert paper_params().conventions == protocol.CONVENTIONS["paper"]
    for stage in ("preprocess", "split", "train-local", "train-global", "sample", "evaluate"):
        assert paper_params().used(stage, "phantom")["protocol"] == "paper"
    with pytest.raises(ConfigError, match="'protocol'"):
        load(ROOT / "params.yaml", overrides={"protocol": "paperish"})


@pytest.mark.parametrize("config", ["lidc-128.yaml", "lidc-256.yaml", "rad-chestct-256.yaml"])
def test_paper_configs_read_the_weights_the_reference_readme_names(config):
    p = load([ROOT / "params.yaml", ROOT / "configs" / config])
    assert p.protocol == "paper"
    assert Path(p.evaluate.weights).name == "resnet_50.pth"


def test_paper_protocol_refuses_other_weights_and_has_no_silent_substitute(tmp_path):
    from prdit.acquire.weights import DEFAULT_SHA256

    with pytest.raises(ConfigError, match="evaluate.sha256.*23-dataset.*resnet_50.pth"):  # by content
        paper_params(evaluate={"weights": "models/medicalnet/resnet_50.pth", "sha256": DEFAULT_SHA256})
    p = paper_params(evaluate={"weights": str(tmp_path / "resnet_50.pth")})
    with pytest.raises(PaperWeightsError, match="MedicalNet_pytorch_files2.zip"):
        run_fetch_weights(p)  # the public default URL is the 23-dataset file: never fetched under its name
    assert not (tmp_path / "resnet_50.pth").exists()


def test_paper_split_is_the_reference_seeded_hold_out_of_200():
    patients = [f"LIDC-IDRI-{i:04d}" for i in range(1, 452)]
    which = assign_paper(list(reversed(patients)), seed=42)  # input order does not matter
    order = list(which)
    assert sorted(order) == patients
    assert [which[p] for p in order] == ["train"] * 251 + ["val"] * 200
    ref = sorted(patients)
    random.Random(42).shuffle(ref)  # scripts/split_train_val.py: sorted paths, Random(seed).shuffle
    assert order == ref
    assert assign_paper(patients, seed=43) != which
    assert sum(v == "val" for v in assign_paper(patients[:10], 42).values()) == 2  # a fifth of a tiny set


# ---------------------------------------------------------------------------------------------
# stage 2 and precision


def xavier_std(w: torch.Tensor, gain: float) -> float:
    fan_out, fan_in = w.shape
    return gain * math.sqrt(2.0 / (fan_in + fan_out))


def test_stage2_paper_init_statistics_on_the_paper_model():
    torch.manual_seed(0)
    model = models.create("PRDiT-B/12/4", 128)
    qkv = model.dit.blocks[0].attn.qkv.weight
    assert float(qkv.detach().std()) == pytest.approx(xavier_std(qkv, 1.0), rel=0.01)  # ours: gain 1, 0.0255
    model.init_global(0.1)
    assert float(qkv.detach().std()) == pytest.approx(0.00255, abs=0.00005)  # the 0.0026
    for block in model.dit.blocks:
        for lin in (block.attn.qkv, block.attn.proj, block.mlp.fc1, block.mlp.fc2):
            assert float(lin.weight.detach().std()) == pytest.approx(xavier_std(lin.weight, 0.1), rel=0.02)
            assert not lin.bias.any()
        assert not block.adaLN_modulation[-1].weight.any()
    assert not model.dit.final_layer.linear.weight.any()
    skip = model.dit.patch_embed.skip.weight
    assert float(skip.detach().std()) == pytest.approx(xavier_std(skip, 0.1), rel=0.02)
    assert float(model.t_embed.global_head.weight.detach().std()) == pytest.approx(0.02, rel=0.02)


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PRDIT_TRACKING", "off")
    common = {"checkpoint_every": 3, "val_every": 3, "log_every": 1, "preview_every": 0}
    train = {
        "common": common,
        "local": {"model": "PRDiT-T/8/0", "steps": 3, "batch_size": 2},
        "global": {"model": "PRDiT-T/8/2", "steps": 3, "batch_size": 2},
    }
    over = {"preprocess": {"size": 32, "highres_size": 64}, "train": train}
    return load(ROOT / "params.yaml", overrides=over), paper_params(**over)


def test_paper_stage2_freezes_the_raw_stage1_weights_and_reinitialises_with_gain_0_1(tiny):
    project, paper = tiny
    job = dataclasses.replace(job_from_params(paper, "phantom", "local"), preview_n=0)
    assert job.final_weights == "online" and not job.bf16_autocast
    assert job_from_params(project, "phantom", "local").final_weights == "ema"
    assert job_from_params(project, "phantom", "local").bf16_autocast
    assert job_from_params(paper, "phantom", "global").final_weights == "ema"
    sm = _models.build(paper, "phantom", "local")
    g = torch.Generator().manual_seed(0)
    vols = [torch.rand(1, 32, 32, 32, generator=g) * 2 - 1 for _ in range(4)]
    assert fit(job, sm, vols, vols[:2]) == 0
    last = torch.load(Path("models/phantom/local/last.pt"), weights_only=True)
    saved = torch.load(Path("models/phantom/local/model.pt"), weights_only=True)["state_dict"]
    assert all(torch.equal(saved[k], last["model"][k]) for k in last["model"])  # raw, as the reference
    assert any(not torch.equal(saved[k], last["ema"][k]) for k in last["ema"])  # (EMA decay 0.95 differs)

    torch.manual_seed(0)
    ours = _models.build(project, "phantom", "global").model
    torch.manual_seed(0)
    sm2 = _models.build(paper, "phantom", "global")
    ref = sm2.model
    qkv, qkv_ours = ref.dit.blocks[0].attn.qkv.weight, ours.dit.blocks[0].attn.qkv.weight
    assert float(qkv.detach().std()) == pytest.approx(xavier_std(qkv, 0.1), rel=0.05)
    assert float(qkv_ours.detach().std()) == pytest.approx(xavier_std(qkv, 1.0), rel=0.05)
    frozen = {n: q for n, q in ref.named_parameters() if n not in set(sm2.trained)}
    assert frozen and all(torch.equal(q, saved[n]) for n, q in frozen.items())
    assert ref.spec["overrides"]["pos_max_freq"] == pytest.approx(0.95 * (32 // 8) / 2)
    assert "pos_max_freq" not in ours.spec["overrides"]
    kernels = {m.kernel_dtype for m in ref.modules() if isinstance(m, Attention)}
    assert kernels == {torch.bfloat16}
    assert {m.kernel_dtype for m in ours.modules() if isinstance(m, Attention)} == {None}


def test_positional_top_frequency_is_the_references_at_every_grid():
    assert protocol.pos_max_freq(128) == pytest.approx(7.6)  # equal to the project's fixed 7.6 at 128^3
    assert protocol.pos_max_freq(256) == pytest.approx(15.2)


# ---------------------------------------------------------------------------------------------
# evaluation


class Recorder(torch.nn.Module):
    """A stand-in extractor: features are the first 2048 voxels; every input batch is kept."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[np.ndarray] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.extend(v[0].numpy().copy() for v in x)
        return x.flatten(1)[:, :2048].double() + self.anchor


EVAL_SPLITS = {"train": ["c3", "c0", "c2", "c1"], "val": ["c5", "c4"], "test": []}  # paper: shuffled order


@pytest.fixture
def toy(tmp_path, monkeypatch):
    from prdit.hu import to_hu as unit_to_hu
    from prdit.io import write_nifti

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    real = {}
    for split, ids in EVAL_SPLITS.items():
        Path("data/splits/toy").mkdir(parents=True, exist_ok=True)
        Path(f"data/splits/toy/{split}.txt").write_text("".join(f"{c}\n" for c in ids))
        for case in ids:  # anisotropic blobs: transposing the axes changes them
            real[case] = np.clip(rng.normal(-0.3, 0.4, (16, 16, 16)), -1, 1).astype(np.float32)
            real[case][:, :4, :10] = 0.8
            write_nifti(f"data/processed/toy/16/{case}.nii.gz", real[case], (8.0,) * 3)
    for i in range(5):
        vol = np.clip(rng.normal(-0.3, 0.4, (16, 16, 16)), -1, 1).astype(np.float32)
        write_nifti(f"samples/toy/16/{i}.nii.gz", unit_to_hu(vol, (-1000.0, 1000.0)), (8.0,) * 3)
    recorder = Recorder()
    info = ExtractorInfo("recorder", False, "test stand-in")
    monkeypatch.setattr("prdit.evaluate.run.build_extractor", lambda w, s: (recorder, info))
    return real, recorder


def _evaluate(protocol_name: str, **fields):
    """The toy evaluation under the conventions of `protocol_name`, as the evaluate stage fills them in
    (`fields` overrides some)."""
    chosen = protocol_fields(protocol.CONVENTIONS[protocol_name]) | fields
    return evaluate_toy(EvalSettings((-1000.0, 1000.0), 3, 5, 0, **chosen))[0]


def test_paper_evaluation_feeds_nibabel_axis_order_and_uses_the_references_real_set(toy, monkeypatch):
    real, recorder = toy
    m = _evaluate("paper")
    assert m["protocol"] == "paper" and m["input"]["extractor_axes"] == "xyz"
    first = recorder.seen[0]  # the first real volume extracted: c3, the first line of train.txt
    np.testing.assert_allclose(first, real["c3"].transpose(2, 1, 0), atol=1e-3)
    assert np.abs(first - real["c3"]).max() > 0.5
    assert m["reference_ids"] == ["c3", "c0", "c2", "c1", "c5", "c4"]  # train + val, in split order
    assert m["n"]["real_reference"] == 6 and m["n"]["real_train"] == 4
    assert m["n"]["ms_ssim_pairs"] == 10  # all pairs of the 5 generated volumes, not evaluate.ms_ssim_pairs
    assert m["n"]["ms_ssim_floor_pairs"] == 3

    recorder.seen.clear()
    m = _evaluate("project")  # the feature cache was made in the other axis order: rebuilt
    assert m["protocol"] == "project" and m["input"]["extractor_axes"] == "zyx"
    np.testing.assert_allclose(recorder.seen[0], real["c3"], atol=1e-3)
    assert "reference_ids" not in m and m["n"]["ms_ssim_pairs"] == 3 and m["n"]["real_train"] == 4


def test_the_evaluate_stage_takes_the_protocol_from_the_resolved_conventions():
    """The evaluation never looks a protocol up by name: the stage hands it what p.conventions decide."""
    fields = ("protocol", "extractor_axes", "real_set_n", "all_generated_pairs")
    paper, project = settings(paper_params()), settings(load(ROOT / "params.yaml"))
    assert [getattr(paper, f) for f in fields] == ["paper", "xyz", protocol.PAPER_REAL_N, True]
    assert [getattr(project, f) for f in fields] == ["project", "zyx", None, False]
    assert protocol.PAPER_REAL_N == 1000


def test_paper_real_set_is_the_first_1000_of_train_plus_val(toy):
    m = _evaluate("paper", real_set_n=5)  # the first n (1000 under the paper protocol) of train + val
    assert m["reference_ids"] == ["c3", "c0", "c2", "c1", "c5"]
    assert m["fid_floor"] is not None  # held-out (val) against train, as in the project protocol


# ---------------------------------------------------------------------------------------------
# sampling


def test_reference_grid_starts_below_t_1000_and_ends_with_euler_steps(monkeypatch):
    from prdit.diffusion import sampler

    assert sampler.reference_grid(10) == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    full = sampler.reference_grid(1000)
    assert full[0] == 999 and full[-2:] == [1, 0] and len(full) == 1000
    labels, draws = [], []
    real_randn = sampler.StackedRandomGenerator.randn
    monkeypatch.setattr(sampler.StackedRandomGenerator, "randn", lambda *a: draws.append(1) or real_randn(*a))

    def model(x, t):
        labels.append(int(t[0]))
        return torch.cat([torch.zeros_like(x), torch.full_like(x, 0.3)], 1)

    sampler.sample(model, (1, 1, 4, 4, 4), sampler.SamplerOptions(steps=10, k=2, grid="reference"), seeds=[0])
    assert labels == [900, 800, 700, 600, 500, 400, 300, 200, 100]
    assert len(draws) == 1 + 7  # the start, then a corrector only while t - 2 * 100 > 0 (t = 900..300)
    draws.clear()
    sampler.sample(model, (1, 1, 4, 4, 4), sampler.SamplerOptions(steps=10, k=1, grid="reference"), seeds=[0])
    assert len(draws) == 1  # k = 1: deterministic Euler throughout


@pytest.mark.parametrize("k", [1, 2])
def test_reference_grid_sampler_reaches_the_data_with_an_exact_model(k):
    """With the exact (eps, x0) of a one-point data set, the sampler must land on that point."""
    from prdit.diffusion import sampler

    target = torch.linspace(-0.8, 0.8, 64).reshape(1, 1, 4, 4, 4)

    def oracle(x, t):
        beta = float(t[0]) * math.pi / 2 / 1000
        eps = (x - math.cos(beta) * target) / max(math.sin(beta), 1e-6)
        return torch.cat([eps, target.expand_as(x)], 1)

    out = sampler.sample(
        oracle, (2, 1, 4, 4, 4), sampler.SamplerOptions(steps=100, k=k, grid="reference"), seeds=[1, 2]
    )
    assert (out - target).abs().max() < 0.05
