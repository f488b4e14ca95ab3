"""The thread policy of every heavy subcommand: threads from the free cores, not from all cores."""
import pytest
import torch

from coarse2fine import distributed


def _fake_machine(monkeypatch, cores: int, idle_share: float):
    """Two /proc/stat readings 1000 jiffies apart with `idle_share` of them idle, on `cores` cores."""
    readings = iter([(0, 0), (int(1000 * idle_share), 1000)])
    monkeypatch.setattr(distributed, "_cpu_times", lambda: next(readings))
    monkeypatch.setattr(distributed.os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setattr(distributed.os, "cpu_count", lambda: cores)
    monkeypatch.setattr(distributed.time, "sleep", lambda s: None)


@pytest.mark.parametrize("cores, idle_share, free", [(2, 1.0, 2), (2, 0.5, 1), (2, 0.0, 1), (8, 0.75, 6)])
def test_free_cores_subtracts_the_busy_share(monkeypatch, cores, idle_share, free):
    _fake_machine(monkeypatch, cores, idle_share)
    assert distributed.free_cores() == free


def test_configure_threads_uses_free_cores_unless_told(monkeypatch):
    n0 = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        _fake_machine(monkeypatch, 2, 0.5)  # one competing CPU-bound process on a 2-core box
        assert distributed.configure_threads() == 1 and torch.get_num_threads() == 1
        assert distributed.configure_threads(2) == 2  # an explicit count wins
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert distributed.configure_threads() == 2
    finally:
        torch.set_num_threads(n0)


def test_bf16_probe_honours_kernel_caps(monkeypatch):
    """The one bf16 probe says no when torch's kernels are capped below AVX512, whatever the CPU flags."""
    from coarse2fine.precision import bf16_native

    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert bf16_native("cpu") is False
    monkeypatch.delenv("ATEN_CPU_CAPABILITY")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert bf16_native("cpu") is False


def test_bf16_by_name_warns_where_it_is_emulated(monkeypatch):
    """--dtype bf16 (the ImageNet run book's GPU setting) on a CPU without native bf16 ran a GPT-B training
    step 25x slower than fp32 without a word; it is still honoured, with a warning that names the way out."""
    import warnings

    from coarse2fine import precision

    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "bf16_native", lambda device_type="cpu": False)
    with pytest.warns(UserWarning, match="emulated.*--dtype auto"):
        assert precision.resolve_dtype("bf16", cpu) == torch.bfloat16
    assert precision.resolve_dtype("auto", cpu) == torch.float32
    monkeypatch.setattr(precision, "bf16_native", lambda device_type="cpu": True)
    monkeypatch.setattr(precision, "_cpu_bf16_speedup", lambda: 2.3)  # a Zen 4 EPYC's bf16 matmul peak
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # native: no warning, for bf16 by name or by auto
        assert precision.resolve_dtype("bf16", cpu) == torch.bfloat16
        assert precision.resolve_dtype("auto", cpu) == torch.bfloat16


def test_auto_keeps_fp32_where_native_bf16_is_slower(monkeypatch):
    """An Intel Xeon guest with the avx512_bf16 flag (no AMX) ran bf16 matmuls at 0.58x fp32's rate, and
    "auto" chose bf16 from the flag alone: training and sampling ran slower than in fp32."""
    from coarse2fine import precision

    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "bf16_native", lambda device_type="cpu": True)
    monkeypatch.setattr(precision, "_cpu_bf16_speedup", lambda: 0.58)
    assert precision.resolve_dtype("auto", cpu) == torch.float32
    assert precision.resolve_dtype("bf16", cpu) == torch.bfloat16  # asked for by name: still honoured
    monkeypatch.setattr(precision, "_cpu_bf16_speedup", lambda: 1.1)  # a near tie: not worth the rounding
    assert precision.resolve_dtype("auto", cpu) == torch.float32


def test_bf16_speedup_is_measured_on_this_cpu():
    from coarse2fine.precision import _cpu_bf16_speedup

    r = _cpu_bf16_speedup()
    assert 0.01 < r < 100 and r == _cpu_bf16_speedup()  # a ratio, measured once per process


def test_rank_before_the_process_group_is_torchruns(monkeypatch):
    """`train` prints its recipe line before the process group exists: under torchrun every process
    printed it (the ImageNet rehearsal showed it twice at two processes). rank() now reads torchrun's RANK."""
    import torch.distributed as dist

    assert not dist.is_initialized()
    monkeypatch.delenv("RANK", raising=False)
    assert distributed.rank() == 0
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    assert distributed.rank() == 1
    monkeypatch.delenv("MASTER_ADDR")  # RANK alone is not torchrun's launch
    assert distributed.rank() == 0
