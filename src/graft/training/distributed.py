"""Data-parallel training through torch.distributed, as `torchrun` sets it up (no home-made scheme).

`torchrun --nproc-per-node N -m graft train ...` starts N processes with RANK/WORLD_SIZE/MASTER_ADDR set; each
takes its slice of every global batch, DDP averages the gradients, and only rank 0 writes files. With equal
slices the averaged gradient is the single-process gradient of the whole batch, so a run on N processes follows
the single-process run (up to float summation order, and BatchNorm statistics taken per slice).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from graft.errors import GraftError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1  # processes on this machine, which share its cores

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Only the main process writes the run directory, checkpoints and the bundle."""
        return self.rank == 0


def world_from_env() -> World:
    """The process group torchrun describes in the environment; a single process otherwise."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(
        int(os.environ["RANK"]),
        size,
        int(os.environ.get("LOCAL_RANK", "0")),
        int(os.environ.get("LOCAL_WORLD_SIZE", str(size))),
    )


def start(world: World, device: torch.device) -> None:
    """Join the process group: gloo on CPU, NCCL on GPUs."""
    if not world.distributed or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=world.rank, world_size=world.size)


def stop(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def check_batch_size(world: World, batch_size: int) -> None:
    if batch_size % world.size:
        raise GraftError(
            f"--batch-size {batch_size} is the global batch; it must divide evenly across {world.size} processes"
        )


def reduce_sums(values: list[float], world: World, device: torch.device) -> list[float]:
    """Sums over all processes (e.g. loss sums, correct counts, image counts); unchanged on one process."""
    if not world.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def broadcast_flag(flag: bool, world: World, device: torch.device) -> bool:
    """Rank 0's decision (e.g. 'stop now') for every process, so all leave the loop together."""
    if not world.distributed:
        return flag
    tensor = torch.tensor([1 if flag else 0], device=device)
    dist.broadcast(tensor, src=0)
    return bool(tensor.item())


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()
