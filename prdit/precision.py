"""CUDA numerics by protocol and stage: the one home of what training and sampling compute in.

Training, both protocols: TF32 matmuls and convolutions (the reference's train.py:479 sets "high");
`project` adds bf16 autocast, `paper` keeps fp32 with bf16 attention kernels. Sampling under `project`
runs exactly as training does; under `paper` as the reference's sample.py, which sets no matmul
precision: strict fp32 matmuls (PyTorch's default), cuDNN at its default, bf16 attention kernels.
On the CPU nothing changes: fp32 throughout, whatever the protocol.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Precision:
    """What a stage's forward passes compute in on CUDA."""

    autocast: torch.dtype | None  # autocast dtype of the network (None: fp32)
    tf32_matmul: bool  # torch.backends.cuda.matmul.allow_tf32 ("high" vs "highest")
    tf32_conv: bool  # torch.backends.cudnn.allow_tf32
    attention: torch.dtype | None  # dtype of the attention kernels (set_attention_kernel_dtype)


def training(paper: bool) -> Precision:
    """What `prdit train` computes in."""
    return Precision(
        autocast=None if paper else torch.bfloat16,
        tf32_matmul=True,
        tf32_conv=True,
        attention=torch.bfloat16 if paper else None,
    )


def sampling(paper: bool) -> Precision:
    """What `prdit sample` computes in: the training setting (project) or the reference's sample.py (paper)."""
    if not paper:
        return training(paper=False)
    return Precision(autocast=None, tf32_matmul=False, tf32_conv=True, attention=torch.bfloat16)


def evaluation() -> Precision:
    """What `prdit evaluate` computes in: fp32 at PyTorch's defaults, under either protocol."""
    return Precision(autocast=None, tf32_matmul=False, tf32_conv=True, attention=None)


def describe(precision: Precision, device: torch.device) -> str:
    """One line of what a stage computes in on `device` (what its run records)."""
    if device.type != "cuda":
        return "fp32"
    auto, att = precision.autocast, precision.attention
    return (
        f"autocast {str(auto).removeprefix('torch.') if auto else 'off'}, "
        f"matmul {'tf32' if precision.tf32_matmul else 'fp32'}, conv {'tf32' if precision.tf32_conv else 'fp32'}, "
        f"attention {str(att).removeprefix('torch.') if att else 'as the network'}"
    )


def set_backends(precision: Precision, device: torch.device) -> None:
    """Set the process-wide TF32 switches for `precision` (CUDA only: the CPU has no TF32)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = precision.tf32_matmul
        torch.backends.cudnn.allow_tf32 = precision.tf32_conv


def autocast_dtype(precision: Precision, device: torch.device) -> torch.dtype | None:
    """The autocast dtype on `device` (None on the CPU: fp32 there)."""
    return precision.autocast if device.type == "cuda" else None
