"""One training engine for every stage: AdamW + EMA, DDP, exact resume, preemption-safe, tracked.

`fit` is the loop itself, usable with any model that follows the model contract; `prdit train`
(prdit.stages.train.run) builds its Job from the parameters and calls it. Exit statuses: see
signals.py (0 done, 75 stopped by SIGTERM/SIGUSR1 with last.pt written: rerun to resume).

Numerics: bf16 autocast on CUDA (no loss scaler needed, fp16 is not offered), fp32 on the CPU; AdamW
on the stage's trainable parameters only; gradient clipping on their global norm; EMA of those
parameters from step 1 (the frozen parts are shared, not copied). A step whose loss or gradient norm
is non-finite on any rank is skipped by all ranks. Per-sample time and noise depend only on the
sample's position in the data stream (data.py), so a resumed run is bitwise identical on the CPU.
`train.common.compile` compiles in a warm-up before the first step, eager if that fails (compiling.py).

Files (rank 0 only) in models/<dataset>/<stage>/:
  last.pt       resume checkpoint, every `train.common.checkpoint_every` steps, on a stop signal and
                at the end; picked up automatically by the next run with the same settings.
  model.pt      EMA weights + model config + provenance, via prdit.model.save (written last).
  metrics.json  final losses, steps and throughput (DVC metrics).
  previews/     PNG montages of EMA samples.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Dataset

import prdit.model as models
from prdit.config import TrainCommon, TrainStage
from prdit.diffusion import SamplerOptions
from prdit.diffusion import loss as ian_loss
from prdit.errors import PrditError
from prdit.io import write_json
from prdit.train import compiling, data, distributed, stages
from prdit.train import resume as ckpt
from prdit.train.distributed import DistEnv
from prdit.train.ema import EMA
from prdit.train.job import Job, NullRun
from prdit.train.meter import Meter
from prdit.train.signals import EXIT_OK, StopRequest
from prdit.train.validate import LossFn, preview, val_loss

log = logging.getLogger(__name__)


class NonFiniteLossError(PrditError, RuntimeError):
    """Too many non-finite losses in a row: the run diverged."""


# ----------------------------------------------------------------------------------------------
# the loop


def fit(
    job: Job,
    stage_model: stages.StageModel,
    train_set: Dataset,
    val_set: Dataset | None,
    *,
    env: DistEnv | None = None,
    run: Any = None,
    stop: StopRequest | None = None,
    loss_fn: LossFn | None = None,
) -> int:
    """Train `stage_model` for `job.train.steps` optimizer steps (resuming from last.pt); return the exit status."""
    loop = _Loop(
        job,
        stage_model,
        env or DistEnv(0, 1, 0, torch.device("cpu")),
        run or NullRun(),
        loss_fn or diffusion_loss(job),
    )
    return loop.run(train_set, val_set, stop or StopRequest())


def lr_at(step: int, train: TrainStage, common: TrainCommon) -> float:
    """The learning rate of optimizer step `step` (0-based): linear warm-up over train.common.warmup_steps,
    then train.<stage>.lr."""
    if common.warmup_steps:
        return train.lr * min(1.0, (step + 1) / common.warmup_steps)
    return train.lr


@dataclass(frozen=True)
class StepResult:
    """What one optimizer step did: whether it applied (finite on every rank), whether every rank agreed to
    stop, the step's values (loss, loss parts, grad_norm) and the seconds spent waiting for data."""

    stepped: bool
    stopping: bool
    values: dict[str, float]
    wait: float


class _Loop:
    """The state of one training invocation: model, optimizer, EMA, counters."""

    def __init__(self, job: Job, sm: stages.StageModel, env: DistEnv, run: Any, loss_fn: LossFn) -> None:
        self.job, self.sm, self.env, self.tracker, self.loss_fn = job, sm, env, run, loss_fn
        self.last_path = job.out_dir / "last.pt"
        self.bare = sm.model.to(env.device)
        trained = set(sm.trained)
        self.params = [q for n, q in self.bare.named_parameters() if n in trained]
        frozen = {n for n, _ in self.bare.named_parameters() if n not in trained}
        self.owned = {k for k in self.bare.state_dict() if k not in frozen}  # what last.pt stores
        # fused: one kernel for all tensors, on CUDA and on the CPU (4x the default's speed there)
        self.opt = torch.optim.AdamW(
            self.params, lr=job.train.lr, betas=(0.9, 0.999), weight_decay=job.common.weight_decay, fused=True
        )
        self.ema = EMA(self.bare, job.common.ema_decay, sm.trained)
        self.step = self.position = self.skipped = 0
        self.saved_step = -1
        self.net: nn.Module = self.bare
        if env.distributed:
            self.net = DDP(
                self.bare,
                device_ids=[env.device.index] if env.device.type == "cuda" else None,
                gradient_as_bucket_view=True,
            )

    def compile(self, micro: int) -> None:
        """train.common.compile: compile the network in a warm-up now (prdit.train.compiling), else eager."""
        if self.job.common.compile:
            self.net = compiling.compile_or_eager(
                self.net,
                self.job.common.compile,
                lambda net: self.warm_up(net, micro),
                agree=lambda failed: distributed.any_rank(self.env, failed)[0],
                cache_dir=self.job.compile_cache,
            )

    def warm_up(self, net: nn.Module, micro: int) -> None:
        """One forward and backward of `net` on a zero micro-batch, leaving every state of the run as it was:
        RNG streams forked, no gradient sync (DDP), gradients dropped, optimizer and EMA untouched."""
        env, raw = self.env, self.bare
        x = torch.zeros(
            (micro, getattr(raw, "in_channels", 1), *(self.sm.input_size,) * 3), device=env.device
        )
        cuda = [env.device.index] if env.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            with net.no_sync() if env.distributed else contextlib.nullcontext():  # type: ignore[operator]
                with self.autocast():
                    loss, _ = self.loss_fn(net, x, list(range(micro)), 0)
                loss.backward()
        for q in self.bare.parameters():
            q.grad = None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.env.device.type == "cuda" and self.job.bf16_autocast:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # checkpoints -------------------------------------------------------------------------------
    def restore(self) -> None:
        state, foreign = ckpt.load(self.last_path, self.job.fingerprint)  # on the CPU: RNG states live there
        if state is not None and state["step"] > self.job.train.steps:
            state, foreign = None, f"it is at step {state['step']}, past train steps={self.job.train.steps}"
        distributed.barrier(self.env)  # every rank has read last.pt before it may move
        if foreign and self.env.is_main:
            ckpt.move_aside(self.last_path, foreign)
        if state is None:
            return
        missing = sorted(self.owned - set(state["model"]))
        if missing:
            raise KeyError(f"{self.last_path}: lacks model entry {missing[0]!r} ({len(missing)} missing)")
        self.bare.load_state_dict(state["model"], strict=False)
        self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["optimizer"])
        ckpt.set_rng_state(state["rng"])
        self.step, self.position, self.skipped = (
            state["step"],
            state["data_position"],
            state["nonfinite_total"],
        )
        self.saved_step = self.step
        if self.env.is_main:
            log.info("resumed %s from %s at step %d", self.job.stage, self.last_path, self.step)

    def save(self) -> None:
        if self.env.is_main:
            ckpt.save(
                self.last_path,
                {
                    "stage": self.job.stage,
                    "fingerprint": self.job.fingerprint,
                    "step": self.step,
                    "data_position": self.position,
                    "nonfinite_total": self.skipped,
                    "world_size": self.env.world_size,
                    "model": {k: v for k, v in self.bare.state_dict().items() if k in self.owned},
                    "ema": self.ema.state_dict(),
                    "optimizer": self.opt.state_dict(),
                    "rng": ckpt.rng_state(),
                },
            )
        self.saved_step = self.step
        distributed.barrier(self.env)

    # one optimizer step ------------------------------------------------------------------------
    def attempt(self, batches: Iterator, stop: StopRequest) -> StepResult:
        """Accumulate gradients over the micro-batches of one step and apply them unless non-finite; one
        device sync and one collective per step."""
        job, env = self.job, self.env
        for g in self.opt.param_groups:
            g["lr"] = lr_at(self.step, job.train, job.common)
        self.opt.zero_grad(set_to_none=True)
        sums: dict[str, torch.Tensor] = {"loss": torch.zeros((), device=env.device)}
        wait = 0.0
        for a in range(job.common.grad_accum):
            t0 = time.perf_counter()
            x, pos = next(batches)  # on env.device, float16 (data.DeviceFeed)
            wait += time.perf_counter() - t0
            x = x.float()  # exact (every float16 is a float32): the loss is a float32 loader's, to the bit
            last = a == job.common.grad_accum - 1
            with self.net.no_sync() if env.distributed and not last else contextlib.nullcontext():
                with self.autocast():
                    loss, parts = self.loss_fn(self.net, x, pos.tolist(), 0)
                (loss / job.common.grad_accum).backward()
            for k, v in {"loss": loss, **parts}.items():
                sums[k] = (
                    sums.get(k, 0)
                    + torch.as_tensor(v, device=env.device).detach().float() / job.common.grad_accum
                )
        self.position += job.train.batch_size
        norm = torch.nn.utils.clip_grad_norm_(
            self.params, job.common.grad_clip if job.common.grad_clip > 0 else math.inf
        )
        values = dict(zip([*sums, "grad_norm"], torch.stack([*sums.values(), norm.float()]).tolist()))
        bad = not all(math.isfinite(v) for v in values.values())
        bad, stopping = distributed.any_rank(env, bad, stop.requested)
        if bad:
            self.opt.zero_grad(set_to_none=True)
            return StepResult(False, stopping, values, wait)
        self.opt.step()
        self.ema.update()
        self.step += 1
        return StepResult(True, stopping, values, wait)

    def validate(self, loader: DataLoader) -> dict[str, float]:
        return {
            "val/loss": val_loss(self.bare, loader, self.loss_fn, self.env, autocast=self.autocast),
            "val/loss_ema": val_loss(self.ema.module, loader, self.loss_fn, self.env, autocast=self.autocast),
        }

    # the loop ----------------------------------------------------------------------------------
    def run(self, train_set: Dataset, val_set: Dataset | None, stop: StopRequest) -> int:
        """Resume, train to job.train.steps (or to a stop signal: exit status 75), validate, finalise."""
        self.restore()
        if self.step >= self.job.train.steps and _finished(self.job.out_dir):
            if self.env.is_main:  # a finished stage re-run changes nothing (model.pt, metrics.json kept)
                log.info(
                    "%s already finished at step %d in %s: nothing to do",
                    self.job.stage,
                    self.step,
                    self.job.out_dir,
                )
            distributed.barrier(self.env)
            return EXIT_OK
        loader, vloader = self.loaders(train_set, val_set)
        micro = loader.batch_sampler.micro  # type: ignore[attr-defined]
        self.log_shape(micro)
        self.bare.train()
        self.compile(micro)
        meter = Meter(self.env, self.job.train.batch_size)
        last_val: dict[str, float] = {}
        batches: Iterator = data.DeviceFeed(loader, self.env.device)
        try:
            status = self.steps(batches, meter, vloader, last_val, stop)
        finally:
            del batches  # shuts the loader's workers down
        if status is not None:
            return status
        self.finish(meter, vloader, last_val)
        return EXIT_OK

    def loaders(self, train_set: Dataset, val_set: Dataset | None) -> tuple[DataLoader, DataLoader | None]:
        """The training stream from this run's data position, and the validation loader (None: no val set)."""
        job, env = self.job, self.env
        pin = env.device.type == "cuda"
        batches = data.MicroBatches(
            start=self.position,
            global_batch=job.train.batch_size,
            accum=job.common.grad_accum,
            rank=env.rank,
            world_size=env.world_size,
        )
        loader = data.train_loader(
            train_set, batches, seed=job.common.seed, workers=job.common.num_workers, pin=pin
        )
        vloader = None
        if val_set is not None and len(val_set) > 0:  # type: ignore[arg-type]
            vloader = data.val_loader(
                val_set,
                batch=batches.micro,
                rank=env.rank,
                world_size=env.world_size,
                workers=job.common.num_workers,
                pin=pin,
            )
        return loader, vloader

    def log_shape(self, micro: int) -> None:
        """The run's shape, in MLflow params and one log line (rank 0)."""
        job, env = self.job, self.env
        if not env.is_main:
            return
        self.tracker.log_params(
            {
                "train.world_size": env.world_size,
                "train.micro_batch": micro,
                "train.trained_parameters": sum(q.numel() for q in self.params),
            }
        )
        log.info(
            "%s: steps %d..%d, global batch %d = %d process(es) x %d micro-batch x %d accumulation",
            job.stage,
            self.step,
            job.train.steps,
            job.train.batch_size,
            env.world_size,
            micro,
            job.common.grad_accum,
        )

    def steps(
        self,
        batches: Iterator,
        meter: Meter,
        vloader: DataLoader | None,
        last_val: dict[str, float],
        stop: StopRequest,
    ) -> int | None:
        """Optimizer steps up to job.train.steps; the exit status when a stop signal ends them early."""
        bad_in_row = 0
        while self.step < self.job.train.steps:
            t0 = time.perf_counter()
            result = self.attempt(batches, stop)
            if result.stepped:
                bad_in_row = 0
                meter.add(result.values, time.perf_counter() - t0, result.wait)
                self.after_step(meter, vloader, last_val)
            else:
                bad_in_row += 1
                self.skip(bad_in_row)
            if result.stopping and self.step < self.job.train.steps:
                return self.stop_early(stop)
        return None

    def skip(self, bad_in_row: int) -> None:
        """The non-finite policy: a skipped step is logged; train.common.max_nonfinite in a row stop the run."""
        job = self.job
        self.skipped += 1
        if self.env.is_main:
            log.warning(
                "non-finite loss or gradient at step %d (%d in a row, %d in all): step skipped",
                self.step + 1,
                bad_in_row,
                self.skipped,
            )
        if bad_in_row >= job.common.max_nonfinite:
            raise NonFiniteLossError(
                f"{job.stage}: {bad_in_row} non-finite losses in a row at step {self.step + 1} "
                f"(train.common.max_nonfinite={job.common.max_nonfinite}); the last good checkpoint is "
                f"{self.last_path}. Lower the learning rate or check the input data."
            )

    def stop_early(self, stop: StopRequest) -> int:
        """A stop signal agreed by every rank: checkpoint (if this step is not saved yet), exit status 75."""
        if self.step != self.saved_step:
            self.save()
        if self.env.is_main:
            log.warning(
                "stop signal %s at step %d: checkpoint in %s, exit status %d",
                stop.signum,
                self.step,
                self.last_path,
                stop.exit_status,
            )
            self.tracker.set_tags({"prdit.exit": "requeue", "prdit.stopped_at_step": self.step})
            self.tracker.status = "KILLED"
        return stop.exit_status

    def finish(self, meter: Meter, vloader: DataLoader | None, last_val: dict[str, float]) -> None:
        """The final validation (when resumed at the last step), previews, model.pt and metrics.json."""
        job, env = self.job, self.env
        if vloader is not None and not last_val:  # resumed at the last step
            last_val.update(self.validate(vloader))
        if job.preview_n:
            self.preview()
        if env.is_main:
            final = self.bare if job.final_weights == "online" else self.ema.module
            _finalize(job, final, meter, last_val, self.skipped, env, self.tracker)
        distributed.barrier(env)

    def after_step(self, meter: Meter, vloader: DataLoader | None, last_val: dict[str, float]) -> None:
        """Logging, validation, previews and checkpoints due at this step."""
        job, step, end = self.job, self.step, self.step == self.job.train.steps
        if step % job.common.log_every == 0 or end:
            metrics = meter.flush()
            metrics.update(
                {"train/lr": self.opt.param_groups[0]["lr"], "train/nonfinite_skipped": self.skipped}
            )
            if self.env.is_main:
                self.tracker.log_metrics(metrics, step=step)
                log.info(
                    "%s step %d/%d loss %.5f | %.3f s/step, data wait %.3f s | %.2f vol/s",
                    job.stage,
                    step,
                    job.train.steps,
                    metrics["train/loss"],
                    metrics["perf/step_time_s"],
                    metrics["perf/data_wait_s"],
                    metrics["perf/volumes_per_s"],
                )
        if vloader is not None and (step % job.common.val_every == 0 or end):
            last_val.update(self.validate(vloader))
            if self.env.is_main:
                self.tracker.log_metrics(last_val, step=step)
        if job.preview_n and job.common.preview_every and step % job.common.preview_every == 0 and not end:
            self.preview()
        if step % job.common.checkpoint_every == 0 or end:
            self.save()

    def preview(self) -> None:
        if self.env.is_main:
            job, step = self.job, self.step
            try:
                png = preview(
                    self.ema.module,
                    self.sm.input_size,
                    job.out_dir / "previews" / f"step_{step:07d}.png",
                    n=job.preview_n,
                    options=SamplerOptions(
                        steps=job.preview_steps,
                        k=job.preview_k,
                        timesteps=job.diffusion.timesteps,
                        noise_std=job.diffusion.noise_std,
                    ),
                    device=self.env.device,
                    title=f"{job.stage} step {step}",
                )
                self.tracker.log_image(png, artifact_path="previews")
            except Exception as exc:  # noqa: BLE001 - a preview is for looking, never a reason to lose a run
                log.warning("preview at step %d failed: %s", step, exc)
        distributed.barrier(self.env)


def _finished(out_dir: Path) -> bool:
    """model.pt and metrics.json of a completed run are both there."""
    return (out_dir / "model.pt").is_file() and (out_dir / "metrics.json").is_file()


def _finalize(
    job: Job,
    ema_model: nn.Module,
    meter: Meter,
    last_val: dict[str, float],
    skipped: int,
    env: DistEnv,
    run: Any,
) -> None:

    bad = ckpt.all_finite(dict(ema_model.state_dict()))
    if bad is not None:
        raise ckpt.NonFiniteWeightsError(f"EMA weight {bad!r} is not finite: model.pt not written")
    models.save(job.out_dir / "model.pt", ema_model, meta={**job.meta, "steps": job.train.steps})
    totals = meter.totals()
    metrics = {
        "stage": job.stage,
        "steps": job.train.steps,
        "global_batch": job.train.batch_size,
        "world_size": env.world_size,
        "final_train_loss": meter.final_loss,
        "val_loss": last_val.get("val/loss"),
        "val_loss_ema": last_val.get("val/loss_ema"),
        "nonfinite_skipped": skipped,
        **totals,
    }
    metrics = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in metrics.items()}
    write_json(job.out_dir / "metrics.json", metrics)
    run.log_metrics(
        {f"final/{k}": v for k, v in metrics.items() if isinstance(v, float)}, step=job.train.steps
    )
    run.log_artifact(job.out_dir / "metrics.json")
    run.log_model_file(job.out_dir / "model.pt")  # the stage's weights, reachable from its run under model/
    log.info("%s done: %s", job.stage, ", ".join(f"{k}={v}" for k, v in metrics.items()))


# ----------------------------------------------------------------------------------------------
# the loss


def diffusion_loss(job: Job) -> LossFn:
    """prdit.diffusion's IaN loss, fed with each sample's own diffusion time and noise (data.draw)."""

    seed, timesteps, noise_std = job.common.seed, job.diffusion.timesteps, job.diffusion.noise_std

    def loss_fn(
        model: nn.Module, x0: torch.Tensor, positions: list[int], stream: int
    ) -> tuple[torch.Tensor, dict]:
        t, noise = data.draw(
            positions, x0.shape[1:], seed=seed, timesteps=timesteps, device=x0.device, stream=stream
        )
        return ian_loss(model, x0, t=t, noise=noise * noise_std, timesteps=timesteps, noise_std=noise_std)

    return loss_fn
