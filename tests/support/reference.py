"""Where the reference implementation (github.com/Fredy-Zhang/PRDiT) is, for the optional exactness tests and
benchmarks: a git clone (or bare mirror) named by $PRDIT_REFERENCE. Nothing of it is kept in this repository."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ENV = "PRDIT_REFERENCE"
URL = "https://github.com/Fredy-Zhang/PRDiT"


def unavailable() -> str | None:
    """Why the reference cannot be used (a one-line message naming the variable), or None."""
    value = os.environ.get(ENV)
    if not value:
        return f"{ENV} is not set: point it at a git clone of {URL} to run the exactness checks"
    res = subprocess.run(["git", "-C", value, "rev-parse", "HEAD"], capture_output=True, text=True)
    if res.returncode != 0:
        return f"{ENV}={value} is not a git clone of {URL}"
    return None


def extract_models(dest: Path) -> Path:
    """Write the reference's models/ package as committed at HEAD into dest/models; return dest."""
    repo = os.environ[ENV]
    files = subprocess.run(
        ["git", "-C", repo, "ls-tree", "--name-only", "HEAD", "models/"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    (dest / "models").mkdir(parents=True, exist_ok=True)
    for f in files:
        text = subprocess.run(
            ["git", "-C", repo, "show", f"HEAD:{f}"], check=True, capture_output=True
        ).stdout
        (dest / f).write_bytes(text)
    return dest
