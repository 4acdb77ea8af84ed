"""The IaN forward process, respacing and the training loss."""

from __future__ import annotations

import math

import pytest
import torch

import prdit.diffusion as D


def test_angle_spans_a_quarter_turn():
    assert D.angle(torch.tensor(0.0)).item() == 0.0
    assert D.angle(torch.tensor(1000.0)).item() == pytest.approx(math.pi / 2)
    assert D.angle(torch.tensor(250.0), timesteps=500).item() == pytest.approx(math.pi / 4)


def test_q_sample_has_the_ian_marginal():
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 1, 32, 32, 32, generator=g) * 2 - 1
    t = torch.tensor([0, 250, 600, 999])
    eps = torch.randn(x0.shape, generator=g) * 0.5
    xt = D.q_sample(x0, t, eps)
    for i, ti in enumerate(t.tolist()):
        b = math.pi / 2 * ti / 1000
        resid = xt[i] - math.cos(b) * x0[i]
        assert resid.std().item() == pytest.approx(0.5 * math.sin(b), abs=0.01)
    assert torch.equal(xt[0], x0[0])


class Oracle(torch.nn.Module):
    """Returns the true (eps, x0) it was told about: the loss must be exactly zero."""

    def __init__(self, x0, eps):
        super().__init__()
        self.x0, self.eps = x0, eps

    def forward(self, x, t):
        return torch.cat([self.eps, self.x0], dim=1)


def test_loss_is_zero_for_the_true_targets_and_known_for_a_zero_model():
    x0 = torch.rand(3, 1, 8, 8, 8) * 2 - 1
    g = torch.Generator().manual_seed(1)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1)) * 0.5
    t = torch.randint(0, 1000, (3,), generator=g)
    loss, parts = D.loss(Oracle(x0, eps), x0, generator=torch.Generator().manual_seed(1), t=t)
    assert loss.item() == pytest.approx(0.0, abs=1e-7)
    zero = lambda x, t: torch.zeros(x.shape[0], 2, *x.shape[2:])  # noqa: E731
    loss, parts = D.loss(zero, x0, generator=torch.Generator().manual_seed(1))
    assert parts["loss_x0"].item() == pytest.approx(x0.square().mean().item(), rel=1e-6)
    assert parts["loss_eps"].item() == pytest.approx(0.25, rel=0.1)
    assert loss.item() == pytest.approx(parts["loss_x0"].item() + parts["loss_eps"].item())


def test_loss_is_reproducible_from_the_generator_and_uses_noise_std():
    model = lambda x, t: torch.zeros(x.shape[0], 2, *x.shape[2:])  # noqa: E731
    x0 = torch.zeros(2, 1, 16, 16, 16)
    a = D.loss(model, x0, generator=torch.Generator().manual_seed(3))[0]
    b = D.loss(model, x0, generator=torch.Generator().manual_seed(3))[0]
    c = D.loss(model, x0, generator=torch.Generator().manual_seed(3), noise_std=1.0)[0]
    assert a.item() == b.item() and c.item() == pytest.approx(4 * a.item(), rel=1e-5)


def test_loss_rejects_a_model_with_the_wrong_output():
    with pytest.raises(ValueError, match="model output"):
        D.loss(lambda x, t: x, torch.zeros(1, 1, 8, 8, 8))


@pytest.mark.parametrize("steps", [1, 2, 7, 25, 999, 1000])
def test_respacing_grid(steps):
    grid = D.timestep_grid(steps, 1000)
    assert len(grid) == steps + 1 and grid[0] == 1000 and grid[-1] == 0
    assert all(a > b for a, b in zip(grid, grid[1:]))


def test_respacing_rejects_impossible_step_counts():
    for steps in (0, 1001):
        with pytest.raises(ValueError, match="steps"):
            D.timestep_grid(steps, 1000)


def test_loss_uses_given_noise_as_the_eps_target():
    x0 = torch.rand(2, 1, 8, 8, 8) * 2 - 1
    eps = torch.randn(x0.shape) * 0.5
    t = torch.tensor([10, 900])
    oracle = lambda x, tt: torch.cat([eps, x0], 1)  # noqa: E731
    assert D.loss(oracle, x0, t=t, noise=eps)[0].item() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="noise shape"):
        D.loss(oracle, x0, t=t, noise=eps[:1])
