"""Model and checkpoint files are byte-deterministic, and a child stage checks its parent's content, not its bytes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

import prdit.model as models
from prdit.config import load
from prdit.io import sha256_file
from prdit.train import resume as ckpt
from prdit.train import stages
from prdit.train.engine import fit, job_from_params

ROOT = Path(__file__).resolve().parents[1]
DS = "phantom"


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = models.create("PRDiT-T/8/1", input_size=16)
    with torch.no_grad():  # non-zero everywhere (heads start at zero)
        for q in model.parameters():
            q.add_(torch.randn_like(q) * 0.01)
    return model


def test_saving_the_same_model_twice_gives_the_same_bytes(tmp_path: Path) -> None:
    model, meta = _model(), {"stage": "global", "params": {"lr": 1e-4}, "parents": {"a": "b"}}
    paths = [tmp_path / "a" / "model.pt", tmp_path / "b" / "other-name.pt", tmp_path / "a" / "model.pt"]
    digests = []
    for path in paths:  # other folders, other names, the same path again
        models.save(path, model, meta=meta)
        digests.append(sha256_file(path))
    assert len(set(digests)) == 1
    # a rebuilt copy of the model (other storages, loaded from the file) also saves to the same bytes
    again = models.load(paths[0])
    models.save(tmp_path / "c.pt", again, meta=meta)
    assert sha256_file(tmp_path / "c.pt") == digests[0]
    assert not list(tmp_path.rglob("*.tmp*")), "no temporary file left behind"


def test_content_hash_follows_weights_and_architecture_not_meta(tmp_path: Path) -> None:
    models.save(tmp_path / "a.pt", _model(0), meta={"git_commit": "abc"})
    models.save(tmp_path / "b.pt", _model(0), meta={"git_commit": "def-dirty", "steps": 3})
    models.save(tmp_path / "c.pt", _model(1), meta={"git_commit": "abc"})
    assert sha256_file(tmp_path / "a.pt") != sha256_file(tmp_path / "b.pt")
    assert models.content_hash(tmp_path / "a.pt") == models.content_hash(tmp_path / "b.pt")
    assert models.content_hash(tmp_path / "a.pt") != models.content_hash(tmp_path / "c.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="bad.pt"):
        models.content_hash(tmp_path / "bad.pt")


def test_training_checkpoint_writer_is_byte_deterministic(tmp_path: Path) -> None:
    state = {
        "stage": "local",
        "fingerprint": {"lr": 1e-4},
        "step": 7,
        "model": _model().state_dict(),
        "ema": _model(1).state_dict(),
        "rng": ckpt.rng_state(),
    }
    ckpt.save(tmp_path / "x" / "last.pt", state)
    ckpt.save(tmp_path / "y" / "last.pt", state)
    assert (tmp_path / "x" / "last.pt").read_bytes() == (tmp_path / "y" / "last.pt").read_bytes()


@pytest.fixture
def params(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PRDIT_TRACKING", "off")
    common = {"checkpoint_every": 2, "val_every": 2, "log_every": 1, "preview_every": 0}
    return load(
        ROOT / "params.yaml",
        overrides={
            "preprocess": {"size": 16, "highres_size": 32},
            "train": {
                "common": common,
                "local": {"model": "PRDiT-T/8/0", "steps": 2, "batch_size": 2},
                "global": {"model": "PRDiT-T/8/1", "steps": 2, "batch_size": 2},
            },
        },
    )


def _train(p, stage: str) -> tuple[stages.StageModel, object]:
    sm = stages.build(p, DS, stage)
    job = dataclasses.replace(job_from_params(p, DS, stage, sm.parents), preview_n=0)
    g = torch.Generator().manual_seed(0)
    vols = [torch.rand(1, 16, 16, 16, generator=g) * 2 - 1 for _ in range(4)]
    assert fit(job, sm, vols, vols[:2]) == 0
    return sm, job


def test_a_parent_saved_again_with_the_same_weights_keeps_the_childs_checkpoint(params) -> None:
    _train(params, "local")
    local = stages.model_dir(DS, "local") / "model.pt"
    _, job = _train(params, "global")
    last = stages.model_dir(DS, "global") / "last.pt"
    assert last.exists()
    # the parent re-written (another commit, say): other provenance, same weights -> the child's last.pt resumes
    models.save(
        local, models.load(local), meta={**models.load(local).meta, "git_commit": "0" * 40 + "-dirty"}
    )
    again = stages.build(params, DS, "global")
    job2 = job_from_params(params, DS, "global", again.parents)
    assert job2.fingerprint == job.fingerprint
    state, why = ckpt.load(last, job2.fingerprint)
    assert why is None and state is not None
    # other weights in the parent -> the child's checkpoint is stale
    changed = models.load(local)
    with torch.no_grad():
        next(changed.parameters()).add_(1.0)
    models.save(local, changed, meta=changed.meta)
    job3 = job_from_params(params, DS, "global", stages.build(params, DS, "global").parents)
    state, why = ckpt.load(last, job3.fingerprint)
    assert state is None and "parents" in why
