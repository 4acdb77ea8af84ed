"""A TCIA collection (LIDC-IDRI) through the public NBIA REST API: list series, one zip per series, extract.

`getSeries?Collection=&Modality=[&PatientID=]` lists the series as JSON (SeriesInstanceUID, PatientID,
StudyInstanceUID, Modality, ImageCount, FileSize, ...); `getImage?SeriesInstanceUID=` returns the series
as a zip of DICOM files. Public collections need no token. Series land in
`<out>/<PatientID>/<StudyInstanceUID>/<SeriesInstanceUID>/*.dcm`; the zip is staged in `<out>/.download/`
and removed once its files are extracted and counted.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prdit.data import archive, fetch

log = logging.getLogger(__name__)

STAGING = ".download"
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class Series:
    key: str  # SeriesInstanceUID: the manifest key
    patient: str
    study: str
    modality: str
    image_count: int | None
    size: int | None  # FileSize from the listing: bytes of the DICOM files, an estimate of the download

    def folder(self, out: Path) -> Path:
        return out / self.patient / self.study / self.key


# Other NBIA endpoints and versions spell some fields as display names; accept those too.
_ALIASES = {
    "SeriesInstanceUID": ("Series Instance UID", "Series UID", "Series ID"),
    "PatientID": ("Patient ID", "Subject ID"),
    "StudyInstanceUID": ("Study Instance UID", "Study UID"),
    "ImageCount": ("Image Count", "Number of images"),
    "FileSize": ("File Size", "File Size (Bytes)"),
    "Modality": (),
}


def _field(rec: dict[str, Any], key: str) -> str:
    for name in (key, *_ALIASES[key]):
        if rec.get(name) not in (None, ""):
            return str(rec[name]).strip()
    return ""


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def list_items(
    cfg: Any, policy: fetch.RetryPolicy, *, patients: Sequence[str] = (), limit: int | None = None
) -> tuple[list[Series], list[dict[str, str]]]:
    """Series of the collection (optionally only `patients`, at most `limit`), and failure rows for bad entries."""
    url = cfg.base_url.rstrip("/") + "/getSeries"
    base = {"Collection": cfg.collection, "Modality": cfg.modality}
    if patients:
        records, failed = [], []
        for patient in patients:
            found = (
                fetch.get_json(
                    url,
                    params={**base, "PatientID": patient},
                    policy=policy,
                    what=f"{cfg.collection} series list of {patient}",
                )
                or []
            )
            if not found:
                why = f"no {cfg.modality} series listed for patient {patient} in {cfg.collection}"
                failed.append(_row(patient, "", "", status="failed", message=why))
            records += found
    else:
        records = fetch.get_json(url, params=base, policy=policy, what=f"{cfg.collection} series list") or []
        failed = []
    if not isinstance(records, list):
        raise fetch.DownloadError(f"{url}: expected a JSON list of series, got {type(records).__name__}")
    series: dict[str, Series] = {}
    for rec in records:
        uid, patient, study, modality = (
            _field(rec, k) for k in ("SeriesInstanceUID", "PatientID", "StudyInstanceUID", "Modality")
        )
        if cfg.modality and modality and modality != cfg.modality:
            continue
        bad = [
            f"{k}={v!r}"
            for k, v in (("SeriesInstanceUID", uid), ("PatientID", patient), ("StudyInstanceUID", study))
            if not _SAFE_ID.match(v)
        ]
        if bad:
            failed.append(
                _row(
                    patient,
                    study,
                    uid,
                    status="failed",
                    message=f"listing entry has unusable identifiers: {', '.join(bad)}",
                )
            )
            continue
        series[uid] = Series(
            uid, patient, study, modality, _int(_field(rec, "ImageCount")), _int(_field(rec, "FileSize"))
        )
    chosen = sorted(series.values(), key=lambda s: (s.patient, s.study, s.key))
    if limit is not None:
        chosen = chosen[:limit]
    return chosen, failed


def _row(patient: str, study: str, series: str, **fields: Any) -> dict[str, str]:
    row = {
        "patient": patient,
        "study": study,
        "series": series,
        "path": "",
        "files": "",
        "bytes": "",
        "checksum": "",
        "status": "",
        "message": "",
    }
    row.update({k: str(v) for k, v in fields.items()})
    return row


def _dicom_files(files: Sequence[Path]) -> list[Path]:
    dcm = [f for f in files if f.suffix.lower() == ".dcm"]
    return dcm or [f for f in files if f.name.upper() not in ("LICENSE", "LICENSE.TXT", "MD5HASHES.CSV")]


def _tree_digest(folder: Path) -> tuple[list[Path], int, str]:
    tree, files, total = hashlib.sha256(), [], 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder)
        tree.update(f"{rel.as_posix()}\0{fetch.file_digest(path, 'sha256')}\n".encode())
        files.append(rel)
        total += path.stat().st_size
    return files, total, f"sha256:{tree.hexdigest()}"


def done_row(item: Series, out: Path, previous: dict[str, str] | None) -> dict[str, str] | None:
    """The manifest row of a series already on disk (no network), or None when it must be fetched."""
    folder = item.folder(out)
    for stale in folder.parent.glob(f".{item.key}.*.tmp") if folder.parent.is_dir() else ():
        shutil.rmtree(stale, ignore_errors=True)  # an extraction killed halfway: never mistaken for data
    if not folder.is_dir():
        return None
    n_files = sum(1 for p in folder.rglob("*") if p.is_file())
    if previous and previous.get("status") == "ok" and previous.get("files") == str(n_files):
        return {**previous, "message": ""}
    files, total, digest = _tree_digest(folder)  # manifest lost or stale: rebuild the row from the files
    n_dicom = len(_dicom_files(files))
    if item.image_count is not None and n_dicom != item.image_count:
        return None
    return _row(
        item.patient,
        item.study,
        item.key,
        path=folder.relative_to(out).as_posix(),
        files=len(files),
        bytes=total,
        checksum=digest,
        status="ok",
    )


def needed_bytes(item: Series, out: Path) -> int:
    """Disk space the extracted series will take (its staged zip is removed after extraction)."""
    return item.size or 0


def fetch_item(
    item: Series, out: Path, cfg: Any, policy: fetch.RetryPolicy, on_bytes: Callable[[int], None]
) -> tuple[dict[str, str], int]:
    """Download, verify and extract one series: its manifest row and the bytes received; DownloadError names it."""
    label = f"series {item.key} (patient {item.patient})"
    zip_path = out / STAGING / f"{item.key}.zip"

    def verify(part: Path) -> None:
        try:
            members = archive.check(part, label)
        except archive.DamagedArchiveError as exc:
            raise fetch.IntegrityError(str(exc)) from None
        except archive.UnsafeArchiveError as exc:
            raise fetch.DownloadError(f"{exc}; refusing to extract") from None
        n = len(_dicom_files([Path(name) for _, name in members]))
        if n == 0:  # NBIA answers an unknown or withdrawn series with an empty zip
            raise fetch.IntegrityError(f"{label}: the archive holds no DICOM files")
        if item.image_count is not None and n != item.image_count:
            raise fetch.IntegrityError(
                f"{label}: archive holds {n} DICOM files, the listing says {item.image_count}"
            )

    url = cfg.base_url.rstrip("/") + "/getImage"
    fetched = fetch.download(
        url,
        zip_path,
        params={"SeriesInstanceUID": item.key, "NewFileNames": "Yes"},
        policy=policy,
        verify=verify,
        on_bytes=on_bytes,
        what=label,
    )
    try:
        extracted = archive.extract(zip_path, item.folder(out), label=label)
    except (archive.UnsafeArchiveError, OSError) as exc:
        raise fetch.DownloadError(f"{label}: extraction failed: {exc}") from None
    finally:
        zip_path.unlink(missing_ok=True)
    row = _row(
        item.patient,
        item.study,
        item.key,
        path=item.folder(out).relative_to(out).as_posix(),
        files=len(extracted.files),
        bytes=extracted.bytes,
        checksum=extracted.digest,
        status="ok",
    )
    return row, fetched.received
