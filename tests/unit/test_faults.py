"""Faults of issue 18 point 6: each fails on the code before the fix (CPU, in-process, tiny)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import prdit.model as models
from prdit.errors import PrditError
from prdit.model.files import load as load_model
from prdit.train import stages
from prdit.train.engine import Job, fit
from tests.support.training_checks import make_job


def _tiny_job(out: Path, **kw) -> tuple[Job, stages.StageModel]:
    torch.manual_seed(0)
    model = models.create("PRDiT-T/8/0", 16)
    sm = stages.StageModel(model, 16, [n for n, _ in model.named_parameters()])
    job = make_job(out, batch_size=2, lr=1e-3, log_every=1, preview_n=0, **kw)
    return job, sm


def _volumes(n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.rand(1, 16, 16, 16, generator=g) * 2 - 1 for _ in range(n)]


def test_rerunning_a_finished_stage_changes_nothing(tmp_path: Path) -> None:
    job, sm = _tiny_job(tmp_path, steps=2, checkpoint_every=100, val_every=100)
    assert fit(job, sm, _volumes(4), None) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert json.loads(before["metrics.json"])["steps_this_run"] == 2
    job, sm = _tiny_job(tmp_path, steps=2, checkpoint_every=100, val_every=100)
    assert fit(job, sm, _volumes(4), None) == 0
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert after == before  # metrics.json keeps steps_this_run 2 and its loss


def test_truncated_model_file_is_a_one_line_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    models.save(path, models.create("PRDiT-T/8/0", 16), meta={})
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(PrditError, match="model.pt: cannot read model file") as info:
        load_model(path)
    assert "\n" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_corrupt_training_file_is_named_and_leaves_last_pt(tmp_path: Path) -> None:
    from prdit.data.dataset import VolumeDataset

    (tmp_path / "data/splits/ds").mkdir(parents=True)
    (tmp_path / "data/splits/ds/train.txt").write_text("a\nb\n")
    folder = tmp_path / "data/processed/ds/16"
    folder.mkdir(parents=True)
    np.save(folder / "a.npy", np.zeros((16, 16, 16), np.float16))
    (folder / "b.npy").write_bytes(b"")
    with pytest.raises(PrditError, match="b.npy: unreadable training cache") as info:
        # before job_from_params/fit touch last.pt
        VolumeDataset(folder, tmp_path / "data/splits/ds/train.txt", 16, "ds", "train")
    assert "\n" not in str(info.value)


def test_only_the_newest_stale_checkpoint_is_kept(tmp_path: Path) -> None:
    from prdit.train import resume as ckpt

    last = tmp_path / "last.pt"
    for i in range(3):
        last.write_text(str(i))
        ckpt.move_aside(last, "test")
    stale = sorted(tmp_path.glob("last.stale-*.pt"))
    assert len(stale) == 1 and stale[0].read_text() == "2" and not last.exists()


@pytest.mark.parametrize(
    ("content", "why"),
    [(b"", "is empty"), (b"a: [1\n", "not valid YAML at line 2"), (b"\xff\xfe\x00", "cannot read")],
)
def test_broken_parameter_file_is_one_line_naming_it(tmp_path: Path, content: bytes, why: str) -> None:
    from prdit.config import ConfigError, load

    bad = tmp_path / "my params.yaml"
    bad.write_bytes(content)
    root = Path(__file__).resolve().parents[2]
    with pytest.raises(ConfigError, match=why) as info:
        load([root / "params.yaml", bad])
    assert str(info.value).startswith(f"{bad}:") and "\n" not in str(info.value)


def test_spool_replay_is_idempotent_and_survives_a_missing_artifact(tmp_path: Path, monkeypatch) -> None:
    from mlflow.tracking import MlflowClient

    from prdit import tracking

    ts = 1_700_000_000_000
    events = [
        {"kind": "start", "experiment": "e", "run_name": "r", "tags": {"a": "1"}, "ts": ts},
        {"kind": "metrics", "metrics": {"loss": 1.0}, "step": 1, "ts": ts + 1},
        {"kind": "artifact", "path": str(tmp_path / "gone.json"), "artifact_path": None, "ts": ts + 2},
        {"kind": "metrics", "metrics": {"loss": 0.5}, "step": 2, "ts": ts + 3},
        {"kind": "end", "status": "FINISHED", "ts": ts + 4},
    ]
    spool = tmp_path / "run.jsonl"
    spool.write_text("".join(json.dumps(e) + "\n" for e in events))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    assert tracking.import_spool(spool, uri) == 4  # the missing artifact is skipped, the rest sent
    assert tracking.import_spool(spool, uri) == 0  # a second import adds nothing
    client = MlflowClient(uri)
    found = client.search_runs([client.get_experiment_by_name("e").experiment_id])
    assert [r.info.status for r in found] == ["FINISHED"]
    assert [m.value for m in client.get_metric_history(found[0].info.run_id, "loss")] == [1.0, 0.5]


def test_temporary_folders_of_killed_writers_are_cleaned(tmp_path: Path) -> None:
    import subprocess
    import sys

    from prdit.io import atomic_dir

    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    dead = int(child.stdout)  # a pid that has exited
    orphan = tmp_path / f".samples.{dead}.abcd.tmp"
    orphan.mkdir()
    (orphan / "x.nii.gz").write_bytes(b"partial")
    with atomic_dir(tmp_path / "samples") as tmp:
        (tmp / "y.txt").write_text("ok")
    assert not orphan.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samples"]
