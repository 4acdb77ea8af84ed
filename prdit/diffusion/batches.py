"""Which seed each sample gets and which batches of samples one job draws (all of them, or one shard)."""

from __future__ import annotations

import numpy as np


def sample_seeds(seed: int, n: int) -> list[int]:
    """Independent per-sample seeds derived from (seed, i): sample i never depends on n or the batch."""
    return [
        int(np.random.SeedSequence([seed, i]).generate_state(1, dtype=np.uint64)[0] >> 1) for i in range(n)
    ]


def shard_batches(n: int, batch_size: int, shards: int = 1, shard: int | None = None) -> list[list[int]]:
    """The batches of sample indices one job draws: all of them, or shard `shard` of `shards`.

    A shard gets whole, contiguous batches of the unsharded run (never a re-batched subset), so every
    sample goes through the network in the same batch as in one job and the files are bit-identical on
    a CPU. Shard sizes differ by at most one batch.
    """
    bs = max(1, batch_size)
    batches = [list(range(s, min(n, s + bs))) for s in range(0, n, bs)]
    if shard is None:
        return batches
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} is not in 0..{shards - 1} (sample.shards = {shards})")
    if shards > len(batches):
        raise ValueError(
            f"sample.shards = {shards} exceeds the {len(batches)} batches of sample.n / sample.batch_size"
        )
    return batches[shard * len(batches) // shards : (shard + 1) * len(batches) // shards]
