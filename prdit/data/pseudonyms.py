"""Case identifiers that do not expose a source's PatientID (sources.<name>.case_ids).

A user's own DICOM carries hospital record numbers in PatientID; the project's outputs (file names,
qc.csv, series.csv, split lists, logs, reports, MLflow) must not. Under `case_ids: pseudonym` a case is
named `case-<12 hex>` = HMAC-SHA256(project key, PatientID + SeriesInstanceUID) and its patient
`patient-<12 hex>` = HMAC-SHA256(project key, PatientID): deterministic for a project (re-runs and the
per-case caches stay stable; the patient-level split groups by the patient pseudonym), meaningless
without the key. The key is 32 random bytes in .prdit/pseudonym.key (created once, mode 0600, never
logged); the mapping back (pseudonym -> PatientID, series UID, source folder) is kept only beside the
interim data, in data/interim/<dataset>/identifiers.csv (and identifiers-series.csv for the skipped
series), never copied to processed/, the splits, the logs or MLflow.

`case_ids: source` keeps the source's own names (PatientID, or the file name for .npz / NIfTI input);
`auto` (the default) means `source` for the public datasets prdit downloads (phantom, LIDC-IDRI,
RAD-ChestCT: their ids are already pseudonyms, and the paper protocol's split follows them) and
`pseudonym` for a DICOM source of your own (`download: none`).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from prdit.errors import PrditError
from prdit.io import create_once

KEY_BYTES = 32
DIGITS = 12  # hex digits of the HMAC kept: 48 bits, no collision in any realistic dataset
MODES = ("auto", "pseudonym", "source")
IDENTIFIERS = "identifiers.csv"  # beside the interim data only
IDENTIFIERS_SERIES = "identifiers-series.csv"
IDENTIFIER_COLUMNS = ["case", "patient_id", "source_patient_id", "series_uid", "source"]
SERIES_COLUMNS = ["patient_id", "source_patient_id", "series_uid", "path", "reason"]


def mode(case_ids: str, download: str, fmt: str) -> str:
    """'pseudonym' or 'source': how the cases of a source are named, from its `case_ids`, `download` and
    `format` (sources.<name>.*): `auto` pseudonymises a DICOM source of your own (`download: none`)."""
    chosen = case_ids or "auto"
    if chosen != "auto":
        return chosen
    return "pseudonym" if download == "none" and fmt == "dicom" else "source"


def load_key(path: Path) -> bytes:
    """The project's pseudonym key (prdit.paths.pseudonym_key), created on first use (atomically: concurrent
    jobs agree on one)."""
    path = Path(path)
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        create_once(path, os.urandom(KEY_BYTES), mode=0o600)  # another job's key, if it was first: use theirs
        key = path.read_bytes()
    if len(key) != KEY_BYTES:
        raise PrditError(
            f"{path}: not a pseudonym key ({len(key)} bytes, expected {KEY_BYTES}); restore it from a "
            "backup (deleting it renames every pseudonymised case)"
        )
    return key


class Pseudonyms:
    """Keyed pseudonyms of one project."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _digest(self, *parts: str) -> str:
        message = "\0".join(parts).encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:DIGITS]

    def patient(self, patient_id: str) -> str:
        return "patient-" + self._digest("patient", patient_id)

    def case(self, patient_id: str, series_uid: str = "") -> str:
        return "case-" + self._digest("case", patient_id, series_uid)


class Scrubber:
    """Replaces the source identifiers seen in a dataset (PatientIDs, UIDs, folders) in free text."""

    def __init__(self) -> None:
        self._swap: dict[str, str] = {}

    def add(self, value: str, replacement: str) -> None:
        if value and len(value) >= 3 and value != replacement:
            self._swap.setdefault(value, replacement)

    @classmethod
    def of(cls, swap: dict[str, str] | None) -> Scrubber:
        scrub = cls()
        for value, replacement in (swap or {}).items():
            scrub.add(value, replacement)
        return scrub

    def pairs(self) -> dict[str, str]:
        return dict(self._swap)

    def __call__(self, text):
        if not isinstance(text, str) or not text:
            return text
        for value in sorted(self._swap, key=len, reverse=True):
            if value in text:
                text = text.replace(value, self._swap[value])
        return text


def scrubbed(fn):
    """fn(job, hide=...) whose exceptions name no identifier of `hide` (value -> replacement): the
    message (a QC reason) is scrubbed, the type kept (the cache tells transient failures by it)."""

    def run(*args, hide: dict[str, str] | None = None, **kwargs):
        if not hide:
            return fn(*args, **kwargs)
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - re-raised, scrubbed
            message = Scrubber.of(hide)(str(exc))
            try:
                clean = type(exc)(message)
            except Exception:  # noqa: BLE001 - an exception type that takes other arguments
                clean = PrditError(f"{type(exc).__name__}: {message}")
            raise clean from None

    run.__name__, run.__qualname__, run.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
    run.__module__ = fn.__module__
    return run
