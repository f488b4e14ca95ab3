"""Numeric precision: whether bf16 is native here, the autocast dtype a "precision" setting resolves
to, and the autocast context. Training and sampling both use it, so it sits below both."""
from __future__ import annotations

import functools
import os
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch

from coarse2fine.config import ConfigError


def bf16_native(device_type: str = "cpu") -> bool:
    """Does `device_type` ("cpu" / "cuda") run bfloat16 natively? The one probe of the library.

    CUDA: the GPU supports bf16 without emulation (Ampere and later). CPU: the AVX512-BF16 or AMX-BF16
    instructions are present (/proc/cpuinfo flags) and the environment does not cap torch's kernels below
    AVX512 (ATEN_CPU_CAPABILITY=avx2/default, ONEDNN_MAX_CPU_ISA=AVX2...: bf16 would then be emulated);
    without them bf16 is slower than fp32."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device_type != "cpu":
        return False
    aten = os.environ.get("ATEN_CPU_CAPABILITY", "").lower()
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if aten in ("default", "avx2") or (isa and "AVX512" not in isa and "AMX" not in isa and isa != "ALL"):
        return False
    return _cpu_has_bf16_flags()


@functools.lru_cache(maxsize=None)
def cpu_info() -> tuple[str | None, frozenset[str] | None]:
    """(model name, instruction-set flags) of the first CPU in /proc/cpuinfo, read once per process; None
    for what the file does not say (not Linux: no file at all). The library's one reader of that file: the
    dtype choice here, the demo's report (apps.demo.cpu_kind), every results header (bench.machine_info) and
    the benchmark scripts' machine lines."""
    try:
        return parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        return None, None


def parse_cpuinfo(text: str) -> tuple[str | None, frozenset[str] | None]:
    """The first "model name" and "flags" of a /proc/cpuinfo text (None where absent: an ARM kernel, say,
    writes neither)."""
    model = flags = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None and value.strip():
            model = value.strip()
        elif key == "flags" and flags is None:
            flags = frozenset(value.split())
        if model is not None and flags is not None:
            break
    return model, flags


BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # either one: the CPU computes bf16 natively


def _cpu_has_bf16_flags() -> bool:
    flags = cpu_info()[1]  # no flags (not Linux): no cheap way to tell, so stay in fp32
    return bool(flags and flags & BF16_FLAGS)


def bf16_pays_off(device_type: str = "cpu") -> bool:
    """Is bf16 both native and faster than fp32 here? What "auto" asks. A CUDA GPU with native bf16: yes.
    A CPU with the AVX512-BF16 flag: only where its bf16 matmuls beat fp32 (_cpu_bf16_speedup): on a
    Zen 4 EPYC they ran about 2.3x fp32's peak, but on an Intel Xeon guest with the same flag and no AMX
    they ran at 0.58x (benchmarks/results/speed_ctf_grid16_cpu.md), so the flag alone cannot decide."""
    if not bf16_native(device_type):
        return False
    return device_type != "cpu" or _cpu_bf16_speedup() >= BF16_MIN_SPEEDUP


BF16_MIN_SPEEDUP = 1.2  # bf16 must beat fp32 by this much: a near tie is not worth bf16's rounding


@functools.lru_cache(maxsize=None)
def _cpu_bf16_speedup(n: int = 512, repeats: int = 5) -> float:
    """fp32 / bf16 thread-CPU seconds of an n x n x n matmul on one thread, best of `repeats` (CPU time of
    this thread: another process on the core does not move it much). Measured once per process, ~0.1 s."""
    import time

    a32 = torch.randn(n, n, generator=torch.Generator().manual_seed(0))
    a16 = a32.to(torch.bfloat16)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        best = {}
        for name, a in (("fp32", a32), ("bf16", a16)):
            torch.mm(a, a)  # first call: kernel selection and allocation, not timed
            times = []
            for _ in range(repeats):
                t0 = time.thread_time()
                torch.mm(a, a)
                times.append(time.thread_time() - t0)
            best[name] = max(min(times), 1e-9)
    finally:
        torch.set_num_threads(threads)
    return best["fp32"] / best["bf16"]


DTYPES = ("auto", "fp32", "bf16")  # the one spelling of a precision: the CLI's --dtype, the API's dtype=
# the torch dtypes an autocast region can compute in (float32: no autocast); any other was ignored without a word
AUTOCAST_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def resolve_dtype(dtype: str | torch.dtype, device: torch.device | str) -> torch.dtype:
    """"fp32" / "bf16" / "auto" (bf16 where it is native and faster, see bf16_pays_off), or a torch dtype
    as it is -> the autocast dtype."""
    if isinstance(dtype, torch.dtype):
        if dtype not in AUTOCAST_DTYPES:  # autocast skips float64 and integer types: fp32 would run, silently
            raise ConfigError(f"dtype {dtype} is not a precision autocast computes in; use 'auto', 'fp32' or "
                              "'bf16' (or torch.float32, torch.bfloat16, torch.float16)")
        return dtype
    device, precision = torch.device(device), dtype
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        if not bf16_native(device.type):
            # asked for by name (the ImageNet run book's GPU setting) where it is emulated: say what it costs
            warnings.warn(f"bf16 on this {device.type} is emulated (no native bf16: e.g. no avx512_bf16/amx_bf16 "
                          "on a CPU): matmuls run many times slower than fp32 (25x for a GPT-B training step on an "
                          "AVX2 CPU); use --dtype auto (bf16 only where native) or fp32", UserWarning, stacklevel=2)
        return torch.bfloat16
    if precision != "auto":
        raise ConfigError(f"dtype must be auto, fp32 or bf16, got {precision!r}")
    return torch.bfloat16 if bf16_pays_off(device.type) else torch.float32


def autocast(device: torch.device, dtype: torch.dtype):
    """Autocast to `dtype`, or nothing at all for float32."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


