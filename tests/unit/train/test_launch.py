"""`prdit launch`: the torchrun command for one machine, for a SLURM batch script and for each node's task.

The real two-node run (two slurmd daemons, one srun step, one torchrun per node) is in tests/workflow/test_slurm.py;
these pin the commands and the errors without a cluster."""

from __future__ import annotations

import subprocess
import sys

import pytest

from prdit.errors import PrditError
from prdit.train import launch
from tests.support.project import tool_env

TRAIN = ["prdit", "train", "--dataset", "d", "--stage", "local"]


def _option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_outside_slurm_one_node_is_torchrun_standalone() -> None:
    argv = launch.command(1, 3, TRAIN, env={})
    assert argv[:3] == ["torchrun", "--no-python", "--standalone"]
    assert _option(argv, "--nproc-per-node") == "3" and argv[-len(TRAIN) :] == TRAIN


def test_several_nodes_outside_slurm_is_a_clear_error() -> None:
    with pytest.raises(PrditError, match="--nodes 2 needs a SLURM allocation"):
        launch.command(2, 2, TRAIN, env={})


def test_a_batch_script_starts_one_srun_task_per_node() -> None:
    argv = launch.command(2, 4, TRAIN, env={"SLURM_JOB_ID": "77"}, cpus=8)
    assert argv[0] == "srun"
    assert {"--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--cpus-per-task=8"} <= set(argv)
    inner = argv[argv.index("prdit") :]
    assert inner[:3] == ["prdit", "launch", "--node-task"] and inner[-len(TRAIN) :] == TRAIN


def test_each_node_task_joins_one_rendezvous_that_the_first_node_hosts() -> None:
    env = {"SLURM_JOB_ID": "1234", "SLURM_LAUNCH_NODE_IPADDR": "10.0.0.5", "SLURM_GPUS_ON_NODE": "4"}
    first = launch.command(2, 8, TRAIN, env={**env, "SLURM_NODEID": "0"}, node_task=True)
    second = launch.command(2, 8, TRAIN, env={**env, "SLURM_NODEID": "1"}, node_task=True)
    for argv in (first, second):
        assert _option(argv, "--nnodes") == "2" and _option(argv, "--nproc-per-node") == "4"
        assert _option(argv, "--rdzv-backend") == "c10d"
        assert _option(argv, "--rdzv-endpoint") == f"10.0.0.5:{launch.rdzv_port('1234')}"
        assert _option(argv, "--rdzv-id") == "slurm-1234"  # the same after a requeue (same job id)
    assert _option(first, "--rdzv-conf") == "is_host=1" and _option(second, "--rdzv-conf") == "is_host=0"
    assert launch.rdzv_port("1234") != launch.rdzv_port("1235")


def test_a_node_task_without_slurm_variables_names_them() -> None:
    with pytest.raises(PrditError, match="SLURM_LAUNCH_NODE_IPADDR"):
        launch.command(2, 2, TRAIN, env={"SLURM_JOB_ID": "1", "SLURM_NODEID": "0"}, node_task=True)


def test_prdit_launch_runs_the_command_it_is_given() -> None:
    """Outside SLURM, one node: torchrun --standalone really starts the command (here a Python one-liner
    printing torchrun's rank variables) with as many processes as GPUs asked for. Each rank writes its line
    with one os.write (atomic on a pipe), since an unbuffered print writes word by word and the ranks'
    words can interleave."""
    code = "import os; os.write(1, f\"rank {os.environ['RANK']} of {os.environ['WORLD_SIZE']}\\n\".encode())"
    res = subprocess.run(
        ["prdit", "launch", "--gpus", "2", "--", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=tool_env(),
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert sorted(line for line in res.stdout.splitlines() if line.startswith("rank")) == [
        "rank 0 of 2",
        "rank 1 of 2",
    ]
