"""`prdit split`: the patient-level train/val/test split of the preprocessed cases into data/splits/<dataset>/
(the rule: prdit.data.splits)."""

from __future__ import annotations

import logging

from prdit import paths, tracking
from prdit.config import Params
from prdit.data.qc import read_ok
from prdit.data.splits import SPLITS, assign, assign_paper
from prdit.io import atomic_path, write_json

log = logging.getLogger(__name__)


def run(p: Params, dataset: str) -> None:
    """Write data/splits/<dataset>/{train,val,test}.txt (one case id per line) and summary.json."""

    cfg = p.split
    with tracking.stage_run(p, stage="split", dataset=dataset, used=p.used("split", dataset)) as run:
        cases = read_ok(paths.processed(dataset) / "qc.csv")
        if cases.empty:
            raise ValueError(f"data/processed/{dataset}/qc.csv: no preprocessed case to split")
        patients = [pid or case for pid, case in zip(cases["patient_id"], cases["case"])]
        if p.conventions.paper_split:
            which = assign_paper(patients, cfg.seed)
            rank = {pid: i for i, pid in enumerate(which)}  # the shuffled order
            pid_of = dict(zip(cases["case"], patients))
            members = {
                s: sorted(
                    (c for c, pid in pid_of.items() if which[pid] == s), key=lambda c: (rank[pid_of[c]], c)
                )
                for s in SPLITS
            }
        else:
            which = assign(patients, cfg.seed, cfg.val_fraction, cfg.test_fraction)
            members = {
                s: sorted(c for c, pid in zip(cases["case"], patients) if which[pid] == s) for s in SPLITS
            }
        out = paths.splits(dataset)
        for name, ids in members.items():
            with atomic_path(out / f"{name}.txt") as tmp:
                tmp.write_text("".join(f"{c}\n" for c in ids))
        counts = {f"{s}_cases": len(ids) for s, ids in members.items()}
        counts.update({f"{s}_patients": sum(1 for v in which.values() if v == s) for s in SPLITS})
        write_json(out / "summary.json", counts)
        run.log_metrics(counts)
    log.info("split %s: %s", dataset, ", ".join(f"{s} {len(ids)}" for s, ids in members.items()))
