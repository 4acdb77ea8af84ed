"""`prdit fetch-weights`: the MedicalNet ResNet-50 weights the evaluation extracts features with, checksum
verified (prdit.acquire.weights), to evaluate.weights; under `protocol: paper` never the 23-dataset file."""

from __future__ import annotations

import logging
from pathlib import Path

from prdit import paths
from prdit.acquire import http
from prdit.acquire.weights import DEFAULT_NAME, DEFAULT_SHA256, PaperWeightsError, fetch_weights
from prdit.config import Params
from prdit.io import sha256_file
from prdit.protocol import MANUAL_WEIGHTS_STEP, PAPER_WEIGHTS_NAME

log = logging.getLogger(__name__)


def run(p: Params, out: Path | None = None) -> int:
    """Stage function of `prdit fetch-weights`: evaluate.url (or the public default) to `out` or evaluate.weights.

    Under `protocol: paper` the 23-dataset file is refused by content (its sha256), whatever its name.
    """
    ev = p.evaluate
    target = Path(out or ev.weights or paths.medicalnet(DEFAULT_NAME))
    if not ev.url and target.name == PAPER_WEIGHTS_NAME:
        raise PaperWeightsError(
            f"{target}: without evaluate.url prdit fetch-weights fetches the 23-dataset MedicalNet, which is "
            f"saved under its own name ({DEFAULT_NAME}), never as {PAPER_WEIGHTS_NAME} (the paper's network): "
            f"set evaluate.weights to {paths.medicalnet(DEFAULT_NAME)}, or {MANUAL_WEIGHTS_STEP}"
        )
    if p.conventions.paper_weights:
        if target.is_file() and sha256_file(target) == DEFAULT_SHA256:
            raise PaperWeightsError(
                f"{target}: is the 23-dataset MedicalNet ({DEFAULT_NAME}, sha256 {DEFAULT_SHA256[:12]}...), "
                f"not the {PAPER_WEIGHTS_NAME} that protocol: paper evaluates with; move it away, then "
                f"{MANUAL_WEIGHTS_STEP}"
            )
        if not ev.url:
            raise PaperWeightsError(
                f"{target}: protocol: paper evaluates with MedicalNet {PAPER_WEIGHTS_NAME} and evaluate.url "
                f"is not set: {MANUAL_WEIGHTS_STEP}"
            )

    def not_23dataset(part: Path) -> None:
        if p.conventions.paper_weights and sha256_file(part) == DEFAULT_SHA256:
            raise http.DownloadError(
                f"{ev.url}: is the 23-dataset MedicalNet ({DEFAULT_NAME}), not the {PAPER_WEIGHTS_NAME} that "
                f"protocol: paper evaluates with; not saved as {target}"
            )

    fetch_weights(ev.url, target, ev.sha256, verify=not_23dataset)
    if ev.weights is None or Path(ev.weights) != target:
        log.info(
            "set `weights: %s` (and its sha256) under `evaluate:` in params.yaml to evaluate with it", target
        )
    return 0
