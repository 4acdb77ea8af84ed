"""Which device a stage computes on: the one home of that decision, and of what is recorded about it.

A job that was given GPUs (SLURM's GPU variables, or CUDA_VISIBLE_DEVICES naming a device) and finds
none that torch can use stops at once with one line: an hour of CPU training in a GPU allocation is a
lost job, not a slow one. Without such a request (the demo on a laptop) the CPU is used as before.
PRDIT_DEVICE overrides: `cpu` runs on the CPU whatever was requested (the test cluster's fake GPUs, a
deliberate CPU run), `cuda` demands a GPU, `auto` (the default) is the rule above.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import torch

from prdit.errors import PrditError
from prdit.precision import Precision, describe

log = logging.getLogger(__name__)

DEVICE_ENV = "PRDIT_DEVICE"
MODES = ("auto", "cpu", "cuda")
# the variables by which a scheduler or a user hands a job its GPUs; the counts among them say "0" for none
GPU_VARS = ("SLURM_GPUS", "SLURM_GPUS_ON_NODE", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "CUDA_VISIBLE_DEVICES")
COUNT_VARS = ("SLURM_GPUS", "SLURM_GPUS_ON_NODE")
SHOWN_FIRST = ("device", "device.reason")
NO_DEVICE = ("", "-1", "none", "nodevfiles")  # CUDA_VISIBLE_DEVICES values that hide every GPU


class NoGPUError(PrditError, RuntimeError):
    """GPUs were requested for this job but torch cannot use any: stop before any work."""


def gpu_request(environ: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """(variable, value) of the first variable that hands this job a GPU; None when none does."""
    env = os.environ if environ is None else environ
    for var in GPU_VARS:
        value = env.get(var, "").strip()
        if value.lower() in NO_DEVICE or (var in COUNT_VARS and value == "0"):
            continue
        return var, value
    return None


def select_device(local_rank: int = 0, environ: Mapping[str, str] | None = None) -> tuple[torch.device, dict]:
    """This process's device (GPU `local_rank` modulo the visible ones, or the CPU) and why, as a dict.

    Raises NoGPUError (one line: torch's CUDA version, the variable that asked, what torch saw) when a
    GPU was requested but none is usable, and a PrditError for an unknown PRDIT_DEVICE value.
    """
    env = os.environ if environ is None else environ
    mode = env.get(DEVICE_ENV, "").strip().lower() or "auto"
    if mode not in MODES:
        raise PrditError(f"{DEVICE_ENV}={env[DEVICE_ENV]!r}: expected one of {', '.join(MODES)}")
    if mode == "cpu":
        return torch.device("cpu"), {"device.reason": f"{DEVICE_ENV}=cpu"}
    available = torch.cuda.is_available()
    count = torch.cuda.device_count() if available else 0
    if count:
        return torch.device("cuda", local_rank % count), {"device.reason": f"{count} visible GPU(s)"}
    asked = gpu_request(env)
    if asked or mode == "cuda":
        why = f"{asked[0]}={asked[1]}" if asked else f"{DEVICE_ENV}=cuda"
        raise NoGPUError(
            f"{why} asks for a GPU, but torch {torch.__version__} (CUDA {torch.version.cuda}) sees none: "
            f"torch.cuda.is_available() is {available}, device_count() is {count}; "
            f"set {DEVICE_ENV}=cpu to run on the CPU anyway"
        )
    return torch.device("cpu"), {"device.reason": "no GPU requested"}


def attention_kernels(device: torch.device) -> str:
    """The scaled-dot-product attention backends torch may pick on `device`, in its order ("cpu" there)."""
    if device.type != "cuda":
        return "cpu"
    b = torch.backends.cuda
    enabled = {
        "flash": b.flash_sdp_enabled(),
        "mem_efficient": b.mem_efficient_sdp_enabled(),
        "cudnn": getattr(b, "cudnn_sdp_enabled", lambda: False)(),
        "math": b.math_sdp_enabled(),
    }
    return ", ".join(k for k, on in enabled.items() if on) or "none"


def describe_device(device: torch.device, why: Mapping[str, str], numerics: Precision | None) -> dict:
    """What a stage records about where it computes: device, GPU, versions, precision, attention kernels."""
    cuda = device.type == "cuda"
    props = torch.cuda.get_device_properties(device) if cuda else None
    return {
        "device": str(device),
        "device.gpu": props.name if props else "none",
        "device.capability": f"{props.major}.{props.minor}" if props else "none",
        "device.torch": torch.__version__,
        "device.cuda": str(torch.version.cuda),
        "device.cudnn": str(torch.backends.cudnn.version() if cuda else None),
        "device.precision": describe(numerics, device) if numerics else "fp32",
        "device.attention": attention_kernels(device),
        **why,
    }


def announce(run: Any, info: Mapping[str, str]) -> None:
    """Log the device line and record `info` (describe_device) as params of the stage's run."""
    rest = ", ".join(f"{k.removeprefix('device.')} {v}" for k, v in info.items() if k not in SHOWN_FIRST)
    log.info("device: %s (%s); %s", info["device"], info.get("device.reason", "?"), rest)
    run.log_params(dict(info))
    run.set_tags({"prdit.device": info["device"]})
