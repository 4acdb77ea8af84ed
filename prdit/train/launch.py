"""`prdit launch`: start a training command on one node or several, with torchrun.

The training rules run `prdit launch --nodes N --gpus G -- prdit train ...`:

- Outside SLURM: `torchrun --standalone` with G processes on this machine (N must be 1).
- In a SLURM batch script (SLURM_JOB_ID set, not inside a job step): one `srun` step with one task per
  node, `srun --nodes=N --ntasks=N --ntasks-per-node=1 prdit launch --node-task ...`. The step is what
  SLURM signals before the time limit (`--signal=TERM@300`) and on preemption, so the SIGTERM
  checkpoint works for one node and for several.
- In that step's task on each node (`--node-task`): one torchrun per node with as many processes as
  SLURM gave that node GPUs (SLURM_GPUS_ON_NODE; G / N without it), and a c10d rendezvous that SLURM's
  environment provides: the host is the node that started the step (SLURM_LAUNCH_NODE_IPADDR, the
  batch host, which is the first node of the allocation), the port and the rendezvous id come from
  SLURM_JOB_ID, and the first node (SLURM_NODEID 0) hosts the store. With N = 1 it is the
  single-node `torchrun --standalone` command.

torchrun's `--shutdown-timeout` gives the workers time to write last.pt after a SIGTERM.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from prdit.errors import PrditError

SHUTDOWN_TIMEOUT_S = 300
RDZV_PORT_BASE = 29500


def rdzv_port(job_id: str) -> int:
    """A port for the job's rendezvous store, stable across a requeue (same job id) and distinct
    between concurrent jobs."""
    return RDZV_PORT_BASE + int(job_id) % 20000


def standalone(gpus: int, cmd: Sequence[str]) -> list[str]:
    return [
        "torchrun",
        "--no-python",
        "--standalone",
        "--nproc-per-node",
        str(max(1, gpus)),
        "--shutdown-timeout",
        str(SHUTDOWN_TIMEOUT_S),
        *cmd,
    ]


def srun_step(nodes: int, gpus: int, cpus: int, cmd: Sequence[str]) -> list[str]:
    """The job step (run from the batch script) that starts one `prdit launch --node-task` per node.

    Everything is explicit: Snakemake's slurm-jobstep executor hands the rule's shell only the job's
    identity (SLURM_JOB_ID), not the allocation's SLURM_* defaults. The step gets all of the job's GPUs
    on each node (SLURM's default for GRES) and `cpus` CPUs per node (the rule's threads)."""
    return [
        "srun",
        f"--nodes={nodes}",
        f"--ntasks={nodes}",
        "--ntasks-per-node=1",
        f"--cpus-per-task={max(1, cpus)}",
        "--kill-on-bad-exit=1",
        "prdit",
        "launch",
        "--node-task",
        "--nodes",
        str(nodes),
        "--gpus",
        str(gpus),
        "--",
        *cmd,
    ]


def node_torchrun(nodes: int, gpus: int, cmd: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """The torchrun of one node inside the srun step, its rendezvous taken from SLURM's variables."""
    if nodes == 1:
        return standalone(int(env.get("SLURM_GPUS_ON_NODE") or gpus), cmd)
    missing = [k for k in ("SLURM_JOB_ID", "SLURM_LAUNCH_NODE_IPADDR", "SLURM_NODEID") if not env.get(k)]
    if missing:
        raise PrditError(
            f"--node-task with --nodes {nodes} runs inside an srun step; {', '.join(missing)} not set"
        )
    per_node = int(env.get("SLURM_GPUS_ON_NODE") or max(1, gpus // nodes))
    job = env["SLURM_JOB_ID"]
    host = "1" if env["SLURM_NODEID"] == "0" else "0"
    return [
        "torchrun",
        "--no-python",
        "--nnodes",
        str(nodes),
        "--nproc-per-node",
        str(max(1, per_node)),
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"{env['SLURM_LAUNCH_NODE_IPADDR']}:{rdzv_port(job)}",
        "--rdzv-id",
        f"slurm-{job}",
        "--rdzv-conf",
        f"is_host={host}",
        "--shutdown-timeout",
        str(SHUTDOWN_TIMEOUT_S),
        *cmd,
    ]


def command(
    nodes: int,
    gpus: int,
    cmd: Sequence[str],
    env: Mapping[str, str] | None = None,
    node_task: bool = False,
    cpus: int = 1,
) -> list[str]:
    """What `prdit launch` executes (see the module docstring)."""
    env = os.environ if env is None else env
    if nodes < 1 or gpus < 0:
        raise PrditError(f"--nodes must be >= 1 and --gpus >= 0, got {nodes} and {gpus}")
    if not cmd:
        raise PrditError("nothing to launch: give the command after --")
    if node_task:
        return node_torchrun(nodes, gpus, cmd, env)
    if env.get("SLURM_JOB_ID") and not env.get("SLURM_STEP_ID"):  # a batch script: start the step
        return srun_step(nodes, gpus, cpus, cmd)
    if nodes > 1:
        if (
            env.get("SLURM_STEP_ID")
            and int(env.get("SLURM_STEP_NUM_NODES") or 0) == nodes
            and int(env.get("SLURM_STEP_NUM_TASKS") or 0) == nodes
        ):
            return node_torchrun(nodes, gpus, cmd, env)  # already one task per node (e.g. a hand-run srun)
        raise PrditError(
            f"--nodes {nodes} needs a SLURM allocation of {nodes} nodes (run it in the batch "
            "script, or in an srun step with one task per node)"
        )
    return standalone(gpus, cmd)


def run_launch(nodes: int, gpus: int, cmd: Sequence[str], node_task: bool = False, cpus: int = 1) -> None:
    """Replace this process with the launch command (signals then reach srun / torchrun directly)."""
    argv = command(nodes, gpus, list(cmd), node_task=node_task, cpus=cpus)
    print("prdit launch:", " ".join(argv), flush=True)
    os.execvp(argv[0], argv)
