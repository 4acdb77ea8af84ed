"""Model and checkpoint files are byte-deterministic, and a child stage checks its parent's content, not its bytes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import prdit.model as models
from prdit import paths
from prdit.io import sha256_file
from prdit.stages import _models
from prdit.stages.train import job_from_params
from prdit.train import resume as ckpt
from tests.support.training_checks import train_stage

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


def test_a_parent_saved_again_with_the_same_weights_keeps_the_childs_checkpoint(tiny_train) -> None:
    train_stage(tiny_train, DS, "local", preview_n=0)
    local = paths.model_file(DS, "local")
    _, job = train_stage(tiny_train, DS, "global", preview_n=0)
    last = paths.model_dir(DS, "global") / "last.pt"
    assert last.exists()
    # the parent re-written (another commit, say): other provenance, same weights -> the child's last.pt resumes
    models.save(
        local, models.load(local), meta={**models.load(local).meta, "git_commit": "0" * 40 + "-dirty"}
    )
    again = _models.build(tiny_train, DS, "global")
    job2 = job_from_params(tiny_train, DS, "global", again.parents)
    assert job2.fingerprint == job.fingerprint
    state, why = ckpt.load(last, job2.fingerprint)
    assert why is None and state is not None
    # other weights in the parent -> the child's checkpoint is stale
    changed = models.load(local)
    with torch.no_grad():
        next(changed.parameters()).add_(1.0)
    models.save(local, changed, meta=changed.meta)
    job3 = job_from_params(tiny_train, DS, "global", _models.build(tiny_train, DS, "global").parents)
    state, why = ckpt.load(last, job3.fingerprint)
    assert state is None and "parents" in why
