"""`prdit sample` survives its time limit: killed (SIGKILL) or stopped (SIGTERM, exit 75) after a batch, the
re-run draws only the missing batches and writes byte for byte what an uninterrupted run writes.

Real processes and real signals on a random 16^3 stage-2 model; batches are counted from the sampler's
"drew N of M batches (K already done)" log line and the per-batch markers of the partial folder.
"""

from __future__ import annotations

import logging
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from prdit import paths
from prdit.config import deep_merge, load
from prdit.model import create, save
from prdit.stages import sample
from tests.support.project import ROOT, tool_env

SIZE = 16
DEST = paths.samples("phantom", SIZE)


def write_project(root: Path, model: torch.nn.Module, **sample: object) -> Path:
    """A project folder holding `model` as the stage-2 model and params.yaml with these sample settings."""
    root.mkdir(parents=True)
    save(root / paths.model_file("phantom", "global"), model, meta={})
    overrides = {
        "preprocess": {"size": SIZE, "highres_size": None, "fov_mm": 256.0},
        "sample": {"steps": 8, "k": 2, "batch_size": 1, "seed": 0, **sample},
    }
    params = deep_merge(yaml.safe_load((ROOT / "params.yaml").read_text()), overrides)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def random_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = create("PRDiT-T/8/1", SIZE)
    with torch.no_grad():
        for q in model.parameters():
            q.normal_(0, 0.02)
    return model


def cmd(*extra: str) -> list[str]:
    return ["prdit", "sample", "--dataset", "phantom", "--size", str(SIZE), *extra]


def run(root: Path, *extra: str) -> tuple[int, str]:
    res = subprocess.run(
        cmd(*extra), cwd=root, env=tool_env(PRDIT_TRACKING="off"), capture_output=True, text=True
    )
    return res.returncode, res.stdout + res.stderr


def drawn(output: str) -> tuple[int, int, int]:
    """(drawn, of, already done) from the run's log."""
    found = re.findall(r"drew (\d+) of (\d+) batches \((\d+) already done\)", output)
    assert len(found) == 1, output
    return tuple(int(v) for v in found[0])  # type: ignore[return-value]


def markers(partial: Path) -> int:
    return len(list(partial.glob("batch_*.done"))) if partial.is_dir() else 0


def interrupt(root: Path, partial: Path, sig: int, *extra: str) -> int:
    """Start `prdit sample`, send `sig` once its first batch is finished; its exit status."""
    proc = subprocess.Popen(
        cmd(*extra),
        cwd=root,
        env=tool_env(PRDIT_TRACKING="off"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while markers(partial) < 1:
        assert proc.poll() is None, "prdit sample ended before the signal"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(sig)
    return proc.wait()


def files(folder: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in folder.iterdir()}


def test_sigkill_after_the_first_batch_resumes_to_the_same_bytes(tmp_path: Path) -> None:
    n = 5
    model = random_model()
    ref, work = write_project(tmp_path / "ref", model, n=n), write_project(tmp_path / "work", model, n=n)
    status, out = run(ref)
    assert status == 0 and drawn(out) == (n, n, 0), out
    expected = files(ref / DEST)
    assert sorted(expected) == [f"{i}.nii.gz" for i in range(n)] + ["montage.png"]

    assert interrupt(work, work / paths.partial(DEST), signal.SIGKILL) == -signal.SIGKILL
    finished = markers(work / paths.partial(DEST))
    assert 1 <= finished < n and not (work / DEST).exists()

    status, out = run(work)
    assert status == 0 and drawn(out) == (n - finished, n, finished), out
    assert files(work / DEST) == expected
    assert not (work / paths.partial(DEST)).exists()


def test_sigterm_exits_75_and_the_rerun_of_a_shard_draws_only_the_rest(tmp_path: Path) -> None:
    n, shards = 8, 2
    model = random_model()
    ref = write_project(tmp_path / "ref", model, n=n, shards=shards)
    work = write_project(tmp_path / "work", model, n=n, shards=shards)
    shard = paths.shards(DEST) / "1"
    status, out = run(ref, "--shard", "1")
    assert status == 0 and drawn(out) == (4, 4, 0), out
    expected = files(ref / shard)
    assert sorted(expected) == [f"{i}.nii.gz" for i in range(4, 8)]

    assert interrupt(work, work / paths.partial(shard), signal.SIGTERM, "--shard", "1") == 75
    finished = markers(work / paths.partial(shard))
    assert 1 <= finished < 4 and not (work / shard).exists()  # stopped after the batch in progress

    status, out = run(work, "--shard", "1")
    assert status == 0 and drawn(out) == (4 - finished, 4, finished), out
    assert files(work / shard) == expected
    assert not (work / paths.partial(shard)).exists()


@pytest.mark.parametrize("change", ["seed", "model"])
def test_a_partial_folder_of_other_settings_is_not_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, change: str
) -> None:
    """Batches drawn with another seed or another model are dropped (with the reason), never mixed in."""
    n = 2
    root = write_project(tmp_path / "work", random_model(), n=n)
    monkeypatch.chdir(root)
    p = load([root / "params.yaml"])
    assert sample.run(p, "phantom", SIZE) == 0
    expected = files(root / DEST)

    # what an interrupted run with other settings leaves: its manifest and every batch marked done
    other = p
    if change == "seed":
        other = load([root / "params.yaml"], overrides={"sample": {"seed": 1}})
    else:
        save(root / paths.model_file("phantom", "global"), random_model(seed=1), meta={})
    device = torch.device("cpu")
    partial = root / paths.partial(DEST)
    sample.open_partial(partial, sample.sample_manifest(other, "phantom", SIZE, None, device))
    for i in range(n):
        (partial / f"{i}.nii.gz").write_bytes(b"not this run's sample")
        (partial / f"batch_{i}.done").write_text("{}")
    if change == "model":
        save(root / paths.model_file("phantom", "global"), random_model(seed=0), meta={})

    shutil.rmtree(root / DEST)
    with caplog.at_level(logging.INFO, logger="prdit.stages.sample"):
        assert sample.run(p, "phantom", SIZE) == 0
    assert drawn(caplog.text) == (n, n, 0)
    assert re.search(rf"other {'params' if change == 'seed' else 'model'}: starting over", caplog.text)
    assert files(root / DEST) == expected and not partial.exists()
