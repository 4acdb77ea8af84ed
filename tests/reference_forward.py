"""Seeded weights and inputs shared by the forward-exactness fixture's recorder and its test.

The fixture (tests/fixtures/reference_forward/) holds only the reference implementation's outputs; the weights
and inputs are regenerated here from fixed seeds in our parameter layout, so the fixture stays small."""

from __future__ import annotations

import torch

from prdit.model import create

# (variant, input size) at a size the CPU handles in seconds. Only the stage-1 (depth 0) network so far:
# a DiT variant recorded this way at 32^3 and 64^3 does not match yet (under investigation), while the
# live-clone test at 128^3 with the reference's own weights does.
CASES = [("PRDiT-XS/12/0", 32)]
WEIGHT_SEED, INPUT_SEED, WEIGHT_STD = 0, 1, 0.05
TIMESTEPS = (17, 803)


def fixture_name(name: str, size: int) -> str:
    return f"{name.replace('/', '_')}@{size}.pt"


def seeded_model(name: str, size: int) -> torch.nn.Module:
    """Our model with every parameter drawn N(0, WEIGHT_STD) from one generator, in sorted-name order."""
    model = create(name, size).eval()
    g = torch.Generator().manual_seed(WEIGHT_SEED)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key in sorted(params):
            p = params[key]
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32) * WEIGHT_STD)
    return model


def seeded_input(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(INPUT_SEED)
    s = model.input_size
    x = torch.randn(len(TIMESTEPS), model.in_channels, s, s, s, generator=g) * 0.5
    return x, torch.tensor(TIMESTEPS)
