"""The patient-level split of `prdit split` (prdit.stages.split): deterministic patient-level train/val/test split of the preprocessed cases.

Patients are ranked by a seeded hash of their id, so the split depends only on the seed and the set
of patients (not on file order), and adding patients moves few existing ones. All cases of one patient
land in the same split. The first round(test_fraction * n) patients are test, the next val, the rest train;
with at least three patients each non-zero fraction gets at least one patient.

Under `protocol: paper` the split is the reference's (scripts/split_train_val.py): the sorted patients
shuffled by Python's random.Random(split.seed), the last 200 held out as val (prdit.protocol), no test
split; train.txt and val.txt keep that shuffled order, which the paper's real evaluation set follows.
"""

from __future__ import annotations

import hashlib
import logging
import random

from prdit import protocol

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def assign(patients: list[str], seed: int, val_fraction: float, test_fraction: float) -> dict[str, str]:
    """patient -> 'train' | 'val' | 'test'."""
    ranked = sorted(set(patients), key=lambda pid: hashlib.sha256(f"{seed}:{pid}".encode()).hexdigest())
    n = len(ranked)
    n_test, n_val = round(test_fraction * n), round(val_fraction * n)
    if n >= 3:
        n_test = max(n_test, 1 if test_fraction > 0 else 0)
        n_val = max(n_val, 1 if val_fraction > 0 else 0)
    while n_test + n_val >= n and (n_test or n_val):  # always keep a training patient
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    return {
        pid: "test" if i < n_test else "val" if i < n_test + n_val else "train"
        for i, pid in enumerate(ranked)
    }


def assign_paper(patients: list[str], seed: int) -> dict[str, str]:
    """patient -> 'train' | 'val' in the reference's shuffled order (dict order is that order)."""
    order = sorted(set(patients))
    random.Random(seed).shuffle(order)
    n_train = len(order) - protocol.paper_val_count(len(order))
    return {pid: "train" if i < n_train else "val" for i, pid in enumerate(order)}
