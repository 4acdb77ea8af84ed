"""`prdit merge-samples`: join the shards of `prdit sample --shard` into samples/<dataset>[/<experiment>]/<size>."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from prdit import io, tracking
from prdit.diffusion.batches import shard_batches
from prdit.errors import PrditError
from prdit.stages.sample import link, montage_from_files, out_dir

if TYPE_CHECKING:
    from prdit.config import Params

log = logging.getLogger(__name__)


def run(p: Params, dataset: str, size: int) -> None:
    """Join samples/<dataset>/<size>.shards/{0..shards-1}/ into samples/<dataset>/<size>/ (atomically).

    Every sample index must come from exactly the shard that owns it; files are hard-linked (copied
    across filesystems), and montage.png is drawn from the written files, so the folder is byte for
    byte what one unsharded `prdit sample` writes.
    """
    s = p.sample
    dest = out_dir(dataset, size, name=p.exp_name)
    with tracking.stage_run(
        p, stage="sample", dataset=dataset, size=size, used=p.used("sample", dataset)
    ) as run:
        tracking.log_split(run, p, dataset, size, "train", "training")  # what the sampled model learned from
        run.log_params({"shard": f"merge of {s.shards}"})
        with io.atomic_dir(dest) as tmp:
            for k in range(s.shards):
                src = out_dir(dataset, size, k, p.exp_name)
                want = {f"{i}.nii.gz" for b in shard_batches(s.n, s.batch_size, s.shards, k) for i in b}
                have = {f.name for f in src.glob("*.nii.gz")} if src.is_dir() else set()
                if have != want:
                    raise PrditError(
                        f"{src}: shard {k}/{s.shards} holds {sorted(have) or 'nothing'}, expected "
                        f"{sorted(want, key=lambda f: int(f.split('.')[0]))} (re-run its sampling job)"
                    )
                for name in sorted(want):
                    link(src / name, tmp / name)
            montage_from_files(tmp, s.n, p.preprocess.window)
        log.info("merged %d shards (%d samples) into %s", s.shards, s.n, dest)
        run.log_image(dest / "montage.png", artifact_path="montages")
