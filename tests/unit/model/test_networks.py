"""PRDiT networks: registry, shapes, exactness against the reference implementation, freezing, I/O."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import prdit.diffusion as D
from prdit.model import VARIANTS, Arch, create, from_reference_state_dict, load, save
from prdit.model.layers import Attention, grid_pos_embed, sincos_code
from prdit.model.patches import extract_patches, unpatchify
from tests.support import reference
from tests.support.reference_forward import (
    CASES,
    COUNT_CASES,
    COUNTS_FILE,
    fixture_name,
    seeded_input,
    seeded_model,
)
from tests.support.training_checks import adamw_step

STUB = Path(__file__).parents[2] / "reference_stub"
FIXTURES = Path(__file__).parents[2] / "fixtures" / "reference_forward"


def small_input(model, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = model.input_size
    return torch.randn(b, model.in_channels, s, s, s, generator=g) * 0.5, torch.tensor([3, 777][:b])


# ---------------------------------------------------------------- registry and shapes
def test_registry_has_the_paper_grid_and_demo_variants():
    for size in ("XS", "S", "B", "L", "XL"):
        for p in (10, 12, 14, 16):
            for d in (0, 1, 2, 3, 4, 8, 10, 12):
                assert f"PRDiT-{size}/{p}/{d}" in VARIANTS
                assert f"PRDiT-HR-{size}/{p}/{d}" in VARIANTS
    assert "PRDiT-T/10/0" in VARIANTS and "PRDiT-HR-T/10/1" in VARIANTS
    assert VARIANTS["PRDiT-B/12/4"]["hidden_size"] == 768 and VARIANTS["PRDiT-XL/12/4"]["num_heads"] == 16


def test_unknown_variant_is_a_clear_error():
    with pytest.raises(KeyError, match="PRDiT-Q/12/4"):
        create("PRDiT-Q/12/4", 32)
    with pytest.raises(ValueError, match="multiple of the stride"):
        create("PRDiT-T/10/0", 36)


def test_every_network_is_built_from_one_frozen_arch():
    """create() turns variant + overrides into one frozen Arch; the blocks read it, nothing travels beside it."""
    model = create("PRDiT-T/10/2", 32, checkpointing=True, pos_max_freq=2.0)
    assert model.arch == Arch(
        hidden_size=96, num_heads=4, depth=2, patch=10, checkpointing=True, pos_max_freq=2.0
    )
    assert model.local.checkpointing and model.dit.checkpointing and len(model.dit.blocks) == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.arch.depth = 3  # type: ignore[misc]
    hr = create("PRDiT-HR-T/10/1", 64, backbone=create("PRDiT-T/10/1", 32), checkpointing=True)
    assert hr.arch.checkpointing and hr.branch.local.checkpointing and hr.branch.dit.checkpointing
    assert not hr.backbone.arch.checkpointing
    with pytest.raises(TypeError, match="nonsense"):
        create("PRDiT-T/10/0", 32, nonsense=1)
    with pytest.raises(ValueError, match="checkpointing"):
        create("PRDiT-T/10/0", 32, checkpointing="yes")
    with pytest.raises(ValueError, match="in_channels"):
        create("PRDiT-HR-T/10/1", 64, backbone=create("PRDiT-T/10/1", 32), in_channels=2)


@pytest.mark.parametrize(
    "name", ["PRDiT-T/10/0", "PRDiT-T/10/2", "PRDiT-T/8/1", "PRDiT-XS/12/1", "PRDiT-XS/4/0"]
)
def test_tiny_variants_run_on_cpu(name):
    model = create(name, 32)
    x, t = small_input(model)
    assert model(x, t).shape == (2, 2, 32, 32, 32)


@pytest.mark.slow
def test_every_registered_variant_has_the_right_output_shape():
    backbones = {}
    with torch.device("meta"):
        for name in VARIANTS:
            if name.startswith("PRDiT-HR-"):
                p = int(name.split("/")[1])
                backbones.setdefault(p, create(f"PRDiT-T/{p}/1", 32))
                model, size = create(name, 64, backbone=backbones[p]), 64
            else:
                model, size = create(name, 32), 32
            if name.split("/")[-1] in ("0", "1"):  # deeper variants differ only in the number of blocks
                y = model(torch.empty(2, 1, size, size, size), torch.tensor([1, 999]))
                assert y.shape == (2, 2, size, size, size), name


# ---------------------------------------------------------------- the reference implementation
# Recorded once from the reference (tests/fixtures/reference_forward, runs everywhere) and, when
# $PRDIT_REFERENCE names a clone, against the live clone (`requires_reference`: deselected otherwise).
def _reference_models(tmp_path: Path) -> Path:
    """The reference's models/ package, extracted from the clone $PRDIT_REFERENCE names."""
    why = reference.unavailable()
    if why:
        pytest.fail(why)  # set but unusable: a misconfiguration, not a reason to skip
    return reference.extract_models(tmp_path)


def _probe(ref: Path, *args: str) -> str:
    return subprocess.run(
        [sys.executable, str(STUB / "probe.py"), str(ref), *args], check=True, capture_output=True, text=True
    ).stdout


def _assert_counts_and_names_equal(got: dict) -> None:
    for name, size in COUNT_CASES:
        with torch.device("meta"):
            ours = create(name, size)
        want = got[f"{name}@{size}"]
        assert sum(p.numel() for p in ours.parameters()) == want["params"], name
        renamed = from_reference_state_dict(
            {k: torch.empty(v, device="meta") for k, v in want["shapes"].items()}
        )
        assert {k: list(v.shape) for k, v in ours.state_dict().items()} == {
            k: list(v.shape) for k, v in renamed.items()
        }
    assert got["PRDiT-B/12/4@128"]["params"] == 93_228_992


def test_parameter_counts_and_names_equal_the_recorded_reference():
    _assert_counts_and_names_equal(json.loads((FIXTURES / COUNTS_FILE).read_text())["counts"])


@pytest.mark.requires_reference
def test_parameter_counts_and_names_equal_the_reference(tmp_path):
    ref = _reference_models(tmp_path)
    _assert_counts_and_names_equal(
        json.loads(_probe(ref, "count", *[str(a) for case in COUNT_CASES for a in case]))
    )


@pytest.mark.slow
@pytest.mark.requires_reference
def test_forward_equals_the_reference_with_its_weights(tmp_path):
    """Same weights, same input: same output at 128^3 (also checks positions, token layouts, channel order)."""
    ref = _reference_models(tmp_path)
    _probe(ref, "forward", "PRDiT-XS/10/2", "128", str(tmp_path / "ref.pt"))
    d = torch.load(tmp_path / "ref.pt", weights_only=True)
    model = create("PRDiT-XS/10/2", 128).eval()
    model.load_state_dict(from_reference_state_dict(d["state_dict"]))
    with torch.no_grad():
        y = model(d["x"], d["t"])
    torch.testing.assert_close(y, d["y"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("name", "size"), CASES)
def test_forward_equals_the_recorded_reference_outputs(name, size):
    """Seeded weights and input: our output equals the reference's, recorded once by
    tests/fixtures/reference_forward/record.py (runs without a clone)."""
    d = torch.load(FIXTURES / fixture_name(name, size), weights_only=True)
    model = seeded_model(name, size)
    x, t = seeded_input(model)
    with torch.no_grad():
        y = model(x, t)
    # the live-clone test's tolerance: fp32 on both sides, only summation order differs
    torch.testing.assert_close(y, d["y"], rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- initialisation and freezing
@pytest.mark.parametrize("name", ["PRDiT-T/10/0", "PRDiT-T/10/2"])
def test_output_is_exactly_zero_at_initialisation(name):
    model = create(name, 32)
    x, t = small_input(model)
    assert torch.count_nonzero(model(x, t)) == 0


def test_stage2_step_leaves_stage1_bitwise_unchanged_and_gradient_free():
    stage1 = create("PRDiT-T/10/0", 32)
    x0 = torch.rand(2, 1, 32, 32, 32) * 2 - 1
    for _ in range(2):  # give stage 1 non-zero weights everywhere
        adamw_step(stage1, x0)
    model = create("PRDiT-T/10/2", 32)
    model.load_local(stage1)
    frozen = {k: v.clone() for m in model.local_modules() for k, v in m.state_dict().items()}
    seen = []
    model.local.register_forward_hook(lambda m, i, o: seen.append(o.requires_grad))
    loss = adamw_step(model, x0)
    assert seen == [False], "stage-1 output must be computed without autograd"
    assert torch.isfinite(loss)
    for m in model.local_modules():
        for k, v in m.state_dict().items():
            assert torch.equal(v, frozen[k]), k
        assert all(p.grad is None and not p.requires_grad for p in m.parameters())
    assert model.t_embed.global_head.weight.grad is not None
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.dit.parameters())


def test_load_local_rejects_another_patch_size():
    with pytest.raises(ValueError, match="patch"):
        create("PRDiT-T/10/2", 32).load_local(create("PRDiT-T/12/0", 32))


# ---------------------------------------------------------------- layers
def test_positional_code_depends_only_on_normalised_coordinates():
    for grid in (16, 32):
        c = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
        z, y, x = torch.meshgrid(c, c, c, indexing="ij")
        coords = torch.stack([x, y, z], -1).reshape(-1, 3)
        torch.testing.assert_close(grid_pos_embed(grid, 96, 7.6), sincos_code(coords, 96, 7.6))
    # 16^3 and 48^3 grids share cell centres: identical codes there
    e16, e48 = (
        grid_pos_embed(16, 96, 7.6).view(16, 16, 16, 96),
        grid_pos_embed(48, 96, 7.6).view(48, 48, 48, 96),
    )
    torch.testing.assert_close(e16, e48[1::3, 1::3, 1::3])
    # the 32^3 model's buffer is the same function, evaluated on its own grid
    m16, m32 = create("PRDiT-T/10/1", 128), create("PRDiT-T/10/1", 256)
    assert m16.dit.pos_embed.shape[1] == 16**3 and m32.dit.pos_embed.shape[1] == 32**3
    torch.testing.assert_close(m32.dit.pos_embed[0], grid_pos_embed(32, 96, 7.6))


def test_positional_code_pads_widths_not_divisible_by_six():
    code = grid_pos_embed(4, 1024, 7.6)
    assert code.shape == (64, 1024) and torch.count_nonzero(code[:, 1020:]) == 0


def test_sdpa_attention_equals_explicit_softmax_attention():
    torch.manual_seed(0)
    attn = Attention(48, 4)
    x = torch.randn(2, 50, 48)
    q, k, v = attn.qkv(x).view(2, 50, 3, 4, 12).permute(2, 0, 3, 1, 4)
    w = (q @ k.transpose(-1, -2) / math.sqrt(12)).softmax(-1)
    ref = attn.proj((w @ v).transpose(1, 2).reshape(2, 50, 48))
    torch.testing.assert_close(attn(x), ref, rtol=1e-5, atol=1e-5)


def test_patch_extraction_matches_explicit_crops_and_unpatchify_inverts():
    x = torch.randn(2, 2, 16, 16, 16)
    tok = extract_patches(x, 12, 8, 2)
    padded = F.pad(x, (2,) * 6, mode="reflect")
    assert tok.shape == (2, 8, 2 * 12**3)
    for n, (z, y, xx) in enumerate([(a, b, c) for a in range(2) for b in range(2) for c in range(2)]):
        crop = padded[:, :, 8 * z : 8 * z + 12, 8 * y : 8 * y + 12, 8 * xx : 8 * xx + 12]
        torch.testing.assert_close(tok[:, n], crop.reshape(2, -1))
    vol = torch.randn(2, 2, 16, 16, 16)
    tokens = vol.view(2, 2, 2, 8, 2, 8, 2, 8).permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(2, 8, -1)
    torch.testing.assert_close(unpatchify(tokens, 2, 8, 2), vol)


# ---------------------------------------------------------------- precision, compile, files
def _random_weights(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model


def test_bf16_autocast_forward_and_loss_are_close_to_fp32():
    model = _random_weights(create("PRDiT-T/10/2", 32)).eval()
    x, t = small_input(model)
    with torch.no_grad():
        ref = model(x, t)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x, t)
            loss, parts = D.loss(model, x, t=t, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(low).all() and loss.dtype == torch.float32 and torch.isfinite(loss)
    assert (low.float() - ref).abs().max() < 0.05 * ref.abs().max()


@pytest.mark.slow
def test_torch_compile_traces_forward_and_backward_without_graph_breaks():
    model = _random_weights(create("PRDiT-T/10/2", 32))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x, t = small_input(model)
    torch.testing.assert_close(compiled(x, t), model(x, t))
    compiled(x, t).square().mean().backward()
    assert model.t_embed.global_head.weight.grad is not None


def test_save_load_roundtrip_including_compiled_models(tmp_path):
    model = _random_weights(create("PRDiT-T/10/2", 32))
    save(tmp_path / "a" / "model.pt", torch.compile(model), meta={"step": 7})
    back = load(tmp_path / "a" / "model.pt")
    x, t = small_input(model)
    assert torch.equal(model(x, t), back(x, t))
    assert back.meta == {"step": 7} and back.spec["name"] == "PRDiT-T/10/2"
    assert not any(p.requires_grad for m in back.local_modules() for p in m.parameters())
    obj = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    assert (
        obj["format"] == "prdit-model/1" and obj["input_size"] == 32 and not list((tmp_path / "a").glob(".*"))
    )


def test_load_rejects_foreign_and_missing_files(tmp_path):
    torch.save({"model": {}}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="x.pt.*not a PRDiT model file"):
        load(tmp_path / "x.pt")
    (tmp_path / "y.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="y.pt"):
        load(tmp_path / "y.pt")
    with pytest.raises(FileNotFoundError, match="z.pt"):
        load(tmp_path / "z.pt")
