"""train.<stage>.checkpointing reaches the blocks of the network that stage trains (issue 28 point 4).

Every stage: each LocalDenoiser / GlobalDiT it trains carries the flag, and a training backward really
recomputes blocks through torch.utils.checkpoint (counted per module) exactly when the flag is on."""

from __future__ import annotations

import pytest
import torch

import prdit.diffusion as D
import prdit.model.dit as dit_module
import prdit.model.local as local_module
from prdit.config import load
from prdit.model.dit import GlobalDiT
from prdit.model.local import LocalDenoiser
from prdit.stages._models import stage_spec
from prdit.train.stages import assemble
from tests.support.project import ROOT


def _params(stage: str, on: bool):
    return load(ROOT / "params.yaml", overrides={"train": {stage: {"checkpointing": on}}})


def _model(stage: str, on: bool):
    """The stage's model as training assembles it, on freshly assembled (untrained) parents."""
    parent = None
    for s in ("local", "global", "highres"):
        sm = assemble(stage_spec(_params(s, on if s == stage else False), s), parent)
        parent = getattr(sm, "model", sm)
        if s == stage:
            return parent
    raise AssertionError(stage)


def _count_checkpoint_calls(model, monkeypatch) -> dict[str, int]:
    """Checkpoint calls in the local denoisers and the DiTs during one training loss backward."""
    calls = {"local": 0, "dit": 0}
    for key, module in (("local", local_module), ("dit", dit_module)):
        real = module.checkpoint

        def counting(*args, _key=key, _real=real, **kwargs):
            calls[_key] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, "checkpoint", counting)
    model.train()
    with torch.no_grad():
        for q in model.parameters():
            if q.requires_grad:
                q.normal_(0, 0.02)
    size = model.input_size
    x0 = torch.rand(1, 1, size, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    loss, _ = D.loss(model, x0, generator=torch.Generator().manual_seed(1))
    loss.backward()
    return calls


def _trained_blocks(model, kind) -> list:
    """The `kind` modules of `model` that have trainable parameters (a frozen parent's blocks excluded)."""
    return [
        m for m in model.modules() if isinstance(m, kind) and any(q.requires_grad for q in m.parameters())
    ]


@pytest.mark.parametrize("on", [False, True])
def test_local_checkpointing_reaches_the_stage1_blocks(on: bool, monkeypatch) -> None:
    model = _model("local", on)
    blocks = [m for m in model.modules() if isinstance(m, LocalDenoiser)]
    assert blocks and all(b.checkpointing is on for b in blocks)
    assert model.arch.checkpointing is on
    assert (_count_checkpoint_calls(model, monkeypatch)["local"] > 0) is on


@pytest.mark.parametrize("on", [False, True])
def test_global_checkpointing_reaches_the_dit_blocks(on: bool, monkeypatch) -> None:
    """Stage 2 trains only the DiT (its local path is frozen and runs under no_grad)."""
    model = _model("global", on)
    assert model.dit is not None and model.dit.checkpointing is on
    assert _trained_blocks(model, GlobalDiT) == [model.dit] and not _trained_blocks(model, LocalDenoiser)
    calls = _count_checkpoint_calls(model, monkeypatch)
    assert (calls["dit"] > 0) is on and calls["local"] == 0


@pytest.mark.parametrize("on", [False, True])
def test_highres_checkpointing_reaches_both_branch_paths(on: bool, monkeypatch) -> None:
    """Stage 3 trains the residual branch: its local denoiser and its DiT both checkpoint; the frozen
    backbone runs under no_grad and never does."""
    model = _model("highres", on)
    branch = model.branch
    assert branch.dit is not None, "the default highres variant has a DiT branch"
    assert branch.local.checkpointing is on and branch.dit.checkpointing is on
    assert _trained_blocks(model, LocalDenoiser) == [branch.local]
    assert _trained_blocks(model, GlobalDiT) == [branch.dit]
    calls = _count_checkpoint_calls(model, monkeypatch)
    assert (calls["local"] > 0) is on and (calls["dit"] > 0) is on
