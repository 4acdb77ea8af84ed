"""A download in parallel, verified, resumable: what `prdit download` (prdit.stages.download) runs.

`download` fetches the items a client lists into a folder: `lidc-idri` (prdit.acquire.tcia: TCIA NBIA
API, one zip per DICOM series) or `rad-chestct` (prdit.acquire.zenodo: Zenodo record files); `inventory`
fingerprints a folder that already holds the data (`download: none`). Each run lists what is published, skips what is already on disk and verified (no
further network), fetches the rest in parallel, and rewrites `<path>/manifest.csv`
(patient, study, series, path, files, bytes, checksum, status, message). One failed item never stops
the others; the run returns 1 (the CLI's exit status) if any failed, after logging which and why.
A client (tcia, zenodo) is a module with list_items, done_row, needed_bytes, fetch_item and finish.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from prdit.acquire import http, records, tcia, zenodo
from prdit.acquire.records import MANIFEST
from prdit.progress import progress

if TYPE_CHECKING:
    from prdit.config import Downloader

log = logging.getLogger(__name__)

CLIENTS: dict[str, ModuleType] = {"lidc-idri": tcia, "rad-chestct": zenodo}
MANIFEST_EVERY_S = 5.0


def inventory(root: Path) -> dict[str, dict[str, str]]:
    """One manifest row per folder of user-provided data, fingerprinted by names, sizes and mtimes (no reads).

    The fingerprint lets Snakemake/DVC notice changed input without hashing a hundred gigabytes.
    """
    rows: dict[str, dict[str, str]] = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files = sorted(
            f for f in files if not f.startswith(".") and not (Path(folder) == root and f == MANIFEST)
        )
        if not files:
            continue
        digest = hashlib.sha256()
        total = 0
        for name in files:
            st = (Path(folder) / name).stat()
            total += st.st_size
            digest.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        rel = str(Path(folder).relative_to(root))
        rows[rel] = records.row(
            series=rel,
            path=Path(folder),
            files=len(files),
            bytes=total,
            checksum="listing-sha256:" + digest.hexdigest(),
            status="present",
            message="user-provided (download: none)",
        )
    if not rows:
        raise http.DownloadError(f"{root}: no files found (download: none expects the data there)")
    return rows


def download(
    client: ModuleType,
    cfg: Downloader,
    out: Path,
    policy: http.RetryPolicy,
    *,
    patients: Sequence[str],
    limit: int | None,
    workers: int,
    label: str,
) -> tuple[int, dict[str, float]]:
    """Fetch what `client` lists (the `patients`, the first `limit`) into `out` with `workers` threads,
    skipping what is already there and verified; (exit status: 1 if any item failed, the run's counts)."""
    # what is listed, what manifest.csv already holds verified, and room on disk for the rest
    items, failed_listing = client.list_items(cfg, policy, patients=patients, limit=limit)
    manifest = out / MANIFEST
    rows = records.read(manifest)
    results: dict[str, dict[str, str]] = {}
    todo = []
    for item in items:
        row = client.done_row(item, out, rows.get(item.key))
        if row is None:
            todo.append(item)
        else:
            results[item.key] = row
    present = len(results)
    log.info(
        "%s: %d listed, %d already on disk, %d to download with %d workers",
        label,
        len(items),
        present,
        len(todo),
        workers,
    )
    sizes = [client.needed_bytes(item, out) for item in todo]
    if todo:
        needed = sum(sizes) + workers * max(sizes)  # + the files being staged at any one time
        if needed:
            http.check_space(out, needed, label)
        else:
            log.warning("%s: the listing gives no sizes; skipping the disk-space check", label)
    listing_keys = [row["series"] or f"patient:{row['patient']}" for row in failed_listing]
    results.update(zip(listing_keys, failed_listing))

    # the rest in parallel, manifest.csv rewritten as items finish
    out.mkdir(parents=True, exist_ok=True)

    def fetch(item: Any, bar: http.ByteProgress) -> tuple[dict[str, str], int]:
        return _fetch_one(client, item, out, cfg, policy, bar)

    def save() -> None:
        records.write(manifest, {**rows, **results})

    received = _fetch_all(fetch, todo, workers, label, results, save, sum(sizes) or None)
    save()
    client.finish(out)

    selected = [results[k] for k in [i.key for i in items] + listing_keys]
    return _tally(selected, len(items), present, received, label, manifest)


def _tally(
    selected: list[dict[str, str]], listed: int, present: int, received: int, label: str, manifest: Path
) -> tuple[int, dict[str, float]]:
    """The run's counts from the manifest rows of what it selected, logged with each failure's reason;
    exit status 1 if any failed."""
    failed = [r for r in selected if r["status"] != "ok"]
    ok = len(selected) - len(failed)
    metrics = {
        "items_listed": listed,
        "items_ok": ok,
        "items_failed": len(failed),
        "items_present": present,
        "items_downloaded": ok - present,
        "bytes_received": received,
        "bytes_on_disk": sum(int(r["bytes"] or 0) for r in selected if r["status"] == "ok"),
    }
    log.info(
        "%s: %d ok (%d were already present), %d failed; %s received; manifest %s",
        label,
        ok,
        present,
        len(failed),
        http.human_bytes(received),
        manifest,
    )
    if failed:
        log.error(
            "%s: %d item(s) failed:\n%s", label, len(failed), "\n".join(f"  {r['message']}" for r in failed)
        )
        return 1, metrics
    return 0, metrics


def _fetch_all(
    fetch: Callable[[Any, http.ByteProgress], tuple[dict[str, str], int]],
    todo: list,
    workers: int,
    label: str,
    results: dict[str, dict[str, str]],
    save: Callable[[], None],
    total: int | None,
) -> int:
    """`fetch` each of `todo` on `workers` threads into `results`, `save`-ing the manifest every
    MANIFEST_EVERY_S; on Ctrl-C the workers stop after their current block and what is done is saved.
    Returns the bytes received."""
    last_write = time.monotonic()
    with http.ByteProgress(f"{label} download", total=total) as bar, ThreadPoolExecutor(workers) as pool:
        futures = {pool.submit(fetch, item, bar): item for item in todo}
        try:
            for future in progress(as_completed(futures), desc=f"{label} items", total=len(futures)):
                row, _ = future.result()
                results[futures[future].key] = row
                if time.monotonic() - last_write >= MANIFEST_EVERY_S:
                    save()
                    last_write = time.monotonic()
        except BaseException:  # Ctrl-C: stop the workers after their current block, keep what is done
            http.STOP.set()
            pool.shutdown(wait=True, cancel_futures=True)
            http.STOP.clear()
            save()
            raise
    return bar.done


def _fetch_one(
    client: ModuleType,
    item: Any,
    out: Path,
    cfg: Downloader,
    policy: http.RetryPolicy,
    bar: http.ByteProgress,
) -> tuple[dict[str, str], int]:
    """Fetch one item; any error becomes a failed manifest row naming the item and the reason."""
    try:
        return client.fetch_item(item, out, cfg, policy, bar)
    except Exception as exc:  # one bad item never stops the batch
        message = (
            str(exc) if isinstance(exc, http.DownloadError) else f"{item.key}: {type(exc).__name__}: {exc}"
        )
        log.error("%s", message)
        where = {"patient": getattr(item, "patient", ""), "study": getattr(item, "study", "")}
        return records.row(**where, series=item.key, status="failed", message=message), 0
