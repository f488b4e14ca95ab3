"""Process-group setup, rank helpers and the CPU thread policy. The only module that reads torchrun's
environment.

world_size == 1 is the ordinary case of the same code: no process group is created then.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from coarse2fine.config import UserError

log = logging.getLogger("coarse2fine")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    grouped: bool = False  # a process group exists (world_size > 1, or requested under torchrun)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1 or self.grouped


def under_torchrun() -> bool:
    return "RANK" in os.environ and "MASTER_ADDR" in os.environ


def _env_int(name: str, default: int, least: int) -> int:
    """An integer variable of torchrun's, checked: a garbled value was int()'s ValueError."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < least:
        raise UserError(f"{name}={raw!r} in the environment is not an integer >= {least}; torchrun sets it, "
                        f"so launch with torchrun or unset {name}")
    return value


def check_device(name: str | torch.device, flag: str = "--device") -> torch.device:
    """A device name -> torch.device, checked that torch can run on it here; each refusal one line naming
    `flag` ("--device" for the CLI, "device" for the Python API): a name torch does not know, CUDA or MPS
    asked for where torch has none, a CUDA index beyond the visible GPUs (was torch's RuntimeError or
    AssertionError, from the first tensor moved there)."""
    cli = flag.startswith("--")
    quoted, plain, cpu = ((f"{flag} {name!r}", f"{flag} {name}", f"{flag} cpu") if cli else
                          (f"{flag}={str(name)!r}",) * 2 + (f"{flag}='cpu'",))
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise UserError(f"{quoted} is not a device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"{plain} asked for, but torch sees no CUDA device; use {cpu}")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"{plain}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise UserError(f"{plain} asked for, but torch sees no MPS device (Apple silicon with macOS 12.3 or "
                            f"later, and a torch built with MPS); use {cpu}")
    elif dev.type != "cpu":
        raise UserError(f"{quoted} is not supported; use cpu, cuda or cuda:N")
    return dev


def setup(device: str | None = None, group: bool = False) -> DistInfo:
    """Initialise torch.distributed from torchrun's env vars (RANK, LOCAL_RANK, WORLD_SIZE).

    device: "cpu", "cuda" or None (cuda when available). Backend: nccl on CUDA, gloo on CPU.
    group: create the process group under torchrun even for one process (FSDP needs one to shard over).
    """
    world = _env_int("WORLD_SIZE", 1, 1)
    rank = _env_int("RANK", 0, 0)
    local = _env_int("LOCAL_RANK", 0, 0)
    if world > 1 and not under_torchrun():  # a WORLD_SIZE left in the shell: torch's env:// rendezvous traceback
        unset = [v for v in ("RANK", "MASTER_ADDR") if v not in os.environ]
        raise UserError(f"WORLD_SIZE={world} is set but {' and '.join(unset)} {'is' if len(unset) == 1 else 'are'} "
                        "not: launch with torchrun (docs/imagenet.md), or unset WORLD_SIZE for one process")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    check_device(device, "device")  # train(device="gpu") from Python: torch's RuntimeError otherwise
    if device == "cuda":
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device(device)
    if (world > 1 or (group and under_torchrun())) and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank=rank, local_rank=local, world_size=world, device=dev, grouped=dist.is_initialized())


def rank() -> int:
    """This process's global rank, for rank-0-only printing: the process group's, else torchrun's RANK
    (a command prints its settings before the group is set up: every process printed them), else 0."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return _env_int("RANK", 0, 0) if under_torchrun() else 0


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= dist.get_world_size()
    return t


def _cpu_times() -> tuple[int, int] | None:
    """(idle, total) jiffies of all CPUs from /proc/stat, None where there is no such file."""
    try:
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return vals[3] + (vals[4] if len(vals) > 4 else 0), sum(vals[:8])


def allowed_cores() -> int:
    """The cores this process may run on (its affinity mask; the machine's count where there is none)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def free_cores(window_s: float = 0.25) -> int:
    """Cores this process may use that other work leaves idle: the allowed cores minus the busy
    share of the machine measured over `window_s` seconds (rounded), at least 1."""
    allowed = allowed_cores()
    a = _cpu_times()
    if a is None:
        return allowed
    time.sleep(window_s)
    b = _cpu_times()
    total = (b[1] - a[1]) if b else 0
    if total <= 0:
        return allowed
    busy = (1 - (b[0] - a[0]) / total) * (os.cpu_count() or allowed)
    return max(1, min(allowed, allowed - round(busy)))


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op thread count for this process and return it.

    threads: an explicit count (>= 1) wins. None: respect OMP_NUM_THREADS when the user set it, else
    use the cores that are free right now (`free_cores`), capped at 8 because the small matmuls of
    CPU-size models stop scaling there. Why free cores and not all cores: an OpenMP team waits at
    every barrier for its slowest thread, so one competing CPU-bound process on a 2-core machine
    slows 2-thread training 2.8x (3-6x reported by a user), while one thread on the free core costs
    1.7x against the idle 2-thread time (benchmarks/results/demo/threads.md). The `--threads` flag of every heavy
    subcommand calls this.
    """
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    # OpenMP's syntax: a count, or counts per nesting level ("4,2"), whose first is the team this process runs
    first = omp.split(",")[0].strip()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be >= 1, got {threads}")
        n = threads
    elif first.isdigit() and int(first) >= 1:
        n = int(first)
    else:
        n = min(8, free_cores())
        if omp:  # a value was meant: say it is not used (libgomp's own "Invalid value" names no way out)
            log.warning("OMP_NUM_THREADS=%r is not a thread count (an integer >= 1), so it is ignored: %d thread(s) "
                        "used; set it to a number or pass --threads N", omp, n)
    torch.set_num_threads(n)
    return n
