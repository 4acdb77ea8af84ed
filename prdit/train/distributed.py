"""Process-group setup from the launcher's environment (torchrun or srun) and a few collectives.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT. Under `srun` the SLURM
step variables give rank and size; the rendezvous host is the step's first node unless MASTER_ADDR
is set, the port is derived from the job id unless MASTER_PORT is set. One process: no group at all.
"""

from __future__ import annotations

import datetime
import logging
import os
import subprocess
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from prdit.device import select_device
from prdit.train.launch import rdzv_port

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    why: dict[str, str] = field(default_factory=dict, compare=False)  # how prdit.device chose `device`

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def detect(environ: dict[str, str] | None = None) -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's or srun's variables; (0, 1, 0) otherwise."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    # SLURM_STEP_NUM_TASKS exists only inside an srun step; SLURM_NTASKS alone is also set in the
    # batch script itself, where only one process runs and a rendezvous would hang.
    if "SLURM_STEP_NUM_TASKS" in env and "SLURM_PROCID" in env:
        return int(env["SLURM_PROCID"]), int(env["SLURM_STEP_NUM_TASKS"]), int(env.get("SLURM_LOCALID", 0))
    return 0, 1, 0


def _slurm_master_addr() -> str:
    nodes = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_JOB_NODELIST", "")
    if not nodes:
        return "127.0.0.1"
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodes], capture_output=True, text=True, check=True
        )
        return out.stdout.split()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return nodes.split(",")[0].split("[")[0]


def setup(timeout_min: float = 30.0) -> DistEnv:
    """Pick this process's device (prdit.device: a requested but unusable GPU stops here, before the
    process group) and initialise the group when launched with several processes."""
    rank, world, local = detect()
    device, why = select_device(local)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        if "RANK" not in os.environ:  # srun: export what env:// rendezvous reads
            os.environ.setdefault("MASTER_ADDR", _slurm_master_addr())
            os.environ.setdefault("MASTER_PORT", str(rdzv_port(os.environ.get("SLURM_JOB_ID", "0"))))
            os.environ["RANK"], os.environ["WORLD_SIZE"] = str(rank), str(world)
        dist.init_process_group(
            backend="nccl" if cuda else "gloo",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(minutes=timeout_min),
        )
        log.info("process group up: rank %d of %d on %s", rank, world, device)
    return DistEnv(rank, world, local, device, why)


def teardown() -> None:
    """Destroy the process group if this module's setup created one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def all_sum(env: DistEnv, values: torch.Tensor) -> torch.Tensor:
    """Sum a small tensor over ranks (in place on a copy); identity for one process."""
    if not env.distributed:
        return values
    out = values.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def any_rank(env: DistEnv, *flags: bool) -> tuple[bool, ...]:
    """Each flag OR-ed over all ranks, in one collective (used to agree on skipping and stopping)."""
    if not env.distributed:
        return tuple(bool(f) for f in flags)
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return tuple(bool(v > 0) for v in t.tolist())
