"""Process-group setup, rank helpers and the CPU thread policy. The only module that reads torchrun's
environment.

world_size == 1 is the ordinary case of the same code: no process group is created then.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: str | None = None) -> DistInfo:
    """Initialise torch.distributed from torchrun's env vars (RANK, LOCAL_RANK, WORLD_SIZE).

    device: "cpu", "cuda" or None (cuda when available). Backend: nccl on CUDA, gloo on CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank=rank, local_rank=local, world_size=world, device=dev)


def rank() -> int:
    """This process's global rank (0 without a process group): for rank-0-only printing."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= dist.get_world_size()
    return t


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op thread count for this process and return it.

    threads: an explicit count (>= 1) wins. None: respect OMP_NUM_THREADS when the user set it, else
    use the cores this process may run on (sched_getaffinity), capped at 8 because the small matmuls
    of CPU-size models stop scaling there. The `--threads` flag of every heavy subcommand calls this.
    """
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be >= 1, got {threads}")
        n = threads
    elif os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) >= 1:
        n = int(os.environ["OMP_NUM_THREADS"])
    else:
        n = min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
    torch.set_num_threads(n)
    return n
