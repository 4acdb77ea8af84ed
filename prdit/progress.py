"""Progress for long loops: a bar on a terminal, periodic log lines in batch jobs and logs."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
log = logging.getLogger("prdit.progress")


def progress(
    iterable: Iterable[T], desc: str, total: int | None = None, every_s: float = 10.0
) -> Iterator[T]:
    """Iterate with a tqdm bar when stderr is a TTY, else log `desc i/total` at most every `every_s`."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if sys.stderr.isatty():
        yield from tqdm(iterable, desc=desc, total=total, dynamic_ncols=True)
        return
    start = last = time.monotonic()
    i = 0
    for i, item in enumerate(iterable, 1):
        yield item
        now = time.monotonic()
        if now - last >= every_s:
            last = now
            log.info("%s: %d/%s (%.0f s)", desc, i, total if total is not None else "?", now - start)
    log.info(
        "%s: %d/%s done in %.1f s", desc, i, total if total is not None else "?", time.monotonic() - start
    )
