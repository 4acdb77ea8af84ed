"""`train.common.compile`: torch.compile that cannot cost a job.

torch.compile is lazy: a compiler failure surfaces at the first forward, and a failure in an hour-long job
is an hour lost. So the network is compiled during a warm-up at start (one forward and backward on a
dummy micro-batch, which touches no optimizer, EMA or RNG state: the trajectory is the eager run's). If
that fails, `compile: true` logs one warning and trains eagerly; `compile: strict` stops at once with
one line. The inductor and Triton caches live in the folder the caller names (`prdit train`: the project's
paths.inductor_cache) unless the user set TORCHINDUCTOR_CACHE_DIR / TRITON_CACHE_DIR, so a requeued job
reuses the kernels of its first start.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from prdit.errors import PrditError

log = logging.getLogger(__name__)

STRICT = "strict"


class CompileError(PrditError, RuntimeError):
    """`train.common.compile: strict` and torch.compile failed in the warm-up."""


def use_cache_dir(cache_dir: Path) -> Path:
    """Point inductor's and Triton's caches into `cache_dir` unless already set; the inductor cache."""
    base = cache_dir.resolve()
    for var, folder in (("TORCHINDUCTOR_CACHE_DIR", base), ("TRITON_CACHE_DIR", base / "triton")):
        if not os.environ.get(var):
            os.environ[var] = str(folder)
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


def _first_line(exc: BaseException) -> str:
    """The error in one line: its type and the first line of its root cause (dynamo wraps the compiler's)."""
    root = exc
    while root.__cause__ is not None or getattr(root, "inner_exception", None) is not None:
        root = root.__cause__ or root.inner_exception  # type: ignore[attr-defined]
    text = (str(root).strip().splitlines() or [""])[0][:300]
    return type(exc).__name__ + (f" from {type(root).__name__}" if root is not exc else "") + f": {text}"


def compile_or_eager(
    net: nn.Module,
    mode: bool | str,
    warm_up: Callable[[nn.Module], None],
    agree: Callable[[bool], bool] = bool,
    cache_dir: Path | None = None,
) -> nn.Module:
    """`net` compiled and run once through `warm_up`; `net` itself (eager) when that failed on any rank.

    `agree(failed)` ORs the failure over ranks (every rank must train the same way). With `mode` strict a
    failure raises CompileError instead. `cache_dir`: the compiler caches' folder (use_cache_dir;
    None: torch's own or the user's).
    """
    cache = (
        use_cache_dir(cache_dir)
        if cache_dir is not None
        else os.environ.get("TORCHINDUCTOR_CACHE_DIR") or "torch's default"
    )
    error: Exception | None = None
    try:
        candidate = torch.compile(net)
        warm_up(candidate)
    except Exception as exc:  # noqa: BLE001 - any compiler failure: the eager module is still good
        error = exc
    if not agree(error is not None):
        log.info("torch.compile: compiled in the warm-up (inductor cache %s)", cache)
        return candidate
    why = _first_line(error) if error is not None else "it failed on another rank"
    if mode == STRICT:
        raise CompileError(f"train.common.compile: strict: torch.compile failed in the warm-up ({why})")
    log.warning(
        "torch.compile failed in the warm-up (%s): training eagerly (train.common.compile: strict stops instead)",
        why,
    )
    return net
