"""Load the MedicalNet ResNet-50 feature extractor strictly, or the documented untrained fallback.

A MedicalNet checkpoint saved from nn.DataParallel has every key prefixed by `module.`; loading it
non-strictly matches nothing and silently leaves random weights. Here the prefix is stripped, the
file's sha256 is checked, and any missing or unexpected key is an error naming it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from prdit.errors import PrditError
from prdit.evaluate.resnet3d import FEATURE_DIM, MedicalNetResNet50
from prdit.io import sha256_file

log = logging.getLogger(__name__)

FALLBACK_SEED = 0
# MedicalNet's own training checkpoints also carry its segmentation head; it is not on the feature path.
IGNORED_PREFIXES = ("conv_seg.",)


@dataclass(frozen=True)
class ExtractorInfo:
    """What produced the features; written into every metrics file and report."""

    name: str
    pretrained: bool
    note: str
    weights: str | None = None
    sha256: str | None = None

    @property
    def key(self) -> str:
        """Identity of the feature space (cache invalidation)."""
        return f"{self.name}:{self.sha256 or f'untrained-seed{FALLBACK_SEED}'}"


class WeightsError(PrditError, ValueError):
    """A weights file is missing, corrupt, has the wrong checksum or does not fit the network."""


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """Remove a leading `prefix` (nn.DataParallel's `module.`) from every key that has it."""
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state.items()}


def _state_dict_of(obj: object, path: Path) -> Mapping[str, torch.Tensor]:
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(
            f"{path}: not a state dict (expected a mapping of tensors, or one under 'state_dict')"
        )
    return obj


def _keys(keys: Iterable[str], limit: int = 8) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f" ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_weights(model: nn.Module, path: str | Path, sha256: str | None = None) -> None:
    """Check `path`'s sha256, strip `module.`, and load it into `model` strictly (`model` may live on 'meta')."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(
            f"{path}: weights file not found (get it with `prdit fetch-weights`, "
            "or set evaluate.weights: null for the untrained fallback)"
        )
    if sha256:
        actual = sha256_file(path)
        if actual.lower() != sha256.lower():
            raise WeightsError(f"{path}: sha256 mismatch: expected {sha256.lower()}, file has {actual}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"{path}: cannot be read as a torch checkpoint ({exc})") from exc
    state = strip_prefix(_state_dict_of(obj, path))
    dropped = [k for k in state if k.startswith(IGNORED_PREFIXES)]
    if dropped:
        log.info(
            "%s: ignoring %d keys of MedicalNet's segmentation head (%s)",
            path,
            len(dropped),
            _keys(dropped, 3),
        )
        state = {k: v for k, v in state.items() if k not in dropped}
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    # BatchNorm's batch counters are unused in eval mode and absent from checkpoints older than torch 0.4.1.
    if missing and all(k.endswith("num_batches_tracked") for k in missing):
        state.update({k: torch.zeros((), dtype=torch.long) for k in missing})
        missing = []
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = ([f"missing keys: {_keys(missing)}"] if missing else []) + (
            [f"unexpected keys: {_keys(unexpected)}"] if unexpected else []
        )
        raise WeightsError(f"{path}: does not match the MedicalNet ResNet-50: " + "; ".join(parts))
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if state[k].shape != v.shape
    ]
    if wrong:
        raise WeightsError(f"{path}: tensor shapes do not match the MedicalNet ResNet-50: {_keys(wrong, 4)}")
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)


@functools.cache
def _fallback_state() -> dict[str, torch.Tensor]:
    """The untrained network's weights: seed FALLBACK_SEED, without touching the global RNG (built once)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(FALLBACK_SEED)
        return MedicalNetResNet50().state_dict()


def build_extractor(
    weights_path: str | Path | None, sha256: str | None = None
) -> tuple[nn.Module, ExtractorInfo]:
    """The extractor in eval mode and its description (pretrained, or the fixed-seed fallback)."""
    if weights_path is None:
        with torch.device("meta"):
            model = MedicalNetResNet50()
        model.load_state_dict({k: v.clone() for k, v in _fallback_state().items()}, assign=True)
        info = ExtractorInfo(
            name="medicalnet-resnet50-untrained",
            pretrained=False,
            note=(
                "No evaluate.weights configured: features come from the MedicalNet ResNet-50 architecture with "
                f"fixed-seed ({FALLBACK_SEED}) random weights. Scores are reproducible and rank-consistent within "
                "this pipeline but are NOT comparable with published 3D FID/MMD numbers."
            ),
        )
        log.warning("evaluation uses the untrained fallback extractor (no evaluate.weights configured)")
    else:
        with torch.device("meta"):  # every tensor comes from the checkpoint: skip the random init
            model = MedicalNetResNet50()
        load_weights(model, weights_path, sha256)
        info = ExtractorInfo(
            name="medicalnet-resnet50",
            pretrained=True,
            note=(
                "MedicalNet 3D ResNet-50 (Chen et al. 2019), loaded strictly; features = global average pool "
                "of layer 4." + ("" if sha256 else " No sha256 configured: the file was not verified.")
            ),
            weights=str(weights_path),
            sha256=sha256.lower() if sha256 else sha256_file(weights_path),
        )
    return model.eval(), info


def load_extractor(weights_path: str | Path | None, sha256: str | None = None) -> nn.Module:
    """Public entry point: a module mapping [B, 1, D, H, W] float volumes to [B, 2048] features."""
    return build_extractor(weights_path, sha256)[0]


@torch.no_grad()
def extract_features(model: nn.Module, volumes: Iterable[np.ndarray], batch_size: int = 4) -> np.ndarray:
    """Features (N, 2048) float64 of [D, H, W] volumes already normalised for the extractor (on the model's device)."""
    model.eval()
    device = next(model.parameters()).device
    out: list[np.ndarray] = []
    batch: list[np.ndarray] = []

    def flush() -> None:
        x = torch.from_numpy(np.stack(batch)[:, None].astype(np.float32)).to(device)
        out.append(model(x).double().cpu().numpy())
        batch.clear()

    for vol in volumes:
        batch.append(vol)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return np.concatenate(out) if out else np.zeros((0, FEATURE_DIM))
