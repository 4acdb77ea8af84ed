"""A Zenodo record (RAD-ChestCT) through Zenodo's REST API: list its files, fetch each whole, verify its md5.

`GET <base>/records/<id>` answers JSON whose `files` list holds `key`, `size`, `checksum` ("md5:<hex>";
bare hex, the legacy deposit API's form, is read as md5)
and `links` (`self`/`content`: the file's bytes). A record whose files are restricted lists none
there; its files are listed by `GET <base>/records/<id>/files` (`entries`) once access was granted.
Files land as `<out>/<key>`.

Access to restricted files (RAD-ChestCT is by request) comes in one of two forms, both read from the
environment, never from params.yaml:
- ZENODO_TOKEN: a personal access token of the account the owner granted access to, sent as
  `Authorization: Bearer <token>`;
- ZENODO_SHARE_TOKEN: the secret link the owner sent (the whole link or its `token=` value), sent as
  the `token` query parameter, which is how Zenodo reads a share link.
Without access Zenodo answers 403 (or lists nothing); that ends the run with one line saying what to do.
A 403 whose body is an HTML block page, or a 403 for the record's public metadata sent without any
token, comes from Zenodo's client filter (it throttles and blocks unidentified clients such as
python-requests since December 2025): the message says so instead of sending the user to the owners.

The content endpoint ignores Range (reportedly), so the unit of resume is the file: a verified file on
disk is never fetched again; a partial one is asked for with Range and restarts when the server sends
the whole body. RAD-ChestCT volumes are `.npz` files (HU under key `ct`); `--patients` selects volumes
by file stem and `--limit` caps the number of volumes, while the small non-volume files (label and
metadata tables) always come along.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlparse

from prdit.acquire import http, records
from prdit.io import file_digest

if TYPE_CHECKING:
    from prdit.config import Downloader

log = logging.getLogger(__name__)

TOKEN_ENV = "ZENODO_TOKEN"
SHARE_TOKEN_ENV = "ZENODO_SHARE_TOKEN"
VOLUME_SUFFIX = ".npz"
_SAFE_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")


@dataclass(frozen=True)
class RemoteFile:
    key: str  # file name in the record: the manifest key
    size: int | None
    checksum: str | None  # '<algorithm>:<hex>' as published
    url: str

    @property
    def patient(self) -> str:
        return Path(self.key).stem if self.key.endswith(VOLUME_SUFFIX) else ""


@dataclass(frozen=True)
class Access:
    """How this run authenticates: a personal access token (header) and/or a share-link token (query)."""

    token: str = ""
    share_token: str = ""

    @classmethod
    def from_env(cls) -> Access:
        share = os.environ.get(SHARE_TOKEN_ENV, "").strip()
        if share.startswith(("http://", "https://")):  # the whole link: take its token= value
            share = (parse_qs(urlparse(share).query).get("token") or [""])[0]
        return cls(os.environ.get(TOKEN_ENV, "").strip(), share)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    @property
    def params(self) -> dict[str, str]:
        return {"token": self.share_token} if self.share_token else {}

    def __bool__(self) -> bool:
        return bool(self.token or self.share_token)


def _record_page(cfg: Downloader) -> str:
    base = cfg.base_url.rstrip("/")
    return (base[: -len("/api")] if base.endswith("/api") else base) + f"/records/{cfg.record}"


def _no_access(cfg: Downloader, access: Access, why: str) -> http.DownloadError:
    """The one-line message for restricted files this run may not read."""
    if access:
        given = " and ".join(
            name
            for name, value in ((TOKEN_ENV, access.token), (SHARE_TOKEN_ENV, access.share_token))
            if value
        )
        todo = f"the token in {given} was not granted access: check it, or ask the owner again"
    else:
        todo = f"set {TOKEN_ENV} (personal access token) or {SHARE_TOKEN_ENV} (the share link you received)"
    return http.DownloadError(
        f"Zenodo record {cfg.record}: its files are restricted and access was not granted ({why}); "
        f"request access at {_record_page(cfg)}, then {todo} (README, 'Real data')"
    )


def _filtered(cfg: Downloader, why: str) -> http.DownloadError:
    """The one-line message for a 403 from Zenodo's client filter: not a matter for the record's owners."""
    return http.DownloadError(
        f"Zenodo record {cfg.record}: {why} was refused by Zenodo's client filter, not by the record's "
        f"owners (Zenodo throttles and blocks clients it does not recognise, e.g. python-requests, since "
        f"December 2025); this run sent User-Agent {http.user_agent()!r}: wait and run again, or set "
        f"PRDIT_CONTACT to your e-mail and write to Zenodo support if it persists"
    )


def _entries(record: dict[str, Any], cfg: Downloader, policy: http.RetryPolicy, access: Access) -> list[Any]:
    files = record.get("files")
    if isinstance(files, dict):  # InvenioRDM shape: {"enabled": ..., "entries": {...} | [...]}
        files = files.get("entries")
        files = list(files.values()) if isinstance(files, dict) else files
    if files:
        return list(files)
    links = record.get("links") if isinstance(record.get("links"), dict) else {}
    url = links.get("files") or f"{cfg.base_url.rstrip('/')}/records/{cfg.record}/files"
    try:
        listing = http.get_json(
            url,
            params=access.params,
            policy=policy,
            headers=access.headers,
            what=f"Zenodo record {cfg.record} file listing",
        )
    except http.FilterRefusedError:
        raise _filtered(cfg, "the file listing (HTTP 403 with an HTML block page)") from None
    except http.HTTPStatusError as exc:
        if exc.status in (401, 403, 404):
            raise _no_access(cfg, access, f"HTTP {exc.status} listing its files") from None
        raise
    entries = listing.get("entries") if isinstance(listing, dict) else listing
    if isinstance(entries, dict):
        entries = list(entries.values())
    return list(entries or [])


def list_items(
    cfg: Downloader,
    policy: http.RetryPolicy,
    *,
    patients: Sequence[str] = (),
    limit: int | None = None,
) -> tuple[list[RemoteFile], list[dict[str, str]]]:
    """The record's files (volumes filtered by `patients`, at most `limit` volumes) and failure rows."""
    base = cfg.base_url.rstrip("/")
    access = Access.from_env()
    record = _record(cfg, policy, access, base)
    entries = _entries(record, cfg, policy, access)
    if not entries:
        raise _no_access(cfg, access, "it lists no files")
    files, failed = _remote_files(entries, cfg, base)
    volumes = sorted((f for f in files if f.key.endswith(VOLUME_SUFFIX)), key=lambda f: f.key)
    others = sorted((f for f in files if not f.key.endswith(VOLUME_SUFFIX)), key=lambda f: f.key)
    if patients:
        wanted = set(patients)
        volumes = [f for f in volumes if f.patient in wanted]
        for missing in sorted(wanted - {f.patient for f in volumes}):
            failed.append(
                _row(
                    f"{missing}{VOLUME_SUFFIX}",
                    status="failed",
                    message=f"no volume {missing}{VOLUME_SUFFIX} in Zenodo record {cfg.record}",
                )
            )
    if limit is not None:
        volumes = volumes[:limit]
    return others + volumes, failed


def _record(cfg: Downloader, policy: http.RetryPolicy, access: Access, base: str) -> dict[str, Any]:
    """The record's JSON object; a refusal raises DownloadError saying who refused and why."""
    try:
        record = http.get_json(
            f"{base}/records/{cfg.record}",
            params=access.params,
            policy=policy,
            headers=access.headers,
            what=f"Zenodo record {cfg.record}",
        )
    except http.FilterRefusedError:
        raise _filtered(cfg, "the record (HTTP 403 with an HTML block page)") from None
    except http.HTTPStatusError as exc:
        if exc.status == 403 and not access:  # a record's metadata is public: no token was there to check
            raise _filtered(cfg, "the record (HTTP 403 before any token was checked)") from None
        if exc.status in (401, 403):
            raise _no_access(cfg, access, f"HTTP {exc.status} for the record") from None
        raise
    if not isinstance(record, dict):
        raise http.DownloadError(
            f"Zenodo record {cfg.record}: expected a JSON object, got {type(record).__name__}"
        )
    return record


def _remote_files(
    entries: list[Any], cfg: Downloader, base: str
) -> tuple[list[RemoteFile], list[dict[str, str]]]:
    """The listing's entries as RemoteFiles, and failure rows for those with an unsafe name or checksum."""
    files, failed = [], []
    for entry in entries:
        key = str(entry.get("key") or entry.get("filename") or "")
        links = entry.get("links") or {}
        url = (
            links.get("content")
            or links.get("self")
            or links.get("download")
            or f"{base}/records/{cfg.record}/files/{key}/content"
        )
        if not _SAFE_KEY.match(key):
            why = f"file name {key!r} is not a plain file name; not downloaded"
            failed.append(_row(key, status="failed", message=why))
            continue
        size = entry.get("size", entry.get("filesize"))
        try:
            checksum = _checksum(entry.get("checksum"))
        except http.DownloadError as exc:
            failed.append(_row(key, status="failed", message=f"Zenodo {cfg.record}/{key}: {exc}"))
            continue
        files.append(RemoteFile(key, int(size) if size is not None else None, checksum, url))
    return files, failed


_HEX = re.compile(r"^[0-9a-fA-F]+$")


def _checksum(value: Any) -> str | None:
    """'md5:<hex>' as InvenioRDM publishes it; the legacy deposit API's bare hex is an md5 too."""
    text = str(value or "").strip()
    if not text:
        return None
    if _HEX.match(text):
        if len(text) != 32:
            raise http.DownloadError(f"checksum {text!r} is bare hex but not an md5 (32 digits)")
        text = f"md5:{text}"
    http.parse_checksum(text)  # DownloadError for an algorithm we cannot compute
    return text.lower()


def _row(key: str, **fields: Any) -> dict[str, str]:
    patient = Path(key).stem if key.endswith(VOLUME_SUFFIX) else ""
    return records.row(patient=patient, series=key, path=key, files=1, **fields)


def done_row(item: RemoteFile, out: Path, previous: dict[str, str] | None) -> dict[str, str] | None:
    """The manifest row of a file already verified on disk (no network), or None when it must be fetched."""
    path = out / item.key
    if not path.is_file() or (item.size is not None and path.stat().st_size != item.size):
        return None
    same = not item.checksum or previous is not None and previous.get("checksum") == item.checksum
    if previous and previous.get("status") == "ok" and same:
        return {**previous, "message": ""}
    expected = http.parse_checksum(item.checksum)  # manifest lost or stale: verify the file locally
    algorithm = expected[0] if expected else "sha256"
    digest = file_digest(path, algorithm)
    if expected and digest != expected[1]:
        log.warning(
            "%s: on disk but its %s does not match the record; downloading it again", item.key, algorithm
        )
        return None
    return _row(item.key, bytes=path.stat().st_size, checksum=f"{algorithm}:{digest}", status="ok")


def needed_bytes(item: RemoteFile, out: Path) -> int:
    """Disk space still needed for the file (a .part already holds some of it)."""
    return max((item.size or 0) - http.size_of(http.part_path(out / item.key)), 0)


def fetch_item(
    item: RemoteFile,
    out: Path,
    cfg: Downloader,
    policy: http.RetryPolicy,
    on_bytes: Callable[[int], None],
) -> tuple[dict[str, str], int]:
    """Download and verify one file: its manifest row and the bytes received; DownloadError names it."""
    access = Access.from_env()
    try:
        fetched = http.download(
            item.url,
            out / item.key,
            expected=http.Expected(size=item.size, checksum=item.checksum),
            request=http.Request(headers=access.headers, params=access.params),
            policy=policy,
            on_bytes=on_bytes,
            what=f"Zenodo {cfg.record}/{item.key}",
        )
    except http.FilterRefusedError:
        raise http.DownloadError(
            f"{item.key}: {_filtered(cfg, 'the file (HTTP 403 with an HTML block page)')}"
        ) from None
    except http.HTTPStatusError as exc:
        if exc.status in (401, 403):
            raise http.DownloadError(f"{item.key}: {_no_access(cfg, access, f'HTTP {exc.status}')}") from None
        raise
    return _row(item.key, bytes=fetched.bytes, checksum=fetched.checksum, status="ok"), fetched.received


def finish(out: Path) -> None:
    """After a run: nothing to tidy (files are written beside their final names)."""
