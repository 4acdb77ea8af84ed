"""`prdit fetch-weights`: download the MedicalNet ResNet-50 checkpoint, verify its sha256, place it atomically."""

from __future__ import annotations

import hashlib
import logging
import urllib.error
import urllib.request
from pathlib import Path

from prdit.errors import PrditError
from prdit.io import atomic_path, sha256_file

log = logging.getLogger(__name__)

# Tencent's public MedicalNet release (resnet_50_23dataset.pth, the 23-dataset ResNet-50), as mirrored
# on the Hugging Face hub; the same file MONAI's MedicalNet loader downloads.
DEFAULT_URL = (
    "https://huggingface.co/TencentMedicalNet/MedicalNet-Resnet50/resolve/main/resnet_50_23dataset.pth"
)
DEFAULT_OUT = Path("models/medicalnet/resnet_50.pth")


class FetchError(PrditError, RuntimeError):
    """The download failed or its checksum is not the expected one."""


def fetch_weights(
    url: str | None = None, out: str | Path = DEFAULT_OUT, sha256: str | None = None, timeout: float = 60.0
) -> Path:
    """Download `url` to `out` (atomic); fail without leaving a file if the sha256 differs. Returns `out`.

    An existing `out` with the expected checksum is kept as is (no download).
    """
    url, out = url or DEFAULT_URL, Path(out)
    expected = sha256.lower() if sha256 else None
    if out.is_file() and expected and sha256_file(out) == expected:
        log.info("%s already present with the expected sha256", out)
        return out
    digest = hashlib.sha256()
    size = 0
    try:
        with (
            atomic_path(out) as tmp,
            urllib.request.urlopen(url, timeout=timeout) as resp,
            open(tmp, "wb") as fh,
        ):
            while block := resp.read(1 << 20):
                digest.update(block)
                fh.write(block)
                size += len(block)
            actual = digest.hexdigest()
            if expected and actual != expected:
                raise FetchError(
                    f"{url}: sha256 mismatch: expected {expected}, downloaded file has {actual}; "
                    f"{out} left untouched"
                )
    except urllib.error.HTTPError as exc:
        raise FetchError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise FetchError(f"{url}: download failed ({exc})") from exc
    log.info("wrote %s (%d bytes, sha256 %s)", out, size, actual)
    if not expected:
        log.warning(
            "no sha256 given: %s was not verified. Put `sha256: %s` under `evaluate:` in params.yaml "
            "once you have checked the file",
            out,
            actual,
        )
    return out


run_fetch_weights = (
    fetch_weights  # the name in the evaluation brief; `prdit fetch-weights` goes through run.py
)
