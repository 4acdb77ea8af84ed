"""MedicalNet ResNet-50 loading: prefix stripping, strict keys, checksum, fallback, shapes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

import prdit.evaluate as ev
from prdit.evaluate.extractor import WeightsError, build_extractor, extract_features
from prdit.evaluate.resnet3d import MedicalNetResNet50


@pytest.fixture(scope="module")
def trained() -> MedicalNetResNet50:
    """A fixed-seed 'trained' network: random weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(1234)
    model = MedicalNetResNet50()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def trained_state(trained) -> dict[str, torch.Tensor]:
    return trained.state_dict()


@pytest.fixture(scope="module")
def volumes() -> torch.Tensor:
    return torch.tanh(torch.randn(2, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0)))


@pytest.fixture(scope="module")
def reference_features(trained, volumes) -> torch.Tensor:
    with torch.no_grad():
        return trained(volumes)


def _save(path: Path, state: dict, prefix: str = "", wrap: bool = True) -> Path:
    sd = {prefix + k: v for k, v in state.items()}
    torch.save({"state_dict": sd} if wrap else sd, path)
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_module_prefixed_checkpoint_gives_the_same_features_as_the_plain_one(
    tmp_path, trained_state, volumes, reference_features
):
    plain = _save(tmp_path / "plain.pth", trained_state, wrap=False)
    prefixed = _save(tmp_path / "prefixed.pth", trained_state, prefix="module.")
    a, b = ev.load_extractor(plain), ev.load_extractor(prefixed, sha256=_sha(prefixed))
    with torch.no_grad():
        fa, fb = a(volumes), b(volumes)
    assert fa.shape == (2, 2048)
    assert torch.equal(fa, fb)
    assert torch.equal(
        fa, reference_features
    )  # every tensor came from the file (non-default BN stats included)


def test_missing_and_unexpected_keys_raise_naming_them(tmp_path, trained_state):
    state = dict(trained_state)
    del state["layer4.2.bn3.running_var"]
    with pytest.raises(WeightsError, match=r"missing keys: layer4\.2\.bn3\.running_var"):
        ev.load_extractor(_save(tmp_path / "missing.pth", state, prefix="module."))
    state = {**trained_state, "fc.weight": torch.zeros(2, 2048)}
    with pytest.raises(WeightsError, match=r"unexpected keys: fc\.weight"):
        ev.load_extractor(_save(tmp_path / "extra.pth", state))
    state = {**trained_state, "conv1.weight": torch.zeros(64, 1, 3, 3, 3)}
    with pytest.raises(WeightsError, match=r"conv1\.weight"):
        ev.load_extractor(_save(tmp_path / "shape.pth", state))


def test_segmentation_head_and_missing_batch_counters_are_tolerated(
    tmp_path, trained_state, volumes, reference_features
):
    state = {k: v for k, v in trained_state.items() if not k.endswith("num_batches_tracked")}
    state["conv_seg.0.weight"] = torch.zeros(2, 2048, 1, 1, 1)
    model = ev.load_extractor(_save(tmp_path / "old.pth", state, prefix="module."))
    with torch.no_grad():
        assert torch.equal(model(volumes), reference_features)


def test_wrong_sha256_and_bad_files_raise(tmp_path, trained_state):
    path = _save(tmp_path / "w.pth", trained_state)
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        ev.load_extractor(path, sha256="0" * 64)
    with pytest.raises(WeightsError, match="not found"):
        ev.load_extractor(tmp_path / "absent.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="junk.pth"):
        ev.load_extractor(tmp_path / "junk.pth")


def test_fallback_is_deterministic_flagged_and_leaves_global_rng_alone(volumes):
    torch.manual_seed(7)
    before = torch.rand(1)
    torch.manual_seed(7)
    m1, info = build_extractor(None)
    after = torch.rand(1)
    assert torch.equal(before, after)
    assert info.pretrained is False and "NOT comparable" in info.note
    m2 = ev.load_extractor(None)
    with torch.no_grad():
        assert torch.equal(m1(volumes), m2(volumes))


@pytest.fixture(scope="module")
def fallback() -> torch.nn.Module:
    return ev.load_extractor(None)


@pytest.mark.parametrize("size", [16, 32])
def test_spatial_sizes_through_the_dilated_layers(size, fallback):
    model = fallback
    x = torch.zeros(1, 1, size, size, size)
    with torch.no_grad():
        fmap = model.feature_map(x)
    assert fmap.shape == (1, 2048, -(-size // 8), -(-size // 8), -(-size // 8))
    feats = extract_features(model, [np.zeros((size,) * 3, np.float32)] * 3, batch_size=2)
    assert feats.shape == (3, 2048) and feats.dtype == np.float64
    with pytest.raises(ValueError, match=r"\[B, 1, D, H, W\]"):
        model(torch.zeros(1, 2, size, size, size))
