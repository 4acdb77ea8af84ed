"""`prdit download <dataset>`: fetch a public dataset into `sources.<dataset>.path`, verified.

The source's `download` key picks what happens: `lidc-idri` or `rad-chestct` (prdit.acquire.batch.download
with the TCIA or Zenodo client), `phantom` (write the synthetic set, prdit.data.phantom) or `none` (the
folder already holds the data: only its inventory goes into the manifest). One failed item never stops the
others; the run returns 1 (the CLI's exit status) if any failed, after logging which and why.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from prdit import paths, tracking
from prdit.acquire import batch, http, records, tcia
from prdit.acquire.records import MANIFEST
from prdit.config import Params
from prdit.data.phantom import write_phantom

log = logging.getLogger(__name__)


def run(
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
        records.write(paths.manifest(dataset), batch.inventory(out))
        return 0
    if src.download == "phantom":
        with tracking.stage_run(
            p, stage="download", dataset=dataset, used=p.used("download", dataset)
        ) as run:
            run.log_metrics(write_phantom(p.phantom, out))
        return 0
    client = batch.CLIENTS[src.download]
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
        status, metrics = batch.download(
            client, cfg, out, policy, patients=patients, limit=limit, workers=workers, label=dataset
        )
        run.log_metrics(metrics)
        run.log_artifact(out / MANIFEST)
    return status
