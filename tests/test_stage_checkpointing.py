"""train.<stage>.checkpointing reaches the blocks of the network that stage trains (issue 28 point 4)."""

from __future__ import annotations

import pytest
import torch

import prdit.diffusion as D
import prdit.model.local as local_module
from prdit.config import load
from prdit.model.local import LocalDenoiser
from prdit.train.stages import assemble
from tests.conftest import ROOT


def _params(stage: str, on: bool):
    return load(ROOT / "params.yaml", overrides={"train": {stage: {"checkpointing": on}}})


@pytest.mark.parametrize("on", [False, True])
def test_local_checkpointing_reaches_the_stage1_blocks(on: bool, monkeypatch) -> None:
    """Every LocalDenoiser of the stage-1 model takes the flag, and a training backward really recomputes
    its blocks through torch.utils.checkpoint (counted), exactly when the flag is on."""
    sm = assemble(_params("local", on), "local", None)
    model = getattr(sm, "model", sm)
    blocks = [m for m in model.modules() if isinstance(m, LocalDenoiser)]
    assert blocks and all(b.checkpointing is on for b in blocks)

    calls = []
    real = local_module.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(local_module, "checkpoint", counting)
    model.train()
    with torch.no_grad():
        for q in model.parameters():
            q.normal_(0, 0.02)
    size = model.input_size
    x0 = torch.rand(1, 1, size, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    loss, _ = D.loss(model, x0, generator=torch.Generator().manual_seed(1))
    loss.backward()
    assert (len(calls) > 0) is on


def test_global_checkpointing_still_reaches_the_dit_blocks() -> None:
    local = assemble(_params("local", False), "local", None)
    sm = assemble(_params("global", True), "global", getattr(local, "model", local))
    model = getattr(sm, "model", sm)
    assert model.dit is not None and model.dit.checkpointing is True
