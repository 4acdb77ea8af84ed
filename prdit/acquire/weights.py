"""The MedicalNet ResNet-50 checkpoints for the evaluation's feature extractor: fetched, sha256-checked, placed.

It comes through the same HTTP client as the datasets (retries, `.part` resumed with Range, which the
Hugging Face hub honours), so a dropped connection or a Ctrl-C costs only the bytes not yet received.

Both files come from Tencent's MedicalNet repository on the Hugging Face hub. No fixed revision commit
of it is known here, so the URLs name `main` and the pin is the sha256 (and size): a file that changes
there fails the check and never takes its name.
- `resnet_50_23dataset.pth` (the default): sha256 DEFAULT_SHA256, pinned independently by MONAI's
  checkpoints repository and by medmetric; saved under its own name.
- `resnet_50.pth` (what `protocol: paper` evaluates with, PAPER_URL): sha256 PAPER_SHA256 has one
  source (medmetric); whether it is byte-identical to the `resnet_50.pth` in Tencent's
  `MedicalNet_pytorch_files2.zip` is not known (docs/reproducing.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from prdit.acquire import http
from prdit.errors import PrditError
from prdit.io import sha256_file
from prdit.protocol import MEDICALNET_23DATASET_SHA256

log = logging.getLogger(__name__)

HF_REPO = "https://huggingface.co/TencentMedicalNet/MedicalNet-Resnet50"
HF_REVISION = "main"  # no commit hash of the repository is published anywhere we could check; sha256 pins
DEFAULT_NAME = "resnet_50_23dataset.pth"
DEFAULT_URL = f"{HF_REPO}/resolve/{HF_REVISION}/{DEFAULT_NAME}"
DEFAULT_SHA256 = MEDICALNET_23DATASET_SHA256
DEFAULT_SIZE = 184_885_051
PAPER_URL = f"{HF_REPO}/resolve/{HF_REVISION}/resnet_50.pth"
PAPER_SHA256 = "5b6189cafbee2f5604a7279b62bc163365aa6a86a377e1dc260a14275cacbd84"  # one source: medmetric


def fetch_weights(
    url: str | None,
    out: str | Path,
    sha256: str | None = None,
    policy: http.RetryPolicy | None = None,
    verify: Callable[[Path], None] | None = None,
) -> Path:
    """Download `url` to `out` (the stage's default: prdit.paths.medicalnet(DEFAULT_NAME)); a file whose
    sha256 differs never takes the name `out`. Returns `out`.

    Without `url` the default 23-dataset file is fetched, checked against its pinned sha256 and size.
    `verify(part)` may refuse the received file (DownloadError); it then never takes the name `out`.
    An existing `out` with the expected checksum is kept as is (no download). Raises DownloadError.
    """
    size = None
    if not url:
        url, size = DEFAULT_URL, DEFAULT_SIZE
        sha256 = sha256 or DEFAULT_SHA256
    out = Path(out)
    expected = sha256.lower() if sha256 else None
    if out.is_file() and expected and sha256_file(out) == expected:
        log.info("%s already present with the expected sha256", out)
        return out
    fetched = http.download(
        url,
        out,
        expected=http.Expected(size=size, checksum=f"sha256:{expected}" if expected else None, verify=verify),
        policy=policy or http.RetryPolicy(),
        what=url,
    )
    log.info("wrote %s (%d bytes, %s)", out, fetched.bytes, fetched.checksum)
    if not expected:
        log.warning(
            "no sha256 given: %s was not verified. Put `sha256: %s` under `evaluate:` in params.yaml "
            "once you have checked the file",
            out,
            fetched.checksum.partition(":")[2],
        )
    return out


class PaperWeightsError(PrditError, FileNotFoundError):
    """protocol: paper needs the reference's MedicalNet file, and this run has no way to get it."""
