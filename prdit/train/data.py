"""Deterministic, resumable data feed: a global sample stream cut into per-rank micro-batches.

Sample n of the stream is item perm_e[n mod N] with e = n div N and perm_e a seeded permutation,
so the whole run is fixed by (seed, N). Optimizer step s consumes stream positions
[s*G, (s+1)*G) for a global batch G, split across grad-accumulation micro-steps and ranks; the
diffusion time and noise of a sample are drawn from a generator seeded by its position. Hence a
resumed run, a run on another number of processes and an uninterrupted run see the same data and
the same noise, and the only data-loader state to checkpoint is one integer.

Volumes travel as float16 (the cache's dtype, HOST_DTYPE): host, shared and pinned memory and the
host-to-GPU copy are half of float32's; the step converts them on the device. On CUDA, DeviceFeed
copies the next micro-batch on a side stream while the current one computes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

HOST_DTYPE = torch.float16  # what the loader yields (prdit.data.dataset: the cache as stored)
PREFETCH = 4  # micro-batches each loader worker keeps ready (DataLoader prefetch_factor)


def seed_of(*parts: int) -> int:
    """A 63-bit seed mixed from integers (NumPy SeedSequence)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


class SampleStream(Dataset):
    """Dataset indexed by stream position; returns (volume, position)."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.n = len(dataset)  # type: ignore[arg-type]
        if self.n == 0:
            raise ValueError("the training set is empty: nothing to train on")
        self.seed = seed
        self._epoch = -1
        self._perm: np.ndarray | None = None

    def index(self, position: int) -> int:
        epoch = position // self.n
        if epoch != self._epoch:
            self._perm = np.random.default_rng(seed_of(self.seed, epoch)).permutation(self.n)
            self._epoch = epoch
        return int(self._perm[position % self.n])  # type: ignore[index]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int]:
        return self.dataset[self.index(position)], position


class MicroBatches(Sampler[list[int]]):
    """Endless stream positions of this rank's micro-batches, starting at global position `start`."""

    def __init__(self, start: int, global_batch: int, accum: int, rank: int, world_size: int) -> None:
        if global_batch % (accum * world_size):
            raise ValueError(
                f"the global batch (train.<stage>.batch_size = {global_batch}) is not divisible by "
                f"train.common.grad_accum ({accum}) x processes ({world_size})"
            )
        self.start, self.global_batch, self.accum = start, global_batch, accum
        self.rank, self.world = rank, world_size
        self.micro = global_batch // (accum * world_size)

    def __iter__(self) -> Iterator[list[int]]:
        step_start = self.start
        while True:
            for a in range(self.accum):
                first = step_start + (a * self.world + self.rank) * self.micro
                yield list(range(first, first + self.micro))
            step_start += self.global_batch


def train_loader(
    dataset: Dataset, batches: MicroBatches, *, seed: int, workers: int, pin: bool
) -> DataLoader:
    """Endless loader of (x0 [m, C, ...], positions [m]) micro-batches for this rank (`batches`: which
    stream positions, from where, cut how); `seed` fixes the stream's permutations."""
    return DataLoader(
        SampleStream(dataset, seed),
        batch_sampler=batches,
        num_workers=workers,
        pin_memory=pin,
        persistent_workers=False,
        prefetch_factor=PREFETCH if workers else None,
    )


def host_bytes(workers: int, micro: int, size: int) -> int:
    """Host memory of the loader's micro-batches in flight: PREFETCH per worker (in shared or pinned
    memory), one more being pinned or copied to the GPU; without workers, the one being read."""
    batches = workers * PREFETCH + 1 if workers else 1
    return batches * micro * size**3 * torch.finfo(HOST_DTYPE).bits // 8


class DeviceFeed:
    """(x0, positions) micro-batches of `loader` with x0 on `device`, still HOST_DTYPE.

    On CUDA the next micro-batch's copy (pinned memory, non-blocking) is issued on a side stream before
    the current one is handed out, so it overlaps the step's compute; the step's stream waits for it
    only when the batch is used. Elsewhere a plain `.to(device)`.
    """

    def __init__(self, loader: DataLoader | Iterator, device: torch.device) -> None:
        self.batches = iter(loader)
        self.device = device
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.next: tuple[torch.Tensor, torch.Tensor] | None = None
        if self.stream is not None:
            self.next = self._issue()

    def _issue(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        try:
            x, pos = next(self.batches)
        except StopIteration:
            return None
        with torch.cuda.stream(self.stream):
            return x.to(self.device, non_blocking=True), pos

    def __iter__(self) -> DeviceFeed:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.stream is None:
            x, pos = next(self.batches)
            return x.to(self.device), pos
        if self.next is None:
            raise StopIteration
        x, pos = self.next
        current = torch.cuda.current_stream(self.device)
        current.wait_stream(self.stream)
        x.record_stream(current)  # the allocator must not reuse x's memory before the step is done with it
        self.next = self._issue()
        return x, pos


def val_loader(
    dataset: Dataset, *, batch: int, rank: int, world_size: int, workers: int, pin: bool
) -> DataLoader:
    """This rank's share (every world_size-th item) of the validation set, in order, with indices."""
    indices = list(range(rank, len(dataset), world_size))  # type: ignore[arg-type]
    batches = [indices[i : i + batch] for i in range(0, len(indices), batch)]
    return DataLoader(_Indexed(dataset), batch_sampler=batches, num_workers=workers, pin_memory=pin)


class _Indexed(Dataset):
    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.dataset[i], i


def draw(
    positions: Sequence[int],
    shape: Sequence[int],
    *,
    seed: int,
    timesteps: int,
    device: torch.device,
    stream: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample diffusion time t [B] and standard-normal noise [B, *shape], fixed by each position."""
    ts, noises = [], []
    for pos in positions:
        g = torch.Generator(device=device).manual_seed(seed_of(seed, stream, int(pos)))
        ts.append(torch.randint(0, timesteps, (1,), generator=g, device=device))
        noises.append(torch.randn(tuple(shape), generator=g, device=device))
    return torch.cat(ts), torch.stack(noises)
