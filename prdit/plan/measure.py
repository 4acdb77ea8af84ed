"""FLOPs and peak memory of the real networks on fake tensors: no GPU, no weights, seconds per model.

FLOPs: `torch.utils.flop_counter.FlopCounterMode` with its own formulas (a multiply-add = 2 FLOPs;
attention backward as its registered SDPA formula, 2.5x the forward matmuls), so figures equal what
FlopCounterMode reports on a GPU; attention FLOPs are kept apart (they run in bf16 under every protocol).
Traffic: bytes read and written by each operation, for memory-bound work (MS-SSIM's element-wise maps).
Memory: `torch.distributed._tools.mem_tracker.MemTracker` over one whole training step (forward, loss,
backward, AdamW step with its state allocated) or one sampler model call, at the given batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.mem_tracker import MemTracker
from torch.utils import flop_counter
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

aten = torch.ops.aten


# On the CPU, SDPA runs this fused kernel, which FlopCounterMode has no formula for; it is the same
# computation as the CUDA flash kernel, so it gets that kernel's formulas.
def _as_registered(formula: Callable[..., int]) -> Callable[..., int]:
    """A formula of torch's registry (already taking tensors) in the form custom_mapping accepts as is."""

    def count(*args: object, **kwargs: object) -> int:
        return formula(*args, **kwargs)

    count._get_raw = True  # type: ignore[attr-defined]
    return count


CPU_ATTENTION = {
    aten._scaled_dot_product_flash_attention_for_cpu: _as_registered(flop_counter.sdpa_flop),
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _as_registered(
        flop_counter.sdpa_backward_flop
    ),
}
ATTENTION = {
    aten._scaled_dot_product_flash_attention,
    aten._scaled_dot_product_flash_attention_backward,
    aten._scaled_dot_product_efficient_attention,
    aten._scaled_dot_product_efficient_attention_backward,
    *CPU_ATTENTION,
}


@dataclass(frozen=True)
class Flops:
    total: int
    attention: int  # part of total

    def __mul__(self, n: float) -> Flops:
        return Flops(int(self.total * n), int(self.attention * n))

    __rmul__ = __mul__

    def __add__(self, other: Flops) -> Flops:
        return Flops(self.total + other.total, self.attention + other.attention)


def count_flops(fn: Callable[[], object]) -> Flops:
    """FLOPs of running `fn` (build its tensors inside, under the caller's FakeTensorMode)."""
    counter = FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION)
    with counter:
        fn()
    ops = counter.get_flop_counts()["Global"]
    return Flops(sum(ops.values()), sum(v for k, v in ops.items() if k in ATTENTION))


class _Traffic(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        if not func.is_view:  # a view moves no data
            tensors = [t for t in tree_flatten((args, kwargs, out))[0] if isinstance(t, torch.Tensor)]
            self.bytes += sum(t.numel() * t.element_size() for t in tensors)
        return out


def traffic_bytes(fn: Callable[[], object]) -> int:
    """Bytes every operation of `fn` reads and writes (inputs + outputs, views excluded): the memory traffic
    of a memory-bound computation without caches. Run it on fake or meta tensors."""
    mode = _Traffic()
    with mode:
        fn()
    return mode.bytes


class _Tracker(MemTracker):
    """MemTracker that accepts frozen parameters (it hooks every parameter's gradient otherwise)."""

    def _track_module_params_and_buffers(self, module, install_grad_hooks=True):  # type: ignore[override]
        trainable = all(p.requires_grad for p in module.parameters())
        return super()._track_module_params_and_buffers(module, install_grad_hooks and trainable)


def peak_bytes(fn: Callable[[], object], *external: object, warmup: bool = False) -> int:
    """Peak bytes of live tensors while `fn` runs (after one untracked-peak warm-up run if `warmup`,
    e.g. so AdamW's state exists as it does from the second step on). Tensors given in `external`
    (model, optimizer) count from the start."""
    tracker = _Tracker()
    tracker.track_external(*external)
    with tracker:
        if warmup:
            fn()
            tracker.reset_mod_stats()
        fn()
    peaks = tracker.get_tracker_snapshot("peak")
    return max(int(d.get("Total", 0)) for d in peaks.values()) if peaks else 0


def fake_mode() -> contextlib.AbstractContextManager:
    """Tensors created inside are fake: shapes, dtypes and devices without storage."""
    return FakeTensorMode(allow_non_fake_inputs=True)
