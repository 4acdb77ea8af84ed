"""Running means of a training run's step values between log lines, averaged over ranks, and its totals."""

from __future__ import annotations

import resource

import torch

from prdit.train import distributed
from prdit.train.distributed import DistEnv


class Meter:
    """Running means of the step values between log lines, and step/wait totals of this invocation."""

    def __init__(self, env: DistEnv, global_batch: int) -> None:
        self.env, self.global_batch = env, global_batch
        self.window: dict[str, float] = {}
        self.n = 0
        self.steps = 0
        self.time = self.wait = 0.0
        self.final_loss = float("nan")

    def add(self, values: dict[str, float], step_time: float, wait: float) -> None:
        for k, v in {**values, "step_time_s": step_time, "data_wait_s": wait}.items():
            self.window[k] = self.window.get(k, 0.0) + v
        self.n += 1
        self.steps += 1
        self.time += step_time
        self.wait += wait

    def flush(self) -> dict[str, float]:
        """Window means averaged over ranks (a collective: every rank calls it at the same step)."""
        keys = sorted(self.window)
        local = torch.tensor([self.window[k] / max(self.n, 1) for k in keys], dtype=torch.float64)
        mean = dict(
            zip(
                keys,
                (
                    distributed.all_sum(self.env, local.to(self.env.device)).cpu() / self.env.world_size
                ).tolist(),
            )
        )
        self.window, self.n = {}, 0
        self.final_loss = mean["loss"]
        step_time, wait = mean.pop("step_time_s"), mean.pop("data_wait_s")
        out = {f"train/{k}": v for k, v in mean.items()}
        out.update(
            {
                "perf/step_time_s": step_time,
                "perf/data_wait_s": wait,
                "perf/compute_s": step_time - wait,
                "perf/volumes_per_s": self.global_batch / step_time if step_time > 0 else float("nan"),
                "perf/peak_memory_gb": peak_memory_gb(self.env),
            }
        )
        return out

    def totals(self) -> dict[str, float]:
        n = max(self.steps, 1)
        return {
            "steps_this_run": self.steps,
            "step_time_s": self.time / n,
            "data_wait_s": self.wait / n,
            "data_wait_fraction": self.wait / self.time if self.time else float("nan"),
            "volumes_per_s": self.global_batch * self.steps / self.time if self.time else float("nan"),
            "peak_memory_gb": peak_memory_gb(self.env),
        }


def peak_memory_gb(env: DistEnv) -> float:
    """Peak CUDA memory allocated on this device, or the process's peak RSS on a CPU."""
    if env.device.type == "cuda":
        return torch.cuda.max_memory_allocated(env.device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
