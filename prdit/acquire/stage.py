"""The stage functions of `prdit download` and `prdit fetch-weights`.

`prdit download <dataset>` fetches a public dataset into `sources.<dataset>.path`, verified.

The source's `download` key picks the client: `lidc-idri` (TCIA NBIA API, one zip per DICOM series),
`rad-chestct` (Zenodo record files), `phantom` (write the synthetic set) or `none` (the folder already
holds the data). Each run lists what is published, skips what is already on disk and verified (no
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
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from prdit import paths, tracking
from prdit.acquire import http, records, tcia, zenodo
from prdit.acquire.records import MANIFEST
from prdit.acquire.weights import DEFAULT_NAME, DEFAULT_OUT, DEFAULT_SHA256, fetch_weights
from prdit.config import Downloader, Params
from prdit.errors import PrditError
from prdit.io import sha256_file
from prdit.progress import progress
from prdit.protocol import MANUAL_WEIGHTS_STEP, PAPER_WEIGHTS_NAME

if TYPE_CHECKING:
    from prdit.config import Params

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


def run_download(
    p: Params,
    dataset: str,
    *,
    patients: Sequence[str] | None = None,
    limit: int | None = None,
    threads: int | None = None,
    manifest: str | Path | None = None,
) -> int:
    """Download `dataset`; return 0 when every selected item is on disk and verified, 1 otherwise.

    `patients`/`limit`/`threads`/`manifest` override `download.<name>.patients/limit/workers/manifest`.
    Problems with the whole run (listing unreachable, access refused, not enough disk space) raise
    http.DownloadError.
    """
    if dataset not in p.sources:
        raise KeyError(f"dataset {dataset!r} has no entry under 'sources' (known: {', '.join(p.sources)})")
    src = p.sources[dataset]
    out = Path(src.path)
    if src.download == "none":
        if not out.exists():
            raise http.DownloadError(
                f"sources.{dataset}.path: {out} does not exist (download: none expects the data there)"
            )
        log.info("%s: download: none, using the data already in %s", dataset, out)
        records.write(paths.manifest(dataset), inventory(out))
        return 0
    if src.download == "phantom":
        from prdit.data.phantom import write_phantom

        with tracking.stage_run(
            p, stage="download", dataset=dataset, used=p.used("download", dataset)
        ) as run:
            run.log_metrics(write_phantom(p, out))
        return 0
    client = CLIENTS[src.download]
    cfg = p.download[src.download]
    if manifest is not None:
        cfg = replace(cfg, manifest=str(manifest))
    if cfg.manifest:  # checked before any run is recorded or request made
        if client is not tcia:
            raise tcia.ManifestError(
                f"{cfg.manifest}: a .tcia manifest selects TCIA series, not {dataset} files"
            )
        tcia.read_tcia_manifest(cfg.manifest)
    patients = tuple(cfg.patients if patients is None else patients)
    limit = cfg.limit if limit is None else limit
    workers = max(1, threads or cfg.workers)
    policy = http.RetryPolicy(retries=cfg.retries)
    used = {
        **p.used("download", dataset),
        "cli": {"patients": list(patients), "limit": limit, "threads": workers, "manifest": cfg.manifest},
    }
    with tracking.stage_run(p, stage="download", dataset=dataset, used=used) as run:
        status, metrics = _download(
            client, cfg, out, policy, patients=patients, limit=limit, workers=workers, label=dataset
        )
        run.log_metrics(metrics)
        run.log_artifact(out / MANIFEST)
    return status


def _download(
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

    last_write = time.monotonic()
    total = sum(sizes) or None
    out.mkdir(parents=True, exist_ok=True)
    with http.ByteProgress(f"{label} download", total=total) as bar, ThreadPoolExecutor(workers) as pool:
        futures = {pool.submit(_fetch_one, client, item, out, cfg, policy, bar): item for item in todo}
        try:
            for future in progress(as_completed(futures), desc=f"{label} items", total=len(futures)):
                item = futures[future]
                row, _ = future.result()
                results[item.key] = row
                if time.monotonic() - last_write >= MANIFEST_EVERY_S:
                    records.write(manifest, {**rows, **results})
                    last_write = time.monotonic()
        except BaseException:  # Ctrl-C: stop the workers after their current block, keep what is done
            http.STOP.set()
            pool.shutdown(wait=True, cancel_futures=True)
            http.STOP.clear()
            records.write(manifest, {**rows, **results})
            raise
    received = bar.done
    records.write(manifest, {**rows, **results})
    client.finish(out)

    selected = [results[k] for k in [i.key for i in items] + listing_keys]
    failed = [r for r in selected if r["status"] != "ok"]
    ok = len(selected) - len(failed)
    metrics = {
        "items_listed": len(items),
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


class PaperWeightsError(PrditError, FileNotFoundError):
    """protocol: paper needs the reference's MedicalNet file, and this run has no way to get it."""


def run_fetch_weights(p: Params, out: Path | None = None) -> int:
    """Stage function of `prdit fetch-weights`: evaluate.url (or the public default) to `out` or evaluate.weights.

    Under `protocol: paper` the 23-dataset file is refused by content (its sha256), whatever its name.
    """
    ev = p.evaluate
    target = Path(out or ev.weights or DEFAULT_OUT)
    if not ev.url and target.name == PAPER_WEIGHTS_NAME:
        raise PaperWeightsError(
            f"{target}: without evaluate.url prdit fetch-weights fetches the 23-dataset MedicalNet, which is "
            f"saved under its own name ({DEFAULT_NAME}), never as {PAPER_WEIGHTS_NAME} (the paper's network): "
            f"set evaluate.weights to models/medicalnet/{DEFAULT_NAME}, or {MANUAL_WEIGHTS_STEP}"
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
