"""Model files: a plain dict (format prdit-model/1) that `load` rebuilds through the registry."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from prdit.errors import PrditError
from prdit.io import write_torch
from prdit.model.arch import unwrap
from prdit.model.registry import VARIANTS, create

FORMAT = "prdit-model/1"


class ModelFileError(PrditError, ValueError):
    """A model file that is missing, truncated or not ours: one line naming the file."""


class ModelMismatchError(ModelFileError):
    """A readable model file that is not the model this command needs (other stage, size or architecture)."""


STAGE_KINDS = {"local": "prdit", "global": "prdit", "highres": "highres"}  # registry kind of each stage


def check_stage(obj: dict[str, Any], source: str, stage: str, input_size: int | None = None) -> None:
    """ModelMismatchError (one line naming the file) unless `obj` (a model file dict) is a `stage` model.

    Checked: meta.stage where the file records one, the architecture (a highres variant for highres, a
    PRDiT with a DiT, depth >= 1, for global) and, when given, the input size."""
    recorded = (obj.get("meta") or {}).get("stage")
    name = obj.get("name", "?")
    variant = VARIANTS.get(name, {})
    depth = (obj.get("overrides") or {}).get("depth", variant.get("depth"))
    why = ""
    if recorded is not None and recorded != stage:
        why = f"its meta.stage is {recorded!r}"
    elif variant and variant["kind"] != STAGE_KINDS[stage]:
        why = f"its architecture {name} is not a {stage} model"
    elif stage == "global" and depth == 0:
        why = f"its architecture {name} has depth 0 (a stage-1 local model)"
    elif input_size is not None and obj.get("input_size") != input_size:
        why = f"it works at {obj.get('input_size')}^3"
    if why:
        expected = f"the {stage} model" + (f" at {input_size}^3" if input_size is not None else "")
        raise ModelMismatchError(f"{source}: expected {expected}, but {why}; put the right model file there")


def to_file_dict(model: nn.Module, meta: dict[str, Any]) -> dict[str, Any]:
    """The dict a model file holds (also usable inside a training checkpoint)."""
    model = unwrap(model)
    spec = getattr(model, "spec", None)
    if spec is None:
        raise ValueError("model was not built by prdit.model.create(); cannot record how to rebuild it")
    # own, compact storages: the file holds exactly these tensors, however the model was built or wrapped
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    return {"format": FORMAT, **spec, "state_dict": state, "meta": dict(meta)}


def from_file_dict(obj: dict[str, Any], source: str = "<dict>") -> nn.Module:
    """Rebuild a model from `to_file_dict` output."""
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ModelFileError(f"{source}: not a PRDiT model file (expected format {FORMAT!r})")
    model = create(obj["name"], obj["input_size"], **obj.get("overrides", {}))
    model.load_state_dict(obj["state_dict"])
    model.meta = obj.get("meta", {})
    return model


def save(path: str | Path, model: nn.Module, *, meta: dict[str, Any]) -> None:
    """Write a model file atomically; its bytes depend only on the weights, the spec and `meta`.

    `meta` must hold nothing time- or path-random (a child stage's resume check and DVC hash model files).
    """

    write_torch(path, to_file_dict(model, meta))


def content_hash(path: str | Path) -> str:
    """sha256 of what a model file means to the stages built on it: format, architecture and weights.

    `meta` (provenance: git commit, params, data hash) is left out, so a parent re-saved with the same
    weights under another commit still matches the checkpoints of the stages that build on it.
    """

    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated or foreign: one line, no chained traceback
        raise ModelFileError(f"{path}: cannot read model file ({type(e).__name__}); re-create it") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a PRDiT model file (expected format {FORMAT!r})")
    digest = hashlib.sha256()
    spec = {k: v for k, v in obj.items() if k not in ("state_dict", "meta")}
    digest.update(json.dumps(spec, sort_keys=True, default=repr).encode())
    for name in sorted(obj["state_dict"]):
        t = obj["state_dict"][name]
        digest.update(f"\n{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
        digest.update(t.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    *,
    stage: str | None = None,
    input_size: int | None = None,
) -> nn.Module:
    """Rebuild the model stored by `save` (weights_only loading).

    With `stage` (and `input_size`) the file must be that stage's model (`check_stage`), checked before
    the model is built."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model file not found")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file: one line, no chained traceback
        raise ModelFileError(f"{path}: cannot read model file ({type(e).__name__}); re-create it") from None
    if stage is not None and isinstance(obj, dict) and obj.get("format") == FORMAT:
        check_stage(obj, str(path), stage, input_size)
    model = from_file_dict(obj, str(path))
    return model.to(map_location)


# parameter-name prefixes of the reference implementation (github Fredy-Zhang/PRDiT) -> ours
REFERENCE_PREFIXES = (
    ("t_embedder.mlp.", "t_embed.shared."),
    ("t_embedder.coarse_head.", "t_embed.local_head."),
    ("t_embedder.fine_head.", "t_embed.global_head."),
    ("coarse.mlp_denoise.", "local."),
    ("fine.patch_embedder.", "dit.patch_embed."),
    ("fine.blocks.", "dit.blocks."),
    ("fine.final_layer.", "dit.final_layer."),
)


def from_reference_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a reference PRDiT state dict (its `model` or `ema` entry) to load into our PRDiT."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        for old, new in REFERENCE_PREFIXES:
            if key.startswith(old):
                out[new + key[len(old) :]] = value
                break
        else:
            raise KeyError(f"unexpected key {key!r} in a reference PRDiT state dict")
    return out
