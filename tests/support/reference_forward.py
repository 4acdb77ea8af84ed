"""Seeded weights and inputs shared by the forward-exactness fixture's recorder and its test.

The fixture (tests/fixtures/reference_forward/) holds only the reference implementation's outputs; the weights
and inputs are regenerated here from fixed seeds in our parameter layout, so the fixture stays small."""

from __future__ import annotations

import torch

from prdit import protocol
from prdit.model import create

# (variant, input size) at sizes the CPU handles in seconds: the stage-1 network alone (depth 0) and with
# the global DiT (depth 2; its 32^3 input is a 4^3 token grid, so positions are checked at a size other than
# the live-clone test's 128^3).
CASES = [("PRDiT-XS/12/0", 32), ("PRDiT-XS/10/2", 32)]
# (variant, input size) whose parameter count and state-dict shapes the recorder also stores (meta tensors)
COUNT_CASES = [("PRDiT-B/12/0", 128), ("PRDiT-B/12/4", 128), ("PRDiT-XL/12/4", 128)]
COUNTS_FILE = "counts.json"
WEIGHT_SEED, INPUT_SEED, WEIGHT_STD = 0, 1, 0.05
TIMESTEPS = (17, 803)


def fixture_name(name: str, size: int) -> str:
    return f"{name.replace('/', '_')}@{size}.pt"


def seeded_model(name: str, size: int) -> torch.nn.Module:
    """Our model with every parameter drawn N(0, WEIGHT_STD) from one generator, in sorted-name order.

    Built as the paper protocol builds it: the reference's top positional frequency 0.95 * grid / 2
    (the project default keeps 7.6 at every size, equal only at 128^3; docs/reproducing.md)."""
    model = create(name, size, pos_max_freq=protocol.pos_max_freq(size)).eval()
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
