"""`train.common.compile` cannot cost a job (prdit.train.compiling): the network is compiled in a warm-up at
start; a compiler failure there trains eagerly with one warning (or, `compile: strict`, stops with one line),
and neither the warm-up nor the fallback moves the trajectory off the eager run's. The inductor cache is the
project's. Compiler failures are real: a torch.compile backend that raises, as a broken toolchain does."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import prdit.model as models
from prdit import paths
from prdit.train import compiling, stages
from prdit.train.engine import fit
from tests.support.training_checks import make_job, volumes

REAL_COMPILE = torch.compile
CACHE_VARS = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")


def broken_backend(gm: torch.fx.GraphModule, example_inputs: list) -> None:
    raise RuntimeError("no C compiler on this node")


@pytest.fixture(autouse=True)
def fresh_dynamo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A project folder to work in, no cache variables set, dynamo's caches empty."""
    monkeypatch.chdir(tmp_path)
    torch._dynamo.reset()  # (which may set TORCHINDUCTOR_CACHE_DIR to torch's default: unset it after)
    for var in CACHE_VARS:
        monkeypatch.setenv(var, "")  # recorded, so the test's own value goes away afterwards
        monkeypatch.delenv(var)
    yield
    torch._dynamo.reset()


def compile_with(monkeypatch: pytest.MonkeyPatch, backend: object) -> None:
    """torch.compile as the engine calls it, with `backend` instead of inductor."""
    monkeypatch.setattr(torch, "compile", lambda module, **kw: REAL_COMPILE(module, backend=backend))


def train(out: Path, compile: bool | str) -> dict[str, torch.Tensor]:
    """Three steps of a tiny stage 1 (the model's weights after it, and what model.pt holds)."""
    torch.manual_seed(0)
    model = models.create("PRDiT-T/8/0", 16)
    sm = stages.StageModel(model, 16, [n for n, _ in model.named_parameters()])
    job = make_job(
        out, steps=3, batch_size=2, lr=1e-3, log_every=1, checkpoint_every=2, val_every=100, preview_n=0
    ).with_settings(compile=compile)
    assert fit(job, sm, volumes(4, 16), None) == 0
    return {
        **model.state_dict(),
        **{f"ema.{k}": v for k, v in models.load(out / "model.pt").state_dict().items()},
    }


def assert_bitwise(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:3]


def test_a_compile_failure_trains_eagerly_with_one_warning_to_the_eager_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    eager = train(tmp_path / "eager", compile=False)
    compile_with(monkeypatch, broken_backend)
    caplog.set_level(logging.INFO)
    fallback = train(tmp_path / "fallback", compile=True)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert (
        "torch.compile failed in the warm-up" in warnings[0] and "no C compiler on this node" in warnings[0]
    )
    assert "training eagerly" in warnings[0] and "\n" not in warnings[0]
    assert_bitwise(fallback, eager)
    cache = tmp_path / paths.inductor_cache()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(cache)
    assert os.environ["TRITON_CACHE_DIR"] == str(cache / "triton")
    from torch._inductor.runtime.runtime_utils import cache_dir

    assert cache_dir() == str(cache)


def test_strict_compile_stops_at_start_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compile_with(monkeypatch, broken_backend)
    with pytest.raises(compiling.CompileError) as err:
        train(tmp_path / "strict", compile="strict")
    assert str(err.value).startswith("train.common.compile: strict: torch.compile failed in the warm-up")
    assert "no C compiler on this node" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "strict" / "last.pt").exists()  # stopped before the first step


def test_a_compiled_run_follows_the_eager_trajectory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The warm-up touches no optimizer, EMA or RNG state: compiled with dynamo's eager backend (the same
    kernels as eager mode), the run ends bit for bit where the eager run does."""
    eager = train(tmp_path / "eager", compile=False)
    compile_with(monkeypatch, "eager")
    caplog.set_level(logging.INFO)
    compiled = train(tmp_path / "compiled", compile=True)
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("compiled in the warm-up" in r.getMessage() for r in caplog.records)
    assert_bitwise(compiled, eager)


def test_a_cache_folder_the_user_chose_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert compiling.use_cache_dir(paths.inductor_cache()) == tmp_path / "mine"
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / paths.inductor_cache() / "triton")
