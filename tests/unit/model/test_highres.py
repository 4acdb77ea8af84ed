"""Stage 3: resolution bridge, frozen backbone, residual branch at twice the size."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import prdit.diffusion as D
from prdit.evaluate.texture import diagnostics
from prdit.model import create, load, save
from prdit.model.bridge import bridge, lift
from prdit.model.highres import consistent_x0
from tests.support.oracles import MixtureOracle
from tests.support.training_checks import adamw_step

T, STD = 1000, 0.5


@pytest.mark.parametrize("t", [1, 100, 400, 700, 950, 999])
def test_bridge_puts_the_pooled_volume_on_the_backbone_marginal(t):
    """Signal coefficient cos b' and noise std 0.5 sin b', within 4 standard errors."""
    g = torch.Generator().manual_seed(t)
    x0 = F.interpolate(torch.rand(2, 1, 32, 32, 32, generator=g) * 2 - 1, scale_factor=2)  # 2^3-blocky data
    x0 = x0 + 0.2 * torch.randn(x0.shape, generator=g)  # plus fine detail the pooling averages away
    eps = torch.randn(x0.shape, generator=g) * STD
    tt = torch.full((2,), t)
    x_low, t_low, b_low = bridge(D.q_sample(x0, tt, eps), tt, T)
    b_low = b_low[0].item()
    px0 = F.avg_pool3d(x0, 2)
    noise = x_low - math.cos(b_low) * px0
    n = px0.numel()
    coef = ((x_low - x_low.mean()) * (px0 - px0.mean())).sum() / (px0 - px0.mean()).square().sum()
    se_coef = STD * math.sin(b_low) / (math.sqrt(n) * px0.std().item())
    assert abs(coef.item() - math.cos(b_low)) < 4 * se_coef + 1e-6
    assert abs(noise.std().item() / (STD * math.sin(b_low)) - 1) < 4 / math.sqrt(2 * n)
    assert abs(math.tan(b_low) - math.tan(math.pi / 2 * t / T) / math.sqrt(8)) < 1e-9 * max(
        1, math.tan(b_low)
    )
    assert t_low.tolist() == [round(b_low * 2 * T / math.pi)] * 2
    assert abs(t_low[0].item() * math.pi / 2 / T - b_low) <= math.pi / (4 * T) + 1e-12


def test_bridge_is_the_identity_on_clean_data():
    x = torch.rand(1, 1, 8, 8, 8)
    x_low, t_low, _ = bridge(x, torch.tensor([0]), T)
    assert t_low.item() == 0 and torch.allclose(x_low, F.avg_pool3d(x, 2))


def _backbone(seed=0, name="PRDiT-T/8/1", size=16):
    model = create(name, size).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model


U = 2.0**-24  # float32 unit roundoff


@pytest.mark.parametrize("t", [50, 200, 500, 800, 999])
def test_highres_starts_as_the_upsampled_backbone_pair(t):
    """Fresh branch: x0-hat = up(backbone x0-hat at the bridged level); eps-hat satisfies the IaN relation."""
    model = create(
        "PRDiT-HR-T/10/1", 64, backbone=_backbone(name="PRDiT-T/10/1", size=32)
    )  # the demo's variant
    g = torch.Generator().manual_seed(t)
    x0 = torch.rand(2, 1, 64, 64, 64, generator=g) * 2 - 1
    tt = torch.tensor([t, t // 2])
    x = D.q_sample(x0, tt, torch.randn(x0.shape, generator=g) * STD)
    out = model(x, tt)
    assert out.shape == (2, 2, 64, 64, 64)
    x_low, t_low, _ = bridge(x, tt, T)
    x0_low = consistent_x0(x_low, model.backbone(x_low, t_low), t_low, T)
    assert torch.equal(out[:, 1:], lift(x0_low))  # the branch's zero heads add exactly 0
    # pooling gives the backbone's estimate back: rounding of a few additions of values of order 1
    assert (F.avg_pool3d(out[:, 1:], 2) - x0_low).abs().max().item() <= 64 * U * x0_low.abs().max().item()
    beta = (tt.double() * math.pi / 2 / T).view(-1, 1, 1, 1, 1)
    again = torch.cos(beta) * out[:, 1:].double() + torch.sin(beta) * out[:, :1].double()
    # eps-hat = (x - cos b x0-hat) / sin b and back: a few roundings of values of order max(|x|, |x0-hat|)
    bound = 16 * U * (x.abs().max() + out[:, 1:].abs().max()).item()
    assert (again - x.double()).abs().max().item() <= bound
    assert out[:, :1].std() > 0.1  # a real noise estimate, not the zero head


def test_consistent_x0_satisfies_the_relation_and_keeps_the_sampler_direction():
    g = torch.Generator().manual_seed(7)
    x, out = torch.randn(3, 1, 8, 8, 8, generator=g), torch.randn(3, 2, 8, 8, 8, generator=g)
    t = torch.tensor([0, 400, 999])
    x0 = consistent_x0(x, out, t, T).double()
    b = (t.double() * math.pi / 2 / T).view(-1, 1, 1, 1, 1)
    c, s = torch.cos(b), torch.sin(b)
    eps = out[:, :1].double() + s * (x.double() - c * out[:, 1:].double() - s * out[:, :1].double())
    bound = 16 * U * (x.abs().max() + out.abs().max()).item()
    assert (c * x0 + s * eps - x.double()).abs().max().item() <= bound
    g_net = s * out[:, 1:].double() - c * out[:, :1].double()
    assert (s * x0 - c * eps - g_net).abs().max().item() <= bound


def test_lift_is_smooth_and_pools_back_exactly():
    v = torch.rand(2, 1, 8, 8, 8, generator=torch.Generator().manual_seed(1))
    u = lift(v)
    assert u.shape == (2, 1, 16, 16, 16)
    assert (F.avg_pool3d(u, 2) - v).abs().max().item() <= 16 * U
    tri = F.interpolate(v, scale_factor=2, mode="trilinear", align_corners=False)
    assert (F.avg_pool3d(tri, 2) - v).abs().max().item() > 0.05  # what lift fixes
    near = F.interpolate(v, scale_factor=2, mode="nearest")
    assert _texture(u) < _texture(near)  # smoother than the blocky exact upsampling


@pytest.mark.parametrize("t", [0, 1, 5, 12])
def test_near_t0_eps_hat_is_the_relation_shrunk_never_amplified_beyond_the_guard(t):
    """Below sin b = EPS_GUARD_SIN: eps-hat = (x - cos b x0-hat) sin b / guard^2 (0 at t = 0), so an
    x0-hat error is amplified by at most 1 / guard instead of 1 / sin b."""
    from prdit.model.highres import EPS_GUARD_SIN

    beta = t * math.pi / 2 / T
    assert math.sin(beta) < EPS_GUARD_SIN
    model = create("PRDiT-HR-T/8/1", 32, backbone=_backbone())
    x = torch.rand(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    out = model(x, torch.tensor([t]))
    assert torch.isfinite(out).all()
    resid = x.double() - math.cos(beta) * out[:, 1:].double()
    eps = out[:, :1].double()
    scale = math.sin(beta) / EPS_GUARD_SIN**2
    # float32 rounding of cos b * x0-hat and of the difference, times scale, plus the final product's
    atol = 4 * U * scale * (x.abs().max() + out[:, 1:].abs().max()).item()
    torch.testing.assert_close(eps, resid * scale, rtol=4 * U, atol=atol)
    assert eps.abs().max() <= resid.abs().max() / EPS_GUARD_SIN * (1 + 8 * U)
    if t == 0:
        assert torch.count_nonzero(eps) == 0


def _texture(v: torch.Tensor) -> float:
    """Mean texture (mean |second difference|) of a batch [B, 1, D, H, W], as the evaluation computes it."""
    return diagnostics(v[:, 0].numpy())["texture"]


class _OracleBackbone(torch.nn.Module):
    """A backbone that knows its data exactly (posterior mean over a few volumes): consistent eps and x0."""

    in_channels = 1
    spec = {"name": "oracle"}  # what create() records of a backbone; never saved here

    def __init__(self, volumes: torch.Tensor) -> None:
        super().__init__()
        self.input_size = volumes.shape[-1]
        self.oracle = MixtureOracle(volumes)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.oracle(x, t)


def test_an_untrained_branch_samples_at_the_upsampled_backbone_quality():
    """Sampling at 2x with a fresh branch leaves no noise in: its texture is that of the upsampled
    backbone samples (same seeds; upsampled by `lift`, the model's own upsampling: trilinear would
    blur away the fine detail both keep), where eps-hat = 0 beside the same x0-hat (the old start)
    leaves noise in (texture many times higher)."""
    g = torch.Generator().manual_seed(0)
    data = F.interpolate(torch.rand(4, 1, 4, 4, 4, generator=g) * 2 - 1, scale_factor=4, mode="trilinear")
    data = (data + 0.1 * torch.rand(4, 1, 16, 16, 16, generator=g)).clamp(-1, 1)  # shapes plus fine detail
    backbone = _OracleBackbone(data)
    hr = create("PRDiT-HR-T/8/1", 32, backbone=backbone).eval()
    seeds = [0, 1, 2]
    low = D.sample(backbone, (3, 1, 16, 16, 16), D.SamplerOptions(steps=25, k=2), seeds=seeds)
    up = lift(low)
    high = D.sample(hr, (3, 1, 32, 32, 32), D.SamplerOptions(steps=25, k=2), seeds=seeds)
    ratio = _texture(high) / _texture(up)
    assert 0.7 <= ratio <= 1.3, ratio
    noise = D.sample(
        lambda x, t: torch.cat([torch.zeros_like(x), hr.prior(x, t)], 1),
        (3, 1, 32, 32, 32),
        D.SamplerOptions(steps=25, k=2),
        seeds=seeds,
    )  # the old start: eps-hat = 0 beside the same x0-hat
    assert _texture(noise) / _texture(up) > 2 * ratio


def test_highres_rejects_a_backbone_of_the_wrong_size():
    with pytest.raises(ValueError, match="twice the backbone"):
        create("PRDiT-HR-T/8/1", 48, backbone=_backbone())


def test_only_the_branch_trains_and_the_backbone_gets_no_gradients():
    backbone = _backbone()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    model = create("PRDiT-HR-T/8/1", 32, backbone=backbone)
    seen = []
    model.backbone.register_forward_hook(lambda m, i, o: seen.append(o.requires_grad))
    model.train()
    adamw_step(model, torch.rand(1, 1, 32, 32, 32) * 2 - 1)
    assert seen == [False]
    assert all(torch.equal(v, before[k]) for k, v in model.backbone.state_dict().items())
    assert all(p.grad is None and not p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.branch.parameters())
    assert model.branch.local.linear_final.weight.grad.abs().sum() > 0
    assert not model.backbone.training


def test_activation_checkpointing_gives_the_same_gradients():
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = create("PRDiT-HR-T/8/1", 32, backbone=create("PRDiT-T/8/1", 16), checkpointing=ckpt)
        with torch.no_grad():
            for p in model.branch.parameters():
                p.normal_(0, 0.02)
        loss, _ = D.loss(
            model,
            torch.rand(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(1)),
            generator=torch.Generator().manual_seed(2),
        )
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.branch.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def test_highres_model_file_roundtrip(tmp_path):
    model = create("PRDiT-HR-T/8/1", 32, backbone=_backbone())
    with torch.no_grad():
        for p in model.branch.parameters():
            p.normal_(0, 0.01)
    save(tmp_path / "model.pt", model, meta={"stage": "highres"})
    back = load(tmp_path / "model.pt")
    x, t = torch.randn(1, 1, 32, 32, 32) * 0.5, torch.tensor([321])
    assert torch.equal(model(x, t), back(x, t))
    assert not any(p.requires_grad for p in back.backbone.parameters())


def test_highres_sampling_calls_the_backbone_at_the_bridged_timesteps():
    model = create("PRDiT-HR-T/8/1", 32, backbone=_backbone()).eval()
    labels = []
    model.backbone.register_forward_hook(lambda m, i, o: labels.append(i[1][0].item()))
    y = D.sample(model, (1, 1, 32, 32, 32), D.SamplerOptions(steps=4, k=2), seeds=[0])
    assert y.shape == (1, 1, 32, 32, 32) and torch.isfinite(y).all()
    grid = [min(t, T - 1) for t in D.timestep_grid(4, T)[:-1]]
    want = [round(math.atan(math.tan(math.pi / 2 * t / T) / math.sqrt(8)) * 2 * T / math.pi) for t in grid]
    assert labels == want
