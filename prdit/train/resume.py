"""Resume checkpoints (last.pt): atomic, finite-checked, and only resumed by the run they belong to.

A checkpoint holds the stage-owned model weights, the EMA and optimizer state, the step,
the data-stream position, RNG states and counters, plus a fingerprint of every setting that changes
the trajectory. A last.pt whose fingerprint differs from the current run's (other model, lr, data,
parent model...) is never resumed; it is moved aside to last.stale-<n>.pt, not deleted.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prdit.errors import PrditError
from prdit.io import write_torch

log = logging.getLogger(__name__)

FORMAT = "prdit-train/1"


class NonFiniteWeightsError(PrditError, RuntimeError):
    """Weights went NaN/inf: refusing to write them over a good checkpoint."""


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states, in types torch.load(weights_only) accepts."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def all_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    """Name of the first tensor holding NaN/inf, or None."""
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


def save(path: Path, state: dict[str, Any]) -> None:
    """Write `state` atomically to `path` after checking model and EMA weights are finite."""
    for key in ("model", "ema"):
        bad = all_finite(state[key])
        if bad is not None:
            raise NonFiniteWeightsError(
                f"{key} weight {bad!r} is not finite at step {state['step']}; "
                f"{path} keeps the previous checkpoint"
            )
    write_torch(path, {"format": FORMAT, **state})  # same state, same bytes


def load(path: Path, fingerprint: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """(checkpoint, None) if `path` belongs to this run; (None, why not) otherwise; (None, None) if absent."""
    if not path.exists():
        return None, None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated by hand, another format, ...: keep it for inspection
        return None, f"unreadable ({exc})"
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        return None, f"not a {FORMAT} checkpoint"
    theirs = state.get("fingerprint", {})
    diff = sorted(k for k in set(fingerprint) | set(theirs) if fingerprint.get(k) != theirs.get(k))
    if diff:
        return None, "it belongs to a run with other settings (" + ", ".join(diff) + ")"
    return state, None


def move_aside(path: Path, why: str) -> None:
    """Rename `path` to <stem>.stale-<n><suffix> (never overwriting) and say why."""
    older = sorted(path.parent.glob(f"{path.stem}.stale-*{path.suffix}"))
    n = 0
    while (stale := path.with_name(f"{path.stem}.stale-{n}{path.suffix}")).exists():
        n += 1
    os.replace(path, stale)
    log.warning("%s not resumed: %s; moved to %s", path, why, stale.name)
    for old in older:  # bounded: only the newest set-aside checkpoint is kept (each may be GBs)
        old.unlink(missing_ok=True)
        log.warning("removed the older set-aside checkpoint %s", old.name)
