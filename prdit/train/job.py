"""`Job`: one training stage's run as the loop reads it (typed settings, where to write, what resumes)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prdit.config import Diffusion, TrainCommon, TrainStage


@dataclass(frozen=True)
class Job:
    """One stage's run: the typed settings from params.yaml themselves, where to write, what resumes.

    The loop reads `train` (train.<stage>), `common` (train.common) and `diffusion` directly: a new
    training parameter is a field of one of those dataclasses and reaches the loop without copying.
    """

    stage: str
    out_dir: Path
    train: TrainStage
    common: TrainCommon
    diffusion: Diffusion
    preview_n: int = 2  # 0: no previews
    preview_steps: int = 25  # fixed, not sample.*: a sampling parameter never touches training
    preview_k: int = 2
    bf16_autocast: bool = True  # on CUDA; protocol paper: fp32/TF32 (its attention kernels bf16, stages.py)
    final_weights: str = (
        "ema"  # what model.pt holds: "ema", or "online" (the non-EMA weights: protocol paper, stage 1)
    )
    fingerprint: dict[str, Any] = field(default_factory=dict)  # what must match for last.pt to be resumed
    meta: dict[str, Any] = field(default_factory=dict)  # provenance stored in model.pt
    compile_cache: Path | None = None  # torch.compile's caches (prdit.train.compiling); None: torch's own

    def with_settings(self, **changes: Any) -> Job:
        """A copy with settings changed by name, whichever of train/common/diffusion holds them."""
        sections: dict[str, dict[str, Any]] = {"train": {}, "common": {}, "diffusion": {}}
        own: dict[str, Any] = {}
        for key, value in changes.items():
            homes = [s for s in sections if key in {f.name for f in dataclasses.fields(getattr(self, s))}]
            if key in {f.name for f in dataclasses.fields(self)}:
                own[key] = value
            elif len(homes) == 1:
                sections[homes[0]][key] = value
            else:
                raise TypeError(f"Job.with_settings: {key!r} is {'ambiguous' if homes else 'not a setting'}")
        for name, kv in sections.items():
            if kv:
                own[name] = dataclasses.replace(getattr(self, name), **kv)
        return dataclasses.replace(self, **own)


class NullRun:
    """Tracking stand-in for ranks other than 0 (and for callers without tracking)."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *a, **k: None
