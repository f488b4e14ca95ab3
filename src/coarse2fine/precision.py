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
def _cpu_has_bf16_flags() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no cheap way to tell, so stay in fp32
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


DTYPES = ("auto", "fp32", "bf16")  # the one spelling of a precision: the CLI's --dtype, the API's dtype=


def resolve_dtype(dtype: str | torch.dtype, device: torch.device | str) -> torch.dtype:
    """"fp32" / "bf16" / "auto" (bf16 where it is native, see bf16_native), or a torch dtype as it is ->
    the autocast dtype."""
    if isinstance(dtype, torch.dtype):
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
    return torch.bfloat16 if bf16_native(device.type) else torch.float32


def autocast(device: torch.device, dtype: torch.dtype):
    """Autocast to `dtype`, or nothing at all for float32."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


