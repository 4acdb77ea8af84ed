"""Summarise volumes for the metrics, with real-set features cached per dataset and size.

The cache (one file per dataset and size, named by the caller: EvalInputs.feature_cache; the evaluate
stage keeps it at data/features/<dataset>/<size>/real.npz) holds, per real case, its features, a 32^3
thumbnail, a HU histogram and its seam/texture stats (prdit.evaluate.texture), stamped with the file's
size and mtime and with the extractor and window used; an evaluation re-extracts only cases that are new
or changed, so a new set of samples costs only its own features.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from torch import nn

from prdit import io
from prdit.errors import PrditError
from prdit.evaluate.extractor import ExtractorInfo, extract_features
from prdit.evaluate.texture import STRIDE, volume_stats
from prdit.evaluate.volumes import EvalInputs, Summary, hu_histogram, read_volume, thumbnail
from prdit.io import atomic_path
from prdit.progress import progress

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: per-case seam/texture stats
SPLITS = ("train", "val", "test")


BATCH = 4  # volumes per extractor forward pass (prdit plan sizes its GPU memory from it)


@dataclass(frozen=True)
class Extractor:
    """The feature extractor as an evaluation runs it (the other statistics do not depend on it)."""

    model: nn.Module  # the network (prdit.evaluate.extractor.build_extractor), on its device
    info: ExtractorInfo  # what it is: the real-set cache's identity, the metrics' "extractor"
    axes: str = "zyx"  # axis order it sees: 'zyx' (our arrays) or 'xyz' (nibabel's, the reference's)
    batch_size: int = BATCH  # volumes per forward pass

    def __post_init__(self) -> None:
        if self.axes not in ("zyx", "xyz"):
            raise ValueError(f"axes must be 'zyx' or 'xyz', got {self.axes!r}")


def summarise(
    paths: Sequence[Path],
    ids: Sequence[str],
    window: Sequence[float],
    extractor: Extractor,
    errors: list[str],
    *,
    read: Callable[[Path], np.ndarray],
    desc: str = "features",
    keep: list | None = None,
) -> Summary:
    """Read, normalise and summarise volumes; a file that fails is logged, listed in `errors` and skipped.

    `read` (path -> [-1, 1] cube: read_volume for ours, prdit.evaluate.baselines.read_unit for a
    baseline's) reads each file; a PrditError it raises (a file that breaks its declaration) stops the
    evaluation instead of skipping the file. `window` is the HU window of the histograms. `keep` (e.g. a
    VolumeBank) receives each volume read ([D, H, W] in [-1, 1], in the order of the summary's ids), so
    nothing is read twice. Features are extracted `extractor.batch_size` volumes at a time.
    """
    model, axes, batch_size = extractor.model, extractor.axes, extractor.batch_size
    ok_ids, feats, thumbs, hists, stats, batch = [], [], [], [], [], []

    def flush() -> None:
        feats.append(extract_features(model, batch, batch_size=len(batch)))
        batch.clear()

    for path, case in progress(list(zip(paths, ids)), desc=desc):
        try:
            x = read(path)
        except PrditError:
            raise
        except Exception as exc:  # noqa: BLE001 - one bad file never stops the evaluation
            msg = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
            log.error("skipping a volume: %s", msg)
            errors.append(msg)
            continue
        ok_ids.append(case)
        if keep is not None:
            keep.append(x)
        thumbs.append(thumbnail(x))
        hists.append(hu_histogram(x, window))
        stats.append(volume_stats(x, STRIDE) if min(x.shape) > STRIDE else np.full(3, np.nan))
        batch.append(np.ascontiguousarray(x.transpose(2, 1, 0)) if axes == "xyz" else x)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if not ok_ids:
        return Summary.concat([])
    return Summary(ok_ids, np.concatenate(feats), np.stack(thumbs), np.stack(hists), np.stack(stats))


def _stamp(path: Path) -> str:
    """The cache's change stamp of a real volume (prdit.io.file_stamp: size, mtime, inode)."""
    return ":".join(map(str, io.file_stamp(path)))


def _load_cache(
    path: Path, meta: dict
) -> dict[str, tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as z:
            if json.loads(str(z["meta"])) != meta:
                log.info("%s: made with another extractor/window/version; rebuilding", path)
                return {}
            return {
                str(i): (str(s), f, t, h, st)
                for i, s, f, t, h, st in zip(
                    z["ids"], z["stamps"], z["features"], z["thumbs"], z["hists"], z["stats"]
                )
            }
    except Exception as exc:  # noqa: BLE001 - a damaged cache is rebuilt, never trusted
        log.warning("%s: unreadable feature cache (%s); rebuilding", path, exc)
        return {}


def real_summaries(
    dataset: str,
    size: int,
    window: Sequence[float],
    extractor: Extractor,
    errors: list[str],
    inputs: EvalInputs,
) -> dict[str, Summary]:
    """Summaries of the real train/val/test cases (in split-file order), extracting only what the cache lacks;
    `inputs` names the real cubes' folder, the split files and the cache file; `dataset` and `size` label
    the log and progress lines, and `size` is the cubes' expected edge."""
    axes = extractor.axes
    meta = {
        "version": CACHE_VERSION,
        "extractor": extractor.info.key,
        "window": [float(w) for w in window],
        "size": size,
        "seam_stride": STRIDE,
        **({"axes": axes} if axes != "zyx" else {}),
    }
    ids_by_split: dict[str, list[str]] = {}
    for split in SPLITS:
        f = inputs.splits.get(split)
        ids_by_split[split] = (
            [ln.strip() for ln in f.read_text().splitlines() if ln.strip()] if f and f.is_file() else []
        )
    if not ids_by_split["train"]:
        raise FileNotFoundError(f"{inputs.splits.get('train')}: no training cases listed (run `prdit split`)")
    cpath = inputs.feature_cache
    cached = _load_cache(cpath, meta)
    folder = inputs.real
    entries: dict[str, tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
    todo_paths, todo_ids, todo_stamps = [], [], {}
    for case in dict.fromkeys(c for s in SPLITS for c in ids_by_split[s]):
        path = folder / f"{case}.nii.gz"
        if not path.is_file():
            log.error("skipping real case %s: %s not found", case, path)
            errors.append(f"{path}: not found")
            continue
        stamp = _stamp(path)
        if case in cached and cached[case][0] == stamp:
            entries[case] = cached[case]
        else:
            todo_paths.append(path)
            todo_ids.append(case)
            todo_stamps[case] = stamp
    log.info("real features for %s/%d: %d cached, %d to extract", dataset, size, len(entries), len(todo_ids))
    if todo_ids:
        new = summarise(
            todo_paths,
            todo_ids,
            window,
            extractor,
            errors,
            read=partial(read_volume, size=size, kind="real", window=window),
            desc=f"real features {dataset}/{size}",
        )
        for k, case in enumerate(new.ids):
            entries[case] = (todo_stamps[case], new.features[k], new.thumbs[k], new.hists[k], new.stats[k])
        if new.ids:
            _write_cache(cpath, meta, entries)
    out = {}
    for split in SPLITS:
        ids = [c for c in ids_by_split[split] if c in entries]
        out[split] = (
            Summary.concat([])
            if not ids
            else Summary(
                ids,
                np.stack([entries[c][1] for c in ids]),
                np.stack([entries[c][2] for c in ids]),
                np.stack([entries[c][3] for c in ids]),
                np.stack([entries[c][4] for c in ids]),
            )
        )
    return out


def _write_cache(path: Path, meta: dict, entries: dict) -> None:
    ids = sorted(entries)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(
            fh,
            meta=np.array(json.dumps(meta)),
            ids=np.array(ids),
            stamps=np.array([entries[i][0] for i in ids]),
            features=np.stack([entries[i][1] for i in ids]),
            thumbs=np.stack([entries[i][2] for i in ids]),
            hists=np.stack([entries[i][3] for i in ids]),
            stats=np.stack([entries[i][4] for i in ids]),
        )
