"""Issue 29, points 6-9, 11, 12: every error a user can cause is one line (traceback only under --verbose),
outputs stay as they were, spool imports are all-or-complete, no parameter reaches a shell unquoted,
duplicated YAML keys are errors, failed checks leave no lock or output folder."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import yaml

from prdit import io
from prdit.config import ConfigError, load
from tests.support.project import ROOT, make_project, tool_env

PRDIT = [sys.executable, "-m", "prdit.cli"]


def prdit(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess (tracking off unless env says otherwise)."""
    full = tool_env(**{"PRDIT_TRACKING": "off", "PYTHONPATH": str(ROOT), **env})
    return subprocess.run(PRDIT + list(args), cwd=cwd, capture_output=True, text=True, env=full, timeout=300)


def assert_one_line(res: subprocess.CompletedProcess, command: str, *words: str) -> str:
    """The run failed with one line `prdit <command>: ...` holding `words`, and no traceback."""
    assert res.returncode != 0, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(f"prdit {command}:") or last.startswith("prdit: invalid parameters:"), res.stderr
    for w in words:
        assert w in last, last
    return last


def project_params(tmp: Path, overrides: dict) -> Path:
    """params.yaml of the project with `overrides`, written into `tmp`."""
    from prdit.config import deep_merge

    raw = deep_merge(yaml.safe_load((ROOT / "params.yaml").read_text()), overrides)
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# 6 ------------------------------------------------------------------------------------------------------
FSIZE = "import resource, signal\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"


def test_full_disk_writing_a_model_file_is_one_line_and_keeps_the_old_file(tmp_path: Path) -> None:
    """torch.save hitting the file-size limit (EFBIG, as ENOSPC): one line naming model.pt, old file kept."""
    import torch

    model = tmp_path / "models" / "model.pt"
    io.write_torch(model, {"w": torch.zeros(4)})
    before = model.read_bytes()
    script = FSIZE + textwrap.dedent(
        f"""
        resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))
        import torch
        from prdit import io
        try:
            from prdit.errors import describe
        except ImportError:  # the code before the one top-level handler: what its traceback ended with
            def describe(e):
                return type(e).__name__ + ": " + str(e)
        try:
            io.write_torch({str(model)!r}, {{"w": torch.zeros(100_000)}})
        except Exception as exc:
            print(describe(exc))
        """
    )
    res = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=tool_env(PYTHONPATH=str(ROOT))
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().startswith(f"{model}: File too large"), res.stdout
    assert len(res.stdout.strip().splitlines()) == 1
    assert model.read_bytes() == before
    assert [p.name for p in model.parent.iterdir()] == ["model.pt"]  # no temporary file left


def _interim(project: Path, cases: int = 4) -> None:
    interim = project / "data" / "interim" / "t"
    interim.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(cases):
        vol = rng.integers(-1000, 1000, (40, 40, 40)).astype(np.int16)
        sitk.WriteImage(sitk.GetImageFromArray(vol), str(interim / f"c{i}.nii.gz"))
    pd.DataFrame(
        {
            "case": [f"c{i}" for i in range(cases)],
            "patient_id": [f"p{i}" for i in range(cases)],
            "status": "ok",
        }
    ).to_csv(interim / "qc.csv", index=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tiny tmpfs needs root")
def test_full_disk_in_preprocess_is_one_line_and_leaves_the_folder_as_it_was(tmp_path: Path) -> None:
    """data/processed on a full tmpfs (the per-case cache elsewhere, so the folder is assembled by copies)."""
    project = tmp_path / "p"
    _interim(project)
    sources = {"t": {"format": "nifti", "path": str(tmp_path / "raw"), "download": "none"}}
    base = {"datasets": ["t"], "sources": sources, "preprocess": {"size": 16, "highres_size": 32}}
    first = project_params(tmp_path, base)
    second = project_params(
        tmp_path / "p", {**base, "preprocess": {**base["preprocess"], "window": [-900, 300]}}
    )
    processed = project / "data" / "processed"
    processed.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(processed)], check=True)
    try:
        env = {"PRDIT_CACHE_DIR": str(tmp_path / "cache")}
        res = prdit("preprocess", "--dataset", "t", "--params", str(first), cwd=project, **env)
        assert res.returncode == 0, res.stderr
        before = tree_digest(processed / "t")
        pages = [-(-p.stat().st_size // 4096) for p in processed.rglob("*") if p.is_file()]
        # room for the old folder and half of its largest file: replacing files in place fails too
        room = (sum(pages) + max(pages) // 2 + 2) * 4096
        subprocess.run(["mount", "-o", f"remount,size={room}", str(processed)], check=True)
        res = prdit("preprocess", "--dataset", "t", "--params", str(second), cwd=project, **env)
        assert_one_line(res, "preprocess", "No space left on device")
        assert tree_digest(processed / "t") == before  # no case with the new window, qc.csv the old one
        assert [p.name for p in processed.iterdir()] == ["t"]  # no temporary folder, no lock file
        assert not [p for p in processed.rglob("*") if p.name.startswith(".")]
    finally:
        subprocess.run(["umount", str(processed)], check=True)


FSIZE_CLI = FSIZE + textwrap.dedent(
    """
    import os, sys
    limit = int(os.environ.pop("TEST_FSIZE"))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    from prdit.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def test_file_size_limit_in_preprocess_is_one_line_and_leaves_the_folder_as_it_was(tmp_path: Path) -> None:
    """The same without root: every case cached (window B by a --shard run), the cache on another file
    system (/dev/shm) so the folder is assembled by copies, and a file-size limit (EFBIG) on those."""
    project = tmp_path / "p"
    _interim(project)
    cache = Path("/dev/shm") / f"prdit-test-{os.getpid()}-{tmp_path.name}"
    assert os.stat("/dev/shm").st_dev != os.stat(tmp_path).st_dev, "needs /dev/shm on another file system"
    sources = {"t": {"format": "nifti", "path": str(tmp_path / "raw"), "download": "none"}}
    base = {"datasets": ["t"], "sources": sources, "preprocess": {"size": 16, "highres_size": 32}}
    first = project_params(tmp_path, base)
    second = project_params(project, {**base, "preprocess": {**base["preprocess"], "window": [-900, 300]}})
    processed = project / "data" / "processed"
    try:
        env = {"PRDIT_CACHE_DIR": str(cache)}
        assert (
            prdit("preprocess", "--dataset", "t", "--params", str(first), cwd=project, **env).returncode == 0
        )
        shard = prdit(
            "preprocess", "--dataset", "t", "--shard", "0", "--params", str(second), cwd=project, **env
        )
        assert shard.returncode == 0, shard.stderr
        before = tree_digest(processed / "t")
        biggest = max(p.stat().st_size for p in (processed / "t").rglob("*.npy"))
        cmd = [sys.executable, "-c", FSIZE_CLI, "preprocess", "--dataset", "t", "--params", str(second)]
        full = tool_env(PRDIT_TRACKING="off", PYTHONPATH=str(ROOT), TEST_FSIZE=str(biggest // 2), **env)
        res = subprocess.run(cmd, cwd=project, capture_output=True, text=True, env=full, timeout=300)
        assert_one_line(res, "preprocess", "File too large")
        assert tree_digest(processed / "t") == before  # no case with the new window, qc.csv the old one
        assert sorted(p.name for p in processed.iterdir()) == [
            "t",
            "t.shards",
        ]  # no temporary folder, no lock
        assert not [p for p in processed.rglob("*") if p.name.startswith(".")]
    finally:
        shutil.rmtree(cache, ignore_errors=True)


# 7 ------------------------------------------------------------------------------------------------------
@pytest.fixture
def bare(tmp_path: Path) -> tuple[Path, Path]:
    """An empty project folder and its params (dataset `t`, user data in `mine/`)."""
    project = tmp_path / "p"
    (project / "mine").mkdir(parents=True)
    (project / "mine" / "a.nii.gz").write_bytes(b"12")
    sources = {"t": {"format": "nifti", "path": str(project / "mine"), "download": "none"}}
    return project, project_params(project, {"datasets": ["t"], "sources": sources})


@pytest.mark.parametrize("link", ["broken", "loop"])
def test_download_none_over_a_bad_link_is_one_line(bare: tuple[Path, Path], link: str) -> None:
    project, params = bare
    bad = project / "mine" / "bad.nii.gz"
    if link == "broken":
        bad.symlink_to(project / "nowhere.nii.gz")
    else:
        bad.symlink_to(bad)
    res = prdit("download", "--dataset", "t", "--params", str(params), cwd=project)
    assert_one_line(res, "download", "bad.nii.gz")


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("sample", "--dataset", "t", "--size", "32"), "model.pt"),  # no model file
        (("sample", "--dataset", "t", "--size", "24"), "size 24"),  # not a working size
        (("evaluate", "--dataset", "t", "--size", "32"), "samples/t/32"),  # no samples
        (("tracking-import", "missing.jsonl"), "missing.jsonl"),
    ],
)
def test_missing_inputs_and_wrong_sizes_are_one_line(
    bare: tuple[Path, Path], args: tuple[str, ...], named: str
) -> None:
    project, params = bare
    res = prdit(*args, "--params", str(params), cwd=project)
    assert_one_line(res, args[0], named)
    assert not (project / "samples").exists() and not (project / "metrics").exists()


def test_verbose_shows_the_traceback(bare: tuple[Path, Path]) -> None:
    project, params = bare
    res = prdit("--verbose", "sample", "--dataset", "t", "--size", "24", "--params", str(params), cwd=project)
    assert res.returncode != 0 and "Traceback" in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("prdit sample:")


def test_two_writers_of_one_output_the_second_fails_at_once(tmp_path: Path) -> None:
    """Two `prdit sample` on one output: the second gets one line (Busy), not 'Directory not empty'."""
    dest = tmp_path / "samples" / "t" / "16"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import sys, time\nfrom prdit import io\nwith io.atomic_dir({str(dest)!r}):\n"
         "    print('in', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=tool_env(PYTHONPATH=str(ROOT)),
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "in"
        with pytest.raises(io.Busy, match="another prdit process is writing it"):
            with io.atomic_dir(dest):
                pass
    finally:
        holder.communicate("", timeout=60)
    assert holder.returncode == 0
    with io.atomic_dir(dest) as tmp:  # free again once the first is done
        (tmp / "x").write_text("1")
    assert sorted(p.name for p in dest.parent.iterdir()) == ["16"]  # lock files removed


# 8 ------------------------------------------------------------------------------------------------------
TS = 1_700_000_000_000


def _spool(path: Path, events: list) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


def _runs(uri: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("e")
    return [] if exp is None else client.search_runs([exp.experiment_id])


START = {"kind": "start", "experiment": "e", "run_name": "r", "tags": {"a": "1"}, "ts": TS}
PARAMS = {"kind": "params", "params": {"lr": "0.1"}, "ts": TS}
TAGS = {"kind": "tags", "tags": {"b": "2"}, "ts": TS}
END = {"kind": "end", "status": "FINISHED", "ts": TS + 9}


def _metrics(name: str = "loss", value: float = 1.0, step: int = 1) -> dict:
    return {"kind": "metrics", "metrics": {name: value}, "step": step, "ts": TS + step}


def test_a_bad_spool_line_sends_nothing_and_the_fixed_file_imports_whole(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = project_params(tmp_path, {"tracking_uri": uri})
    bad = _spool(tmp_path / "s.jsonl", [START, PARAMS, TAGS, {"kind": "metric", "loss": 1}, _metrics(), END])
    res = prdit("tracking-import", str(bad), "--params", str(params), cwd=tmp_path, PRDIT_TRACKING="on")
    assert_one_line(res, "tracking-import", "s.jsonl:4", "unknown event kind")
    assert _runs(uri) == []  # nothing was sent
    _spool(bad, [START, PARAMS, TAGS, _metrics(), _metrics(value=0.5, step=2), END])
    res = prdit("tracking-import", str(bad), "--params", str(params), cwd=tmp_path, PRDIT_TRACKING="on")
    assert res.returncode == 0, res.stderr
    (run,) = _runs(uri)
    assert run.info.status == "FINISHED" and run.data.params == {"lr": "0.1"}
    history = MlflowClient(uri).get_metric_history(run.info.run_id, "loss")
    assert [m.value for m in history] == [1.0, 0.5]


def test_a_run_imported_in_part_is_completed_by_the_next_import(tmp_path: Path) -> None:
    """MLflow itself rejects an event mid-way (an invalid metric name): a later import completes the run."""
    from mlflow.tracking import MlflowClient

    from prdit import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spool = _spool(tmp_path / "s.jsonl", [START, PARAMS, _metrics(), _metrics("bad*name", 2.0, 2), END])
    with pytest.raises(Exception):  # noqa: B017 - MLflow's own error
        tracking.import_spool(spool, uri)
    (partial,) = _runs(uri)
    assert partial.info.status == "RUNNING"
    _spool(spool, [START, PARAMS, _metrics(), _metrics("loss", 0.5, 2), END])
    assert tracking.import_spool(spool, uri) == 5
    (run,) = _runs(uri)
    assert run.info.status == "FINISHED" and run.data.params == {"lr": "0.1"}
    assert [m.value for m in MlflowClient(uri).get_metric_history(run.info.run_id, "loss")] == [1.0, 0.5]
    assert tracking.import_spool(spool, uri) == 0  # complete now: skipped


# 9 ------------------------------------------------------------------------------------------------------
EVIL = [
    "x;touch SOMEFILE;",
    "x';touch SOMEFILE;'",
    'x";touch SOMEFILE;"',
    "$(touch SOMEFILE)",
    "`touch SOMEFILE`",
    "x&&touch SOMEFILE",
    "x|touch SOMEFILE",
]


@pytest.fixture
def evil_project(tmp_path: Path) -> Path:
    sources = {
        name: {"format": "nifti", "path": f"/tmp/$(touch SOMEFILE);{i}", "download": "none"}
        for i, name in enumerate(EVIL)
    }
    return make_project(
        tmp_path / "project",
        {"datasets": EVIL, "sources": sources, "experiment": "e;touch SOMEFILE", "tracking_uri": None},
    )


def test_shell_metacharacters_in_parameters_never_run_under_dvc(evil_project: Path) -> None:
    env = tool_env(PRDIT_TRACKING="off", PYTHONPATH=str(ROOT))
    dvc = Path(sys.executable).parent / "dvc"
    dry = subprocess.run(
        [str(dvc), "repro", "--dry", "download"], cwd=evil_project, capture_output=True, text=True, env=env
    )
    assert not (evil_project / "SOMEFILE").exists(), dry.stdout + dry.stderr
    res = subprocess.run(
        [str(dvc), "repro", "--keep-going", "download"],
        cwd=evil_project,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert res.returncode != 0  # prdit rejects the names (one line), after receiving them intact
    assert not (evil_project / "SOMEFILE").exists(), res.stdout + res.stderr
    assert "invalid parameters" in res.stdout + res.stderr


def test_shell_metacharacters_in_parameters_never_run_under_snakemake(evil_project: Path) -> None:
    env = tool_env(PRDIT_TRACKING="off", PYTHONPATH=str(ROOT))
    smk = Path(sys.executable).parent / "snakemake"
    res = subprocess.run(
        [str(smk), "--cores", "1"], cwd=evil_project, capture_output=True, text=True, env=env, timeout=600
    )
    assert res.returncode != 0
    assert not (evil_project / "SOMEFILE").exists(), res.stdout + res.stderr


def test_dataset_names_are_checked_at_load(tmp_path: Path) -> None:
    sources = {"a b": {"format": "nifti", "path": "/x", "download": "none"}}
    params = project_params(tmp_path, {"datasets": ["a b"], "sources": sources})
    with pytest.raises(ConfigError, match="datasets"):
        load(params)


# 11 -----------------------------------------------------------------------------------------------------
def test_a_duplicated_key_names_the_file_line_and_key(tmp_path: Path) -> None:
    text = (ROOT / "params.yaml").read_text() + "\nsample:\n  n: 2\n"  # a second top-level block
    dup = tmp_path / "dup.yaml"
    dup.write_text(text)
    line = text.count("\n", 0, text.rindex("\nsample:")) + 2
    with pytest.raises(ConfigError, match=rf"dup.yaml: .*line {line}\b.*duplicate key 'sample'"):
        load(dup)
    nested = tmp_path / "nested.yaml"
    nested.write_text("train:\n  local:\n    lr: 1.0\n    lr: 2.0\n")
    with pytest.raises(ConfigError, match=r"nested.yaml: .*line 4.*duplicate key 'lr'"):
        load([ROOT / "params.yaml", nested])


def test_a_duplicated_key_in_a_snakemake_configfile_is_an_error(project_copy: Path) -> None:
    override = project_copy / "over.yaml"
    override.write_text("sample:\n  steps: 4\n  steps: 5\n")
    env = tool_env(PRDIT_TRACKING="off", PYTHONPATH=str(ROOT))
    smk = Path(sys.executable).parent / "snakemake"
    res = subprocess.run(
        [str(smk), "-n", "--cores", "1", "--configfile", str(override)],
        cwd=project_copy, capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert res.returncode != 0
    assert "over.yaml" in res.stdout + res.stderr and "duplicate key 'steps'" in res.stdout + res.stderr


# 12 -----------------------------------------------------------------------------------------------------
def test_a_failed_train_precondition_leaves_no_lock_or_folder(bare: tuple[Path, Path]) -> None:
    project, params = bare
    res = prdit("train", "--dataset", "t", "--stage", "local", "--params", str(params), cwd=project)
    assert_one_line(res, "train")
    assert not (project / "models").exists()


def test_a_kill_between_the_two_renames_is_recovered(tmp_path: Path) -> None:
    """final moved to .final.old, then killed: the next run restores it (even if that run fails)."""
    final = tmp_path / "out"
    old = tmp_path / ".out.old"
    old.mkdir()
    (old / "a").write_text("kept")
    with pytest.raises(RuntimeError), io.atomic_dir(final):
        raise RuntimeError("this run fails too")
    assert (final / "a").read_text() == "kept" and not old.exists()
    old.mkdir()  # killed after the second rename: a stale .old beside the new output
    (old / "a").write_text("stale")
    with io.atomic_dir(final) as tmp:
        (tmp / "a").write_text("new")
    assert (final / "a").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
