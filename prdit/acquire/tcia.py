"""A TCIA collection (LIDC-IDRI) through the public NBIA REST API: list series, one zip per series, extract.

`getSeries?Collection=&Modality=[&PatientID=]` lists the series as JSON (SeriesInstanceUID, PatientID,
StudyInstanceUID, Modality, ImageCount, FileSize, ...). `getImageWithMD5Hash?SeriesInstanceUID=`
returns the series as a zip whose `md5hashes.csv` (header `Filename,MD5Hash`) lists every image's
MD5, which is checked before extraction (`md5: true`, the default; what TCIA's own client `tcia_utils`
asks for with `hash="y"`); `getImage?SeriesInstanceUID=&NewFileNames=Yes` returns it without.
Public collections need no token. NBIA answers 400 to unknown parameters and to series it does not
serve, and 200 with an empty list both for "no match" and when its own query fails: a listing with 0
series is therefore an error naming the collection and modality, and a `--patients` entry with nothing
to fetch a failed row. `getImage` zips start with a `LICENSE` entry (TCIA's data usage terms), which is
not kept in the series folders; `getImageWithMD5Hash` sends an empty zip when an image of the series has
no MD5 in NBIA's database, and the series is then fetched with `getImage`, unverified (its row says so).

NBIA builds each zip on the fly and ignores Range, so the unit of resume is the series: a series on
disk is never fetched again, a partial zip is fetched again from its first byte. Series land in
`<out>/<PatientID>/<StudyInstanceUID>/<SeriesInstanceUID>/`; the zip is staged in `<out>/.download/`
and removed once its files are extracted and counted.

A cohort chosen on the TCIA portal comes as a `.tcia` manifest (`download.lidc-idri.manifest`):
properties lines, then `ListOfSeriesToDownload=` and one SeriesInstanceUID per line; other lines after it
(a header line) are skipped with a count in the log, as NBIA's Data Retriever skips them.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prdit.acquire import archive, http, records
from prdit.errors import PrditError
from prdit.io import file_digest

if TYPE_CHECKING:
    from prdit.config import Downloader

log = logging.getLogger(__name__)

STAGING = ".download"
MD5_LIST = "md5hashes.csv"
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_MANIFEST_LIST = "ListOfSeriesToDownload"


# Zip entries that are not the series: the checksum list, and the LICENSE (TCIA's data usage terms, the
# same text in every getImage zip), which is not kept in the series folders.
NOT_SERIES_FILES = (MD5_LIST, "LICENSE", "LICENSE.txt")


NO_MD5_NOTE = "NBIA publishes no MD5 for its images: fetched with getImage, not MD5-verified"


class _NoMD5(http.DownloadError):
    """getImageWithMD5Hash answered an empty zip: some image of the series has no MD5 at NBIA."""


class ManifestError(PrditError, ValueError):
    """A `.tcia` manifest cannot be read; the message names the file, the line and the reason."""


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


def read_tcia_manifest(path: str | Path) -> list[str]:
    """The SeriesInstanceUIDs of a TCIA portal `.tcia` manifest, in order, without duplicates."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: cannot read the .tcia manifest ({exc})") from None
    start = next((i for i, line in enumerate(lines) if line.strip().startswith(f"{_MANIFEST_LIST}=")), None)
    if start is None:
        raise ManifestError(f"{path}: no '{_MANIFEST_LIST}=' line; is this a TCIA .tcia manifest?")
    uids: dict[str, None] = {}
    skipped: list[int] = []
    for number, line in enumerate(lines[start + 1 :], start + 2):
        uid = line.strip()
        if not uid:
            continue
        if not _UID.match(uid) or len(uid) > 64:  # NBIA's Data Retriever skips such lines (header lines)
            skipped.append(number)
            continue
        uids[uid] = None
    if not uids:
        raise ManifestError(f"{path}: lists no series after '{_MANIFEST_LIST}='")
    if skipped:
        log.warning(
            "%s: skipped %d line(s) after '%s=' that are not SeriesInstanceUIDs (first: line %d)",
            path,
            len(skipped),
            _MANIFEST_LIST,
            skipped[0],
        )
    return list(uids)


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


def _records(
    cfg: Downloader, policy: http.RetryPolicy, patients: Sequence[str], modality: str
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Listing records of the collection (one request, or one per patient) and failure rows."""
    url = cfg.base_url.rstrip("/") + "/getSeries"
    base = {"Collection": cfg.collection, **({"Modality": modality} if modality else {})}
    if not patients:
        records = http.get_json(url, params=base, policy=policy, what=f"{cfg.collection} series list") or []
        if not isinstance(records, list):
            raise http.DownloadError(f"{url}: expected a JSON list of series, got {type(records).__name__}")
        return records, []
    records, failed = [], []
    for patient in patients:
        what = f"{cfg.collection} series list of {patient}"
        found = http.get_json(url, params={**base, "PatientID": patient}, policy=policy, what=what) or []
        records += found if isinstance(found, list) else []
    return records, failed


def _empty_listing(cfg: Downloader, modality: str) -> http.DownloadError:
    """NBIA answers 200 and an empty body for no match and for a failed query alike: never a success."""
    what = f"collection {cfg.collection!r}" + (f", modality {modality!r}" if modality else "")
    return http.DownloadError(
        f"{cfg.base_url.rstrip('/')}/getSeries: NBIA lists 0 series for {what}; check the spelling "
        "(getCollectionValues lists the collections) or try again later (NBIA also answers an empty "
        "list when its own query fails)"
    )


def list_items(
    cfg: Downloader,
    policy: http.RetryPolicy,
    *,
    patients: Sequence[str] = (),
    limit: int | None = None,
) -> tuple[list[Series], list[dict[str, str]]]:
    """Series of the collection (or of `cfg.manifest`), optionally only `patients`, at most `limit`; failure rows.

    With a manifest its series are taken whatever their modality (the manifest is the selection);
    a manifest series missing from the collection's listing becomes a failure row naming it.
    """
    wanted = read_tcia_manifest(cfg.manifest) if cfg.manifest else None
    modality = "" if wanted is not None else cfg.modality
    records, failed = _records(cfg, policy, patients, modality)
    series: dict[str, Series] = {}
    for rec in records:
        uid, patient, study, kind = (
            _field(rec, k) for k in ("SeriesInstanceUID", "PatientID", "StudyInstanceUID", "Modality")
        )
        if modality and kind and kind != modality:
            continue
        if wanted is not None and uid not in wanted:
            continue
        bad = [
            f"{k}={v!r}"
            for k, v in (("SeriesInstanceUID", uid), ("PatientID", patient), ("StudyInstanceUID", study))
            if not _SAFE_ID.match(v)
        ]
        if bad:
            why = f"listing entry has unusable identifiers: {', '.join(bad)}"
            failed.append(_row(patient, study, uid, status="failed", message=why))
            continue
        series[uid] = Series(
            uid, patient, study, kind, _int(_field(rec, "ImageCount")), _int(_field(rec, "FileSize"))
        )
    if not patients and (not records or (wanted is None and not series and not failed)):
        raise _empty_listing(cfg, modality)
    for patient in patients:  # a patient with nothing to fetch is a failure, whatever the reason
        if not any(s.patient == patient for s in series.values()) and not any(
            row["patient"] == patient for row in failed
        ):
            why = f"no {modality or ''} series listed for patient {patient} in {cfg.collection}"
            failed.append(_row(patient, "", "", status="failed", message=" ".join(why.split())))
    if wanted is not None and not patients:
        for uid in wanted:
            if uid not in series and not any(row["series"] == uid for row in failed):
                why = f"series {uid} of {cfg.manifest} is not listed in collection {cfg.collection}"
                failed.append(_row("", "", uid, status="failed", message=why))
    chosen = sorted(series.values(), key=lambda s: (s.patient, s.study, s.key))
    if limit is not None:
        chosen = chosen[:limit]
    return chosen, failed


def _row(patient: str, study: str, series: str, **fields: Any) -> dict[str, str]:
    return records.row(patient=patient, study=study, series=series, **fields)


def _dicom_files(files: Sequence[Path]) -> list[Path]:
    dcm = [f for f in files if f.suffix.lower() == ".dcm"]
    return dcm or [f for f in files if f.name.upper() not in ("LICENSE", "LICENSE.TXT", MD5_LIST.upper())]


def _tree_digest(folder: Path) -> tuple[list[Path], int, str]:
    tree, files, total = hashlib.sha256(), [], 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder)
        tree.update(f"{rel.as_posix()}\0{file_digest(path, 'sha256')}\n".encode())
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


def _check_md5(zip_path: Path, members: list[tuple[Any, str]], dicom: list[Path], label: str) -> None:
    """Every DICOM file of the zip has the MD5 that NBIA's md5hashes.csv lists for it (IntegrityError if not)."""
    listing = [info for info, name in members if name.lower() == MD5_LIST]
    if not listing:
        raise http.IntegrityError(f"{label}: the archive has no {MD5_LIST} to verify its images against")
    rows = list(csv.reader(io.StringIO(archive.read_text(zip_path, listing[0]))))
    published = {
        row[0].strip(): row[1].strip().lower()
        for row in rows[1:]
        if len(row) >= 2 and row[0].strip() and rows[0][0].strip().lower() == "filename"
    }
    wanted = {p.as_posix() for p in dicom}
    actual = archive.member_digests(zip_path, [m for m in members if m[1] in wanted], "md5")
    missing = sorted(wanted - published.keys())
    if missing:
        raise http.IntegrityError(
            f"{label}: {MD5_LIST} lists no MD5 for {missing[0]} ({len(missing)} file(s))"
        )
    bad = sorted(name for name, md5 in actual.items() if published[name] != md5)
    if bad:
        raise http.IntegrityError(
            f"{label}: MD5 mismatch for {len(bad)} image(s), e.g. {bad[0]}: "
            f"published {published[bad[0]]}, received {actual[bad[0]]}"
        )


def _check_zip(part: Path, *, item: Series, md5: bool, label: str) -> None:
    """`verify` for a series zip: a safe, whole archive with the listed number of images (and their MD5s)."""
    try:
        members = archive.check(part, label)
    except archive.DamagedArchiveError as exc:
        raise http.IntegrityError(str(exc)) from None
    except archive.UnsafeArchiveError as exc:
        raise http.DownloadError(f"{exc}; refusing to extract") from None
    dicom = _dicom_files([Path(name) for _, name in members])
    if not dicom and md5 and all(name.lower() == MD5_LIST for _, name in members):
        raise _NoMD5(f"{label}: getImageWithMD5Hash sent an archive without images")
    if not dicom:  # NBIA answers some withdrawn series with an empty zip
        raise http.IntegrityError(f"{label}: the archive holds no DICOM files")
    if item.image_count is not None and len(dicom) != item.image_count:
        raise http.IntegrityError(
            f"{label}: archive holds {len(dicom)} DICOM files, the listing says {item.image_count}"
        )
    if md5:
        _check_md5(part, members, dicom, label)


def fetch_item(
    item: Series,
    out: Path,
    cfg: Downloader,
    policy: http.RetryPolicy,
    on_bytes: Callable[[int], None],
) -> tuple[dict[str, str], int]:
    """Download, verify and extract one series: its manifest row and the bytes received; DownloadError names it."""
    label = f"series {item.key} (patient {item.patient})"
    zip_path = out / STAGING / f"{item.key}.zip"

    def get(endpoint: str, params: dict[str, str], md5: bool) -> http.Fetched:
        return http.download(
            cfg.base_url.rstrip("/") + "/" + endpoint,
            zip_path,
            # the zip is built anew per request: a partial one is worthless (resume=False)
            request=http.Request(params=params, resume=False),
            expected=http.Expected(verify=partial(_check_zip, item=item, md5=md5, label=label)),
            policy=policy,
            on_bytes=on_bytes,
            what=label,
        )

    unverified = False
    if cfg.md5:
        try:
            fetched = get("getImageWithMD5Hash", {"SeriesInstanceUID": item.key}, md5=True)
        except _NoMD5:
            # NBIA streams an empty zip when an image of the series has no MD5 in its database
            log.warning("%s: NBIA sent no images with MD5s; fetching it with getImage, unverified", label)
            cfg, unverified = replace(cfg, md5=False), True
    if not cfg.md5:
        fetched = get("getImage", {"SeriesInstanceUID": item.key, "NewFileNames": "Yes"}, md5=False)
    try:
        extracted = archive.extract(zip_path, item.folder(out), label=label, exclude=NOT_SERIES_FILES)
    except (archive.UnsafeArchiveError, OSError) as exc:
        raise http.DownloadError(f"{label}: extraction failed: {exc}") from None
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
        message=NO_MD5_NOTE if unverified else "",
    )
    return row, fetched.received


def finish(out: Path) -> None:
    """After a run: remove the staging folder if nothing is left in it."""
    staging = out / STAGING
    if staging.is_dir() and not any(staging.iterdir()):
        staging.rmdir()
