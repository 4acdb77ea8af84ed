"""`prdit plan` and `micro_batch: auto`: FLOPs and memory on fake tensors of the real models, checked against
FlopCounterMode on real tensors and the kernel's view of a real CPU step; the auto micro-batch fits its
budget and leaves the trajectory as the explicit setting has it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from prdit.cli import main
from prdit.config import deep_merge
from prdit.diffusion.ian import loss as ian_loss
from prdit.plan import cost
from prdit.plan.cost import stage_model, train_step_bytes, train_step_flops
from prdit.plan.gpus import CUDA_OVERHEAD_GIB, MEM_FRACTION
from prdit.plan.measure import CPU_ATTENTION, count_flops
from prdit.plan.steps import micro_batch
from tests.support.project import ROOT, params_with
from tests.support.training_checks import train_stage

GIB = 2**30
SMALL = {
    "protocol": "project",
    "preprocess": {"size": 16, "highres_size": 32},
    "train": {
        "local": {"model": "PRDiT-T/8/0", "batch_size": 2, "steps": 3},
        "global": {"model": "PRDiT-T/8/1", "batch_size": 2, "steps": 3},
        "common": {"checkpoint_every": 2, "val_every": 2, "log_every": 1, "preview_every": 0},
    },
}


def small(extra: dict | None = None):
    return params_with(deep_merge(SMALL, extra or {}))


def real_step_flops(p, stage: str, **counter) -> int:
    torch.manual_seed(0)
    model = stage_model(p, stage)  # real tensors: no fake mode here
    x0 = torch.randn(1, 1, model.input_size, model.input_size, model.input_size)
    t = torch.tensor([500])
    mode = FlopCounterMode(display=False, **counter)
    with mode:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _ = ian_loss(model, x0, t=t, noise=torch.randn_like(x0) * 0.5)
        loss.backward()
    return mode.get_total_flops()


@pytest.mark.parametrize("stage", ["local", "global"])
def test_plan_flops_of_a_training_step_equal_flopcountermode_on_the_real_model(stage: str) -> None:
    p = small()
    planned = train_step_flops(p, stage)
    assert planned.total == real_step_flops(p, stage, custom_mapping=CPU_ATTENTION)
    assert (planned.attention > 0) == (stage == "global")


def test_cpu_attention_is_counted_as_its_math_forward() -> None:
    """The formula lent to the CPU kernel counts what the decomposed (math) attention multiplies."""
    q = torch.randn(2, 4, 64, 16)

    def attend() -> None:
        torch.nn.functional.scaled_dot_product_attention(q, q, q)

    with sdpa_kernel(SDPBackend.MATH):
        math_flops = count_flops(attend).total
    fused = count_flops(attend)
    assert fused.total == fused.attention == math_flops == 2 * (2 * 2 * 4 * 64 * 64 * 16)


@pytest.mark.parametrize(("stage", "micro"), [("local", 2), ("global", 2)])
def test_plan_memory_is_within_15_percent_of_a_real_cpu_step(stage: str, micro: int) -> None:
    """The estimate's growth during a step (peak minus weights, gradients' absence and AdamW state) against
    the kernel's high-water mark of the same step run for real (64^3, bf16 autocast as the plan assumes)."""
    over = deep_merge(SMALL, {"preprocess": {"size": 64, "highres_size": 128}})
    p = params_with(over)
    peak = train_step_bytes(p, stage, micro)
    model = stage_model(p, stage)
    trained = [q for q in model.parameters() if q.requires_grad]
    resident = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    resident += 2 * sum(q.numel() * 4 for q in trained)  # AdamW's exp_avg and exp_avg_sq
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "plan" / "rss_step.py"), json.dumps(over), stage, str(micro)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    measured = json.loads(out.stdout.strip().splitlines()[-1])["delta"]
    estimated = peak - resident
    assert abs(measured - estimated) <= 0.15 * measured, (measured, estimated)


def test_micro_batch_auto_fits_its_budget_and_keeps_the_trajectory(tiny_train, tmp_path: Path) -> None:
    p = small()
    one, two = train_step_bytes(p, "local", 1), train_step_bytes(p, "local", 2)
    assert two > one
    budget = (CUDA_OVERHEAD_GIB + (one + two) / 2 / GIB) / MEM_FRACTION  # room for micro-batch 1, not 2
    auto = small({"train": {"local": {"micro_batch": "auto"}, "common": {"gpu_memory_gib": budget}}})
    choice = micro_batch(auto, "local", 1)
    assert (choice.micro, choice.accum) == (1, 2)
    assert choice.bytes <= (budget * MEM_FRACTION - CUDA_OVERHEAD_GIB) * GIB
    roomy = small({"train": {"local": {"micro_batch": "auto"}, "common": {"gpu_memory_gib": 80.0}}})
    assert (micro_batch(roomy, "local", 1).micro, micro_batch(roomy, "local", 1).accum) == (2, 1)

    def weights(params, out: str) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        sm, job = train_stage(params, "phantom", "local", out_dir=tmp_path / out)
        assert job.common.grad_accum == 2
        return sm.model.state_dict()

    explicit = small({"train": {"local": {"micro_batch": 1}}})
    a, b = weights(auto, "auto"), weights(explicit, "explicit")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_explicit_micro_batch_must_divide_the_per_process_batch() -> None:
    from prdit.config import ConfigError

    with pytest.raises(ConfigError, match=r"train.local.micro_batch = 3 does not divide"):
        micro_batch(small({"train": {"local": {"micro_batch": 3}}}), "local", 1)


def test_prdit_plan_json_and_exit_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "small.yaml"
    cfg.write_text(yaml.safe_dump(SMALL))
    args = ["--root", str(ROOT), "plan", "--params", str(ROOT / "params.yaml"), "--params", str(cfg)]
    assert main([*args, "--gpu", "h100", "--json"]) == 0
    jobs = json.loads(capsys.readouterr().out)
    fields = {"job", "flops", "gpu_hours", "wall_hours", "gpu_mem_gib", "time_limit_hours", "mem_limit_gib"}
    assert fields | {"verdict"} <= set(jobs[0])
    names = [j["job"] for j in jobs]
    assert names[:3] == ["train-local/phantom", "train-global/phantom", "train-highres/phantom"]
    assert {"sample/phantom/16", "evaluate/phantom/32"} <= set(names)
    assert all(j["verdict"] == "fits" and j["flops"] > 0 for j in jobs)
    # the evaluation cannot resume: all pairs of a million volumes cannot fit its time limit
    huge = tmp_path / "huge.yaml"
    huge.write_text(yaml.safe_dump({"protocol": "paper", "sample": {"n": 1_000_000}}))
    assert main([*args, "--params", str(huge), "--gpu", "a100"]) == 1
    out = capsys.readouterr().out
    assert "over time limit" in out and "FlopCounterMode" in out


def test_prdit_plan_says_whether_its_mfu_was_measured_or_assumed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "small.yaml"
    cfg.write_text(yaml.safe_dump(SMALL))
    args = ["--root", str(ROOT), "plan", "--params", str(ROOT / "params.yaml"), "--params", str(cfg)]
    calibration = tmp_path / "gpu_calibration.json"
    monkeypatch.setattr(cost, "CALIBRATION", calibration)  # not the project's file, whatever it holds
    main([*args, "--gpu", "h100"])
    assert f"MFU assumed (no h100 entry in {calibration})" in capsys.readouterr().out
    measured = {"train": 0.5, "sample": 0.25, "evaluate": 0.125}  # exact in binary: compared with ==
    calibration.write_text(json.dumps({"h100": {"mfu": measured, "date": "2026-12-01"}}))
    main([*args, "--gpu", "h100"])
    out = capsys.readouterr().out
    assert f"MFU measured on 2026-12-01 ({calibration})" in out and "train 50%" in out
    main([*args, "--gpu", "h100", "--json"])
    jobs = json.loads(capsys.readouterr().out)
    assert {j["job"].split("/")[0].split("-")[0]: j["mfu"] for j in jobs} == measured
    calibration.write_text(json.dumps({"h100": {"mfu": {"train": 0.5}, "date": "2026-12-01"}}))
    main([*args, "--gpu", "a100"])
    assert "MFU assumed (no a100 entry" in capsys.readouterr().out
    main([*args, "--gpu", "h100"])
    assert "for train; assumed for sample, evaluate" in capsys.readouterr().out
