"""Benchmark helpers: alternating timers, FLOP and byte counts of the transformer passes, the
machine's matrix-multiply throughput and memory bandwidth, and peak-memory probes.

Counting convention: a multiply-add is 2 FLOPs; only matrix multiplies are counted (linear layers,
the output head, q.k and p.v in attention). Norms, RoPE, softmax and sampling are not counted: they
are the overhead an implementation should hide, so FLOP/s = counted FLOPs / wall time is honest.
The runners that use these helpers live in bench_runs.py.
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from coarse2fine.config import GPTConfig
from coarse2fine.precision import bf16_native, cpu_info


# ---- timing --------------------------------------------------------------------------------------

def sync(device: torch.device | str) -> None:
    """Wait for queued device work (CUDA kernels run asynchronously; CPU needs nothing)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device | str = "cpu") -> tuple[float, object]:
    """Run fn once -> (wall seconds including device completion, fn's result)."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


@dataclass
class Timings:
    """Seconds per repeat and candidate: wall clock, and CPU time of this process (user + system,
    all threads). On a shared CPU the wall clock also counts the time other jobs held the cores;
    the CPU time does not, so efficiency figures use it there (with 1 thread they agree when idle)."""

    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]


def alternate(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
              device: torch.device | str = "cpu", progress: Callable[[str], None] | None = None) -> Timings:
    """Time several functions in rounds A, B, C, A, B, C, ... so slow drifts of a shared machine
    (other jobs, clocks) hit every candidate alike."""
    for _ in range(warmup):
        for fn in fns.values():
            timed(fn, device)
    out = Timings({name: [] for name in fns}, {name: [] for name in fns})
    for r in range(repeats):
        for name, fn in fns.items():
            c0 = time.process_time()
            wall, _ = timed(fn, device)
            out.wall[name].append(wall)
            out.cpu[name].append(time.process_time() - c0)
            if progress:
                progress(f"round {r + 1}/{repeats} {name}: {wall:.3f} s wall, {out.cpu[name][-1]:.3f} s cpu")
    return out


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def spread(xs: list[float]) -> float:
    """(max - min) / median of repeated timings, a noise indicator."""
    return (max(xs) - min(xs)) / median(xs) if len(xs) > 1 else 0.0


# ---- FLOP and byte counts -------------------------------------------------------------------------

def layer_matmul_params(cfg: GPTConfig) -> int:
    """Weights one token multiplies through in one block: wqkv (3 D^2) + wo (D^2) + SwiGLU (3 D F)."""
    return 4 * cfg.dim * cfg.dim + 3 * cfg.dim * cfg.ffn_hidden


def token_flops(cfg: GPTConfig, context: int, head: bool = True) -> int:
    """Matmul FLOPs for one token that attends over `context` positions (itself included)."""
    f = 2 * cfg.n_layer * layer_matmul_params(cfg) + cfg.n_layer * 4 * cfg.dim * context
    return f + (2 * cfg.dim * cfg.vocab_size if head else 0)


def decode_flops(cfg: GPTConfig, rows: int, num_tokens: int, head_rows: int | None = None) -> int:
    """The KV-cache loop: step i feeds one token at position i, attends over i + 1 positions and
    evaluates the head for `head_rows` rows (default `rows`). rows = 2B under CFG; head_rows = B when the
    sampler guides the hidden states before the head (generate_ar's cfg_before_head)."""
    head_rows = rows if head_rows is None else head_rows
    body = rows * sum(token_flops(cfg, i + 1, head=False) for i in range(num_tokens))
    return body + head_rows * num_tokens * 2 * cfg.dim * cfg.vocab_size


def full_forward_flops(cfg: GPTConfig, rows: int, length: int, causal: bool | None = None,
                       head_positions: int | None = None, head_width: float | None = None) -> int:
    """One pass over `length` positions (class token included). Causal attention is counted as
    executed by the kernels (full square), the head at `head_positions` positions (default all), each
    computing `head_width` logits (default the vocabulary; stage 2's restricted head computes only the
    members of the position's cluster: pass their mean count over the positions)."""
    del causal  # SDPA computes the full square either way; kept to make call sites self-describing
    heads = length if head_positions is None else head_positions
    width = cfg.vocab_size if head_width is None else head_width
    return rows * length * token_flops(cfg, length, head=False) + round(rows * heads * 2 * cfg.dim * width)


def naive_flops(cfg: GPTConfig, rows: int, num_tokens: int) -> int:
    """The no-cache sampler: step i re-runs i + 1 positions with the head at all of them."""
    return sum(full_forward_flops(cfg, rows, i + 1) for i in range(num_tokens))


def train_flops(cfg: GPTConfig, rows: int, length: int, head_positions: int | None = None,
                head_width: float | None = None) -> int:
    """Forward + backward of one training step: backward costs twice the forward (3x in all).
    head_positions / head_width as in full_forward_flops (stage 2's restricted head: the N image
    positions, each with its cluster's members)."""
    return 3 * full_forward_flops(cfg, rows, length, head_positions=head_positions, head_width=head_width)


def weight_bytes(model: torch.nn.Module, dtype: torch.dtype | None = None) -> int:
    """Bytes of the weights a decode step streams: every parameter except the embedding tables (a
    step reads B rows of those, not the table). dtype: the compute dtype when weights are cast."""
    total = 0
    for name, p in model.named_parameters():
        if "embedding" in name:
            continue
        total += p.numel() * (torch.empty(0, dtype=dtype).element_size() if dtype else p.element_size())
    return total


def decode_bytes(cfg: GPTConfig, model: torch.nn.Module, rows: int, num_tokens: int,
                 kv_dtype: torch.dtype, w_dtype: torch.dtype | None = None) -> int:
    """Bytes the KV-cache loop must move at least: all weights once per step, plus at step i the
    K and V of i + 1 positions read and one position written, per layer and row."""
    e = torch.empty(0, dtype=kv_dtype).element_size()
    kv_per_pos = 2 * cfg.n_layer * cfg.dim * e * rows
    return sum(weight_bytes(model, w_dtype) + kv_per_pos * (i + 2) for i in range(num_tokens))


def decode_bound_s(cfg: GPTConfig, w_bytes: int, rows: int, num_tokens: int, peak_flop_per_s: float,
                   bytes_per_s: float, kv_elem_bytes: int = 2) -> float:
    """Least time of the KV-cache loop on a machine with this matmul peak and memory bandwidth:
    every step takes at least max(its FLOPs / peak, its bytes / bandwidth) (a per-step roofline;
    bytes = the weights once + K/V of the prefix read + one position written)."""
    kv_pos = 2 * cfg.n_layer * cfg.dim * kv_elem_bytes * rows
    total = 0.0
    for i in range(num_tokens):
        f = rows * token_flops(cfg, i + 1)
        b = w_bytes + kv_pos * (i + 2)
        total += max(f / peak_flop_per_s, b / bytes_per_s if bytes_per_s else 0.0)
    return total


# ---- machine limits ---------------------------------------------------------------------------

def matmul_flops_per_s(dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                       size: int | None = None, seconds: float = 0.5, clock: str = "wall") -> float:
    """Best observed FLOP/s of a square [n, n] @ [n, n] matmul (n = 1024 on CPU, 8192 on GPU),
    repeated for about `seconds`; what the decode loop's FLOP/s is compared with.
    clock "cpu": per CPU second of this process (see Timings), for shared CPUs."""
    device = torch.device(device)
    n = size or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best, spent = float("inf"), 0.0
    timed(lambda: a @ b, device)  # warm-up: kernel selection, page faults
    while spent < seconds:
        c0 = time.process_time()
        dt, _ = timed(lambda: a @ b, device)
        spent += dt
        best = min(best, time.process_time() - c0 if clock == "cpu" else dt)
    return 2 * n ** 3 / max(best, 1e-9)


def copy_bytes_per_s(device: torch.device | str = "cpu", mib: int = 256, seconds: float = 0.5) -> float:
    """Best observed bytes/s of a large tensor copy (read + write counted), a measured stand-in
    for memory bandwidth when no datasheet figure is given."""
    device = torch.device(device)
    src = torch.ones(mib * 2 ** 20 // 4, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # fault the pages in first
    best, spent = float("inf"), 0.0
    while spent < seconds:
        dt, _ = timed(lambda: dst.copy_(src), device)
        best, spent = min(best, dt), spent + dt
    return 2 * src.numel() * 4 / best


# ---- memory --------------------------------------------------------------------------------------

def _rss_hwm_bytes() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _rss_bytes() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@dataclass
class PeakMemory:
    """Peak memory of a code region: CUDA peak allocated bytes, or on CPU the process's peak resident
    set and its rise above the resident set at entry. kind says how the CPU peak was read:
    "peak RSS" (Linux VmHWM, reset on entry), "lifetime peak RSS" (VmHWM could not be reset but the
    region set a new record, so it is the region's own peak) or "sampled peak RSS" (an earlier peak
    hides the region's: the largest resident set a 1 ms sampler saw, a lower bound)."""

    kind: str = ""
    peak_bytes: int | None = None
    rise_bytes: int | None = None

    @property
    def peak_mib(self) -> float | None:
        return None if self.peak_bytes is None else self.peak_bytes / 2 ** 20

    @property
    def rise_mib(self) -> float | None:
        return None if self.rise_bytes is None else self.rise_bytes / 2 ** 20


_RESET_SLACK = 4 * 2 ** 20  # after a reset the high-water mark is the resident set, give or take a few pages


def _reset_rss_hwm() -> bool:
    """Reset VmHWM (write 5 to clear_refs, Linux >= 4.0) and check that it took: some kernels and
    sandboxes refuse the write, others accept it and keep the old mark."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    hwm, rss = _rss_hwm_bytes(), _rss_bytes()
    return hwm is not None and rss is not None and hwm <= rss + _RESET_SLACK


class _RssSampler:
    """Polls the resident set in a daemon thread; .peak is the largest value seen."""

    def __init__(self, interval_s: float = 0.001):
        import threading

        self.peak, self._interval = _rss_bytes() or 0, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes() or 0)
            self._stop.wait(self._interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, _rss_bytes() or 0)


@contextmanager
def peak_memory(device: torch.device | str = "cpu"):
    """with peak_memory(dev) as pm: ...  -> pm.peak_bytes / pm.rise_bytes afterwards."""
    device = torch.device(device)
    pm = PeakMemory()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield pm
        torch.cuda.synchronize(device)
        pm.kind, pm.peak_bytes = "cuda max allocated", torch.cuda.max_memory_allocated(device)
        pm.rise_bytes = pm.peak_bytes - start
        return
    start = _rss_bytes()
    resettable = _reset_rss_hwm()
    hwm_before = _rss_hwm_bytes()
    sampler = None if resettable else _RssSampler()
    try:
        yield pm
    finally:
        sampled = sampler.stop() if sampler is not None else None
    hwm = _rss_hwm_bytes()
    if resettable:
        pm.kind, pm.peak_bytes = "peak RSS", hwm
    elif hwm is not None and hwm_before is not None and hwm > hwm_before:
        pm.kind, pm.peak_bytes = "lifetime peak RSS", hwm
    else:
        pm.kind, pm.peak_bytes = "sampled peak RSS", sampled
    if pm.peak_bytes is not None and start is not None:
        pm.rise_bytes = max(0, pm.peak_bytes - start)


# ---- describing the machine -----------------------------------------------------------------------

def machine_info(device: torch.device | str = "cpu") -> dict[str, object]:
    """What a results file must state: CPU model/cores/threads or GPU name, torch version, load."""
    device = torch.device(device)
    info: dict[str, object] = {"torch": torch.__version__, "python": platform.python_version(),
                               "threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    model, flags = cpu_info()
    info["cpu"] = model or platform.processor()
    if flags is not None:
        info["cpu_bf16"] = bf16_native("cpu")
        # the flags that decide fp32 and bf16 speed: an AMX CPU's bf16 matmul peak was 8.5x its fp32 one,
        # an AVX512-BF16 CPU without AMX ran bf16 matmuls slower than fp32 (docs/speed.md)
        info["cpu_flags"] = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    if hasattr(os, "getloadavg"):
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def tokenizer_step_seconds(preset: str, repeats: int = 3, dtype: str = "fp32", vq_overrides: dict | None = None,
                           **train_overrides) -> dict:
    """CPU seconds of one training step of a tokenizer preset with its recipe (batch and loss terms),
    through the one training loop on random images: the median of `repeats` steps after one untimed
    step, taken where the discriminator (if any) trains. vq_overrides (e.g. codebook_size) and
    train_overrides (TokenizerTrainConfig fields, e.g. perceptual_weight=0) change the preset's."""
    from coarse2fine.config import TokenizerTrainConfig, tokenizer_recipe, vq_config
    from coarse2fine.distributed import DistInfo
    from coarse2fine.training.loop import prepare, train_step
    from coarse2fine.training.tokenizer import tokenizer_task

    vq_cfg = vq_config(preset, **(vq_overrides or {}))
    tc = TokenizerTrainConfig(**{**tokenizer_recipe(preset), **train_overrides, "dtype": dtype})

    class RandomImages:
        def get(self, step: int) -> torch.Tensor:
            g = torch.Generator().manual_seed(step)
            return torch.rand(tc.batch_size, 3, vq_cfg.image_size, vq_cfg.image_size, generator=g) * 2 - 1

    info = DistInfo()
    task = tokenizer_task(vq_cfg, tc, RandomImages(), info)
    prepare(task, info)
    times = []
    for i in range(repeats + 1):
        c0 = time.process_time()
        train_step(task, tc.disc_start + i, info)
        times.append(time.process_time() - c0)
    terms = [t for t, on in (("perceptual", tc.perceptual_weight > 0), ("GAN", tc.disc_weight > 0)) if on]
    return {"preset": preset, "batch_size": tc.batch_size, "cpu_s": median(times[1:]), "precision": dtype,
            "terms": "+".join(["L2" if tc.recon_loss == "l2" else "L1"] + terms), "threads": torch.get_num_threads()}
