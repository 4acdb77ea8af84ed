"""`prdit dvc-yaml [--check]`: write dvc.yaml from params.yaml (what it holds: prdit.dvc_yaml)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prdit.dvc_yaml import STALE, StaleError, current, write

if TYPE_CHECKING:
    from prdit.config import Params


def run(p: Params, check: bool = False) -> int:
    """Write dvc.yaml, or with `check` exit 1 naming the command when it is stale."""
    if check:
        if not current(p):
            raise StaleError(STALE)
        return 0
    print(f"wrote {write(p)}")
    return 0
