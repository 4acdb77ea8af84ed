"""Training engine: stage wiring and freezing, data stream, non-finite handling, checkpoints (CPU, in-process)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import prdit.model as models
from prdit.config import deep_merge, from_dict
from prdit.stages import _models
from prdit.stages.train import job_from_params
from prdit.train import data, distributed, stages
from prdit.train import resume as ckpt
from prdit.train.engine import Job, NonFiniteLossError, fit
from tests.support.training_checks import (
    assert_same_adam_weights,
    assert_same_sgd_updates,
    flat_update,
    make_job,
    per_sample_loss,
    sgd_instead_of_adamw,
    train_stage,
    volumes,
)

DS = "phantom"


def _frozen(model: torch.nn.Module, trained: list[str]) -> dict[str, torch.Tensor]:
    return {n: q.detach().clone() for n, q in model.named_parameters() if n not in set(trained)}


def test_stage_chain_freezes_parents_bitwise_and_computes_no_grads(tiny_train) -> None:
    train_stage(tiny_train, DS, "local", preview_n=0)
    local_file = Path("models", DS, "local", "model.pt")
    local_sd = torch.load(local_file, weights_only=True)["state_dict"]
    assert json.loads(Path("models", DS, "local", "metrics.json").read_text())["steps"] == 3

    sm = _models.build(tiny_train, DS, "global")
    before = _frozen(sm.model, sm.trained)
    assert before and all(n.startswith(("t_embed.shared", "t_embed.local_head", "local.")) for n in before)
    assert all(torch.equal(before[n], local_sd[n]) for n in before)  # the stage-1 weights came from its file
    trained_before = {n: q.detach().clone() for n, q in sm.model.named_parameters() if n in sm.trained}
    job = job_from_params(tiny_train, DS, "global", sm.parents).with_settings(preview_n=1, preview_steps=2)
    vols = volumes(4, 16)
    assert fit(job, sm, vols, vols[:2]) == 0
    for n, q in sm.model.named_parameters():
        if n in before:
            assert torch.equal(q, before[n]), n
            assert q.grad is None, f"{n} got a gradient"
    assert any(
        not torch.equal(q, trained_before[n]) for n, q in sm.model.named_parameters() if n in sm.trained
    )
    saved = models.load(Path("models", DS, "global", "model.pt"))
    assert all(torch.equal(saved.state_dict()[n], local_sd[n]) for n in before)
    assert saved.meta["stage"] == "global" and len(saved.meta["data_hash"]) == 16
    assert str(local_file) in saved.meta["parents"]
    assert Path("models", DS, "global", "previews", "step_0000003.png").exists()

    hr = _models.build(tiny_train, DS, "highres")
    assert hr.input_size == 32
    backbone = _frozen(hr.model, hr.trained)
    global_sd = saved.state_dict()
    assert len(backbone) >= len(global_sd) and hr.trained
    job = job_from_params(tiny_train, DS, "highres", hr.parents).with_settings(preview_n=0)
    vols = volumes(2, 32)
    assert fit(job, hr, vols, vols[:1]) == 0
    for n, q in hr.model.named_parameters():
        if n in backbone:
            assert torch.equal(q, backbone[n]) and q.grad is None, n
    assert models.load(Path("models", DS, "highres", "model.pt")).meta["stage"] == "highres"


def test_missing_parent_is_a_clear_error(tiny_train) -> None:
    with pytest.raises(FileNotFoundError, match="models/phantom/local/model.pt.*--stage local"):
        _models.build(tiny_train, DS, "global")


def test_grad_accumulation_matches_the_full_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    start = models.create("PRDiT-T/8/0", 16).state_dict()

    def run(accum: int, out: str) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = models.create("PRDiT-T/8/0", 16)
        sm = stages.StageModel(model, 16, [n for n, _ in model.named_parameters()])
        job = make_job(
            tmp_path / out,
            steps=3,
            batch_size=4,
            grad_accum=accum,
            lr=1e-3,
            ema_decay=0.5,
            checkpoint_every=100,
            val_every=100,
            log_every=1,
            preview_n=0,
        )
        assert fit(job, sm, volumes(6, 16), None, loss_fn=per_sample_loss(job)) == 0
        return model.state_dict()

    assert_same_adam_weights(run(1, "a"), run(2, "b"), lr=1e-3, steps=3)
    monkeypatch.setattr(torch.optim, "AdamW", sgd_instead_of_adamw)
    assert_same_sgd_updates(flat_update(run(1, "c"), start), flat_update(run(2, "d"), start))


def _nan_after(job: Job, bad: set[int]):
    base = per_sample_loss(job)

    def loss_fn(model, x0, positions, stream):
        loss, parts = base(model, x0, positions, stream)
        if stream == 0 and positions[0] // job.train.batch_size in bad:
            loss = loss * float("nan")
        return loss, parts

    return loss_fn


def _tiny_job(out: Path, **kw) -> tuple[Job, stages.StageModel]:
    torch.manual_seed(0)
    model = models.create("PRDiT-T/8/0", 16)
    sm = stages.StageModel(model, 16, [n for n, _ in model.named_parameters()])
    job = make_job(out, batch_size=2, lr=1e-3, log_every=1, preview_n=0, **kw)
    return job, sm


def test_nonfinite_losses_are_skipped_and_counted(tmp_path: Path) -> None:
    job, sm = _tiny_job(tmp_path, steps=4, max_nonfinite=3, checkpoint_every=1, val_every=100)
    assert fit(job, sm, volumes(4, 16), None, loss_fn=_nan_after(job, {1, 2})) == 0  # attempts 1, 2 fail
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["nonfinite_skipped"] == 2 and metrics["steps"] == 4
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["step"] == 4 and state["data_position"] == 6 * job.train.batch_size


def test_nonfinite_run_aborts_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    job, sm = _tiny_job(tmp_path, steps=10, max_nonfinite=3, checkpoint_every=2, val_every=100)
    with pytest.raises(NonFiniteLossError, match="3 non-finite losses in a row.*max_nonfinite=3"):
        fit(job, sm, volumes(4, 16), None, loss_fn=_nan_after(job, set(range(3, 100))))
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for part in ("model", "ema") for v in state[part].values())
    assert not (tmp_path / "model.pt").exists()


def test_checkpoint_refuses_nonfinite_weights_and_keeps_the_previous(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    good = {"step": 1, "model": {"w": torch.ones(3)}, "ema": {"w": torch.ones(3)}}
    ckpt.save(path, good)
    with pytest.raises(ckpt.NonFiniteWeightsError, match="'w' is not finite at step 2"):
        ckpt.save(
            path, {"step": 2, "model": {"w": torch.tensor([1.0, float("inf"), 0.0])}, "ema": good["ema"]}
        )
    assert torch.load(path, weights_only=True)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_foreign_checkpoint_is_moved_aside_not_resumed(tmp_path: Path) -> None:
    job, sm = _tiny_job(tmp_path, steps=2, checkpoint_every=1, val_every=100, fingerprint={"lr": 1.0})
    assert fit(job, sm, volumes(4, 16), None) == 0
    job2, sm2 = _tiny_job(tmp_path, steps=1, checkpoint_every=1, val_every=100, fingerprint={"lr": 2.0})
    assert fit(job2, sm2, volumes(4, 16), None) == 0
    assert torch.load(tmp_path / "last.stale-0.pt", weights_only=True)["step"] == 2
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 1


def test_finished_checkpoint_only_refinalizes(tmp_path: Path) -> None:
    job, sm = _tiny_job(tmp_path, steps=2, checkpoint_every=100, val_every=100)
    assert fit(job, sm, volumes(4, 16), None) == 0
    first = torch.load(tmp_path / "model.pt", weights_only=True)["state_dict"]
    (tmp_path / "model.pt").unlink()
    job, sm = _tiny_job(tmp_path, steps=2, checkpoint_every=100, val_every=100)
    assert fit(job, sm, volumes(4, 16), None) == 0
    again = torch.load(tmp_path / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert json.loads((tmp_path / "metrics.json").read_text())["steps_this_run"] == 0


def test_stream_splits_one_global_batch_over_ranks_and_micro_steps() -> None:
    def step_positions(world: int, accum: int, start: int = 0) -> list[list[int]]:
        per_rank = [iter(data.MicroBatches(start, 8, accum, r, world)) for r in range(world)]
        steps = []
        for _ in range(3):
            pos = [p for _ in range(accum) for it in per_rank for p in next(it)]
            steps.append(sorted(pos))
        return steps

    single = step_positions(1, 1)
    assert single == [list(range(0, 8)), list(range(8, 16)), list(range(16, 24))]
    assert step_positions(2, 1) == step_positions(4, 2) == step_positions(2, 4) == single
    assert step_positions(2, 2, start=8) == single[1:] + [list(range(24, 32))]
    with pytest.raises(ValueError, match="not divisible"):
        data.MicroBatches(0, 6, 2, 0, 2)


def test_stream_visits_every_item_once_per_epoch_in_a_seeded_order() -> None:
    stream = data.SampleStream(list(range(5)), seed=3)
    epochs = [[stream[n][0] for n in range(e * 5, e * 5 + 5)] for e in range(3)]
    assert all(sorted(e) == list(range(5)) for e in epochs)
    assert epochs[0] != epochs[1] or epochs[1] != epochs[2]
    assert [data.SampleStream(list(range(5)), seed=3)[n][0] for n in range(15)] == sum(epochs, [])


def test_noise_of_a_sample_does_not_depend_on_its_batch() -> None:
    cpu = torch.device("cpu")
    t4, n4 = data.draw([10, 11, 12, 13], (1, 4, 4, 4), seed=1, timesteps=1000, device=cpu)
    t1, n1 = data.draw([12], (1, 4, 4, 4), seed=1, timesteps=1000, device=cpu)
    assert torch.equal(t4[2:3], t1) and torch.equal(n4[2:3], n1)
    _, other = data.draw([12], (1, 4, 4, 4), seed=1, timesteps=1000, device=cpu, stream=1)
    assert not torch.equal(other, n1)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, (0, 1, 0)),
        ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}, (3, 4, 1)),
        (
            {"SLURM_PROCID": "2", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "2", "SLURM_NTASKS": "8"},
            (2, 8, 2),
        ),
        ({"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}, (0, 1, 0)),  # the batch script itself, not an srun step
    ],
)
def test_launcher_detection(env: dict[str, str], expected: tuple[int, int, int]) -> None:
    assert distributed.detect(env) == expected


def test_warmup_ramps_the_learning_rate(tmp_path: Path) -> None:
    class Run:
        lrs: list[float] = []

        def log_metrics(self, metrics, step=None):
            if "train/lr" in metrics:
                self.lrs.append(metrics["train/lr"])

        def __getattr__(self, name):
            return lambda *a, **k: None

    job, sm = _tiny_job(tmp_path, steps=5, warmup_steps=4, checkpoint_every=100, val_every=100)
    run = Run()
    assert fit(job, sm, volumes(2, 16), None, run=run) == 0
    assert run.lrs == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3])


def test_the_job_holds_the_typed_settings_and_every_trajectory_setting_is_in_the_fingerprint(
    tiny_train,
) -> None:
    """A parameter added to TrainCommon/TrainStage reaches the loop and the resume check without copying."""
    job = job_from_params(tiny_train, DS, "local")
    assert job.common is tiny_train.train.common and job.train is tiny_train.train.local
    assert job.diffusion is tiny_train.diffusion

    def fingerprint(section: str, name: str, value: object) -> dict:
        changed = from_dict(deep_merge(tiny_train.raw, {"train": {section: {name: value}}}))
        return job_from_params(changed, DS, "local").fingerprint

    for section, settings in (("common", tiny_train.train.common), ("local", tiny_train.train.local)):
        for f in dataclasses.fields(settings):
            old = getattr(settings, f.name)
            if old is None:  # the optional settings unset by default
                new = {"micro_batch": 1, "gpu_memory_gib": 40.0}[f.name]
            elif isinstance(old, bool):
                new = not old
            elif isinstance(old, str):
                new = "PRDiT-T/8/1"  # another valid model (the only text setting)
            else:  # a rate in (0, 1) stays in it halved; counts and the rest grow
                new = old / 2 if isinstance(old, float) and 0 < old < 1 else old + 1
            moved = fingerprint(section, f.name, new) != job.fingerprint
            assert moved == (f.metadata.get("decides_weights", True)), f"train.{section}.{f.name}"


def test_job_but_changes_a_setting_in_its_section_and_refuses_unknown_names(tmp_path: Path) -> None:
    job = make_job(tmp_path, steps=7, ema_decay=0.5, noise_std=0.25, preview_n=0)
    assert (job.train.steps, job.common.ema_decay, job.diffusion.noise_std, job.preview_n) == (
        7,
        0.5,
        0.25,
        0,
    )
    with pytest.raises(TypeError, match="'stepz' is not a setting"):
        job.with_settings(stepz=3)


def test_lr_at_warms_up_linearly_then_holds() -> None:
    from prdit.train.engine import lr_at
    from tests.support.project import params_with

    p = params_with({"train": {"common": {"warmup_steps": 4}, "local": {"lr": 1e-3}}})
    lrs = [lr_at(step, p.train.local, p.train.common) for step in range(6)]
    # one rounding of lr x fraction: a relative error of at most 2**-53 each
    assert lrs == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3], rel=2**-52)
    no_warmup = params_with({"train": {"common": {"warmup_steps": 0}}})
    assert lr_at(0, no_warmup.train.global_, no_warmup.train.common) == no_warmup.train.global_.lr
