"""The MedicalNet ResNet-50 checkpoint for the evaluation's feature extractor: fetched, sha256-checked, placed.

It comes through the same HTTP client as the datasets (retries, `.part` resumed with Range, which the
Hugging Face hub honours), so a dropped connection or a Ctrl-C costs only the bytes not yet received.
"""

from __future__ import annotations

import logging
from pathlib import Path

from prdit import paths
from prdit.acquire import http
from prdit.io import sha256_file

log = logging.getLogger(__name__)

# Tencent's public MedicalNet release (resnet_50_23dataset.pth, the 23-dataset ResNet-50), as mirrored
# on the Hugging Face hub; the same file MONAI's MedicalNet loader downloads.
DEFAULT_URL = (
    "https://huggingface.co/TencentMedicalNet/MedicalNet-Resnet50/resolve/main/resnet_50_23dataset.pth"
)
DEFAULT_OUT = paths.MODELS / "medicalnet" / "resnet_50.pth"


def fetch_weights(
    url: str | None = None,
    out: str | Path = DEFAULT_OUT,
    sha256: str | None = None,
    policy: http.RetryPolicy | None = None,
) -> Path:
    """Download `url` to `out`; a file whose sha256 differs never takes the name `out`. Returns `out`.

    An existing `out` with the expected checksum is kept as is (no download). Raises DownloadError.
    """
    url, out = url or DEFAULT_URL, Path(out)
    expected = sha256.lower() if sha256 else None
    if out.is_file() and expected and sha256_file(out) == expected:
        log.info("%s already present with the expected sha256", out)
        return out
    fetched = http.download(
        url,
        out,
        checksum=f"sha256:{expected}" if expected else None,
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
