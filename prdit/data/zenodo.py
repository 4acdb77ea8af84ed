"""A Zenodo record (RAD-ChestCT) through Zenodo's REST API: list its files, fetch each with Range resume, verify md5.

`GET <base>/records/<id>` answers JSON whose `files` list holds `key`, `size`, `checksum` ("md5:<hex>")
and `links` (`self`/`content`: the file's bytes). Newer InvenioRDM answers may instead point to a
`links.files` listing with `entries`; both are read. Files land as `<out>/<key>`. A record with
restricted files needs a personal access token in the environment variable ZENODO_TOKEN (never in
params.yaml); it is sent as a Bearer header. RAD-ChestCT volumes are `.npz` files (HU under key `ct`);
`--patients` selects volumes by file stem and `--limit` caps the number of volumes, while the small
non-volume files (label and metadata tables) always come along.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prdit.data import fetch

log = logging.getLogger(__name__)

TOKEN_ENV = "ZENODO_TOKEN"
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


def auth_headers() -> dict[str, str]:
    token = os.environ.get(TOKEN_ENV, "").strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def _entries(record: dict[str, Any], cfg: Any, policy: fetch.RetryPolicy) -> list[dict[str, Any]]:
    files = record.get("files")
    if isinstance(files, dict):  # InvenioRDM shape: {"enabled": ..., "entries": {...} | [...]}
        files = files.get("entries")
        files = list(files.values()) if isinstance(files, dict) else files
    if not files and isinstance(record.get("links", {}).get("files"), str):
        listing = (
            fetch.get_json(
                record["links"]["files"],
                policy=policy,
                headers=auth_headers(),
                what=f"Zenodo record {cfg.record} file listing",
            )
            or {}
        )
        files = listing.get("entries", [])
    return list(files or [])


def list_items(
    cfg: Any, policy: fetch.RetryPolicy, *, patients: Sequence[str] = (), limit: int | None = None
) -> tuple[list[RemoteFile], list[dict[str, str]]]:
    """The record's files (volumes filtered by `patients`, at most `limit` volumes) and failure rows."""
    base = cfg.base_url.rstrip("/")
    record = fetch.get_json(
        f"{base}/records/{cfg.record}",
        policy=policy,
        headers=auth_headers(),
        what=f"Zenodo record {cfg.record}",
    )
    if not isinstance(record, dict):
        raise fetch.DownloadError(
            f"Zenodo record {cfg.record}: expected a JSON object, got {type(record).__name__}"
        )
    entries = _entries(record, cfg, policy)
    if not entries:
        hint = (
            ""
            if auth_headers()
            else f" (restricted files? set {TOKEN_ENV} to a Zenodo access token with access)"
        )
        raise fetch.DownloadError(f"Zenodo record {cfg.record} lists no files{hint}")
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
        files.append(
            RemoteFile(key, int(size) if size is not None else None, entry.get("checksum") or None, url)
        )
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


def _row(key: str, **fields: Any) -> dict[str, str]:
    row = {
        "patient": Path(key).stem if key.endswith(VOLUME_SUFFIX) else "",
        "study": "",
        "series": key,
        "path": key,
        "files": "1",
        "bytes": "",
        "checksum": "",
        "status": "",
        "message": "",
    }
    row.update({k: str(v) for k, v in fields.items()})
    return row


def done_row(item: RemoteFile, out: Path, previous: dict[str, str] | None) -> dict[str, str] | None:
    """The manifest row of a file already verified on disk (no network), or None when it must be fetched."""
    path = out / item.key
    if not path.is_file() or (item.size is not None and path.stat().st_size != item.size):
        return None
    same = not item.checksum or previous is not None and previous.get("checksum") == item.checksum
    if previous and previous.get("status") == "ok" and same:
        return {**previous, "message": ""}
    expected = fetch.parse_checksum(item.checksum)  # manifest lost or stale: verify the file locally
    algorithm = expected[0] if expected else "sha256"
    digest = fetch.file_digest(path, algorithm)
    if expected and digest != expected[1]:
        log.warning(
            "%s: on disk but its %s does not match the record; downloading it again", item.key, algorithm
        )
        return None
    return _row(item.key, bytes=path.stat().st_size, checksum=f"{algorithm}:{digest}", status="ok")


def needed_bytes(item: RemoteFile, out: Path) -> int:
    """Disk space still needed for the file (a .part already holds some of it)."""
    return max((item.size or 0) - fetch.size_of(fetch.part_path(out / item.key)), 0)


def fetch_item(
    item: RemoteFile, out: Path, cfg: Any, policy: fetch.RetryPolicy, on_bytes: Callable[[int], None]
) -> tuple[dict[str, str], int]:
    """Download and verify one file: its manifest row and the bytes received; DownloadError names it."""
    fetched = fetch.download(
        item.url,
        out / item.key,
        size=item.size,
        checksum=item.checksum,
        policy=policy,
        on_bytes=on_bytes,
        headers=auth_headers(),
        what=f"Zenodo {cfg.record}/{item.key}",
    )
    return _row(item.key, bytes=fetched.bytes, checksum=fetched.checksum, status="ok"), fetched.received
