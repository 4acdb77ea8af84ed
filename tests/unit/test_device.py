"""No silent CPU fallback (prdit.device): a job given a GPU that torch cannot use stops at once with one line,
before it writes anything; without a GPU request the stages run on the CPU and say so in their device line.

`prdit train`, `sample` and `evaluate` run as real processes on a tiny project (16^3, two training steps,
two samples); the GPU request is CUDA_VISIBLE_DEVICES=0 on this CPU-only machine.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from prdit import device
from prdit.config import deep_merge
from prdit.errors import PrditError
from prdit.io import write_nifti
from prdit.model import create, save
from tests.support.project import ROOT, tool_env

SIZE = 16
SPLITS = {"train": ["c0", "c1", "c2", "c3"], "val": ["c4"], "test": ["c5"]}
COMMANDS = {
    "train": ["train", "--stage", "local"],
    "sample": ["sample", "--size", str(SIZE)],
    "evaluate": ["evaluate", "--size", str(SIZE)],
}
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where CUDA is unusable")


def make_project(root: Path) -> Path:
    """Params for 16^3, real cases (training cache and NIfTI), splits, a random stage-2 model, two samples' worth."""
    overrides = {
        "preprocess": {"size": SIZE, "highres_size": None},
        "train": {
            "common": {"checkpoint_every": 2, "val_every": 2, "log_every": 1, "preview_every": 0},
            "local": {"model": "PRDiT-T/8/0", "steps": 2, "batch_size": 2},
            "global": {"model": "PRDiT-T/8/1"},
        },
        "sample": {"n": 2, "steps": 2, "k": 1, "batch_size": 2},
        "evaluate": {"ms_ssim_pairs": 1, "bootstrap": 5},
    }
    root.mkdir(parents=True)
    params = deep_merge(yaml.safe_load((ROOT / "params.yaml").read_text()), overrides)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    rng = np.random.default_rng(0)
    cases = root / "data" / "processed" / "phantom" / str(SIZE)
    for split, ids in SPLITS.items():
        (root / "data" / "splits" / "phantom").mkdir(parents=True, exist_ok=True)
        (root / "data" / "splits" / "phantom" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for case in ids:
            v = rng.uniform(-1, 1, (SIZE,) * 3).astype(np.float32)
            write_nifti(cases / f"{case}.nii.gz", v, (16.0,) * 3)
            np.save(cases / f"{case}.npy", v.astype(np.float16))
    torch.manual_seed(0)
    save(root / "models" / "phantom" / "global" / "model.pt", create("PRDiT-T/8/1", SIZE), meta={})
    return root


def prdit(root: Path, command: str, **env: str) -> subprocess.CompletedProcess:
    cmd = ["prdit", COMMANDS[command][0], "--dataset", "phantom", *COMMANDS[command][1:]]
    full = tool_env(PRDIT_TRACKING="off", **env)
    for var in (*device.GPU_VARS, device.DEVICE_ENV):
        full.pop(var, None)
    full.update(env)
    return subprocess.run(cmd, cwd=root, env=full, capture_output=True, text=True, timeout=600)


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("device") / "project")


@no_cuda
@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_requested_gpu_that_torch_cannot_use_stops_at_once_with_one_line(
    project: Path, command: str
) -> None:
    before = tree(project)
    res = prdit(project, command, CUDA_VISIBLE_DEVICES="0")
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and len(lines) == 1, res.stdout + res.stderr
    assert lines[0].startswith(f"prdit {command}: CUDA_VISIBLE_DEVICES=0 asks for a GPU"), lines
    assert f"CUDA {torch.version.cuda}" in lines[0] and "is_available() is False" in lines[0], lines
    assert "PRDIT_DEVICE=cpu" in lines[0]
    assert tree(project) == before  # no output, no lock, no partial folder


def test_without_a_gpu_request_every_stage_runs_on_the_cpu_and_says_so(project: Path) -> None:
    for command in ("train", "sample", "evaluate"):  # evaluate scores what sample drew
        res = prdit(project, command)
        out = res.stdout + res.stderr
        assert res.returncode == 0, out
        lines = [ln for ln in out.splitlines() if "device: " in ln]
        assert len(lines) == 1, out
        assert "device: cpu (no GPU requested)" in lines[0] and f"torch {torch.__version__}" in lines[0], (
            lines
        )
        assert "attention cpu" in lines[0] and "precision fp32" in lines[0], lines
    assert (project / "models/phantom/local/model.pt").is_file()
    assert len(list((project / f"samples/phantom/{SIZE}").glob("*.nii.gz"))) == 2
    assert (project / f"metrics/phantom/{SIZE}.json").is_file()


@no_cuda
def test_prdit_device_cpu_runs_a_job_that_asked_for_gpus_on_the_cpu(project: Path) -> None:
    res = prdit(project, "sample", CUDA_VISIBLE_DEVICES="0", SLURM_GPUS_ON_NODE="1", PRDIT_DEVICE="cpu")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "device: cpu (PRDIT_DEVICE=cpu)" in res.stderr


@pytest.mark.parametrize(
    "environ, asked",
    [
        ({}, None),
        ({"CUDA_VISIBLE_DEVICES": ""}, None),
        ({"CUDA_VISIBLE_DEVICES": "-1"}, None),
        ({"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, None),
        ({"CUDA_VISIBLE_DEVICES": "none"}, None),
        ({"SLURM_GPUS_ON_NODE": "0"}, None),
        ({"CUDA_VISIBLE_DEVICES": "0"}, ("CUDA_VISIBLE_DEVICES", "0")),
        ({"SLURM_GPUS": "a100:2"}, ("SLURM_GPUS", "a100:2")),
        ({"SLURM_GPUS_ON_NODE": "4"}, ("SLURM_GPUS_ON_NODE", "4")),
        ({"SLURM_JOB_GPUS": "0,1"}, ("SLURM_JOB_GPUS", "0,1")),
        ({"SLURM_STEP_GPUS": "0"}, ("SLURM_STEP_GPUS", "0")),
    ],
)
def test_what_counts_as_a_gpu_request(environ: dict[str, str], asked: tuple[str, str] | None) -> None:
    assert device.gpu_request(environ) == asked


@no_cuda
def test_select_device_on_a_machine_without_cuda() -> None:
    assert device.select_device(environ={})[0] == torch.device("cpu")
    assert device.select_device(environ={"CUDA_VISIBLE_DEVICES": "-1"})[0] == torch.device("cpu")
    with pytest.raises(device.NoGPUError, match="SLURM_JOB_GPUS=3 asks for a GPU"):
        device.select_device(environ={"SLURM_JOB_GPUS": "3"})
    with pytest.raises(device.NoGPUError, match="PRDIT_DEVICE=cuda asks for a GPU"):
        device.select_device(environ={"PRDIT_DEVICE": "cuda"})
    dev, why = device.select_device(environ={"PRDIT_DEVICE": "cpu", "SLURM_GPUS": "1"})
    assert dev == torch.device("cpu") and why == {"device.reason": "PRDIT_DEVICE=cpu"}
    with pytest.raises(PrditError, match="PRDIT_DEVICE='gpu': expected one of auto, cpu, cuda"):
        device.select_device(environ={"PRDIT_DEVICE": "gpu"})


def test_the_device_record_names_versions_precision_and_attention() -> None:
    info = device.describe_device(torch.device("cpu"), {"device.reason": "no GPU requested"}, None)
    assert info == {
        "device": "cpu",
        "device.gpu": "none",
        "device.capability": "none",
        "device.torch": torch.__version__,
        "device.cuda": str(torch.version.cuda),
        "device.cudnn": "None",
        "device.precision": "fp32",
        "device.attention": "cpu",
        "device.reason": "no GPU requested",
    }
