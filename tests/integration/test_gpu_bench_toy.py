"""The GPU run (benchmarks/gpu/run.py) kept working on a CPU: the whole script at its toy size, its
item runner's failure handling (error, crash, time cap), and the step clock it times the trainer with."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from coarse2fine.bench.gpu import StepClock

ROOT = Path(__file__).resolve().parents[2]
GPU_DIR = ROOT / "benchmarks" / "gpu"


def _env():
    src = str(ROOT / "src")
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
            "PYTHONPATH": src + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")}


def test_toy_run_fills_every_phase_with_numbers(tmp_path):
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, str(GPU_DIR / "run.py"), "--toy", "--out", str(out),
                        "--scratch", str(tmp_path / "scratch")], cwd=ROOT, env=_env(), capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert set(res["phases"]) == {"env", "tests", "sample", "train"}
    for phase, ph in res["phases"].items():
        for item, rec in ph["items"].items():
            assert rec["status"] == "ok" and rec["wall_s"] > 0, (phase, item, rec)
    env = res["phases"]["env"]["items"]["probe"]["result"]
    assert env["copy_bytes_per_s"] > 0 and env["matmul_flop_per_s"] > 0 and env["device"]["torch"]
    tests = res["phases"]["tests"]["items"]["gpu_marked"]["result"]
    # without CUDA every gpu-marked test is collected and reported as skipped, none fails
    assert tests["counts"]["skipped"] == len(tests["tests"]) >= 6 and tests["counts"]["failed"] == 0
    s = res["phases"]["sample"]["items"]["GPT-tiny:eager"]["result"]["summary"]
    for key in ("ctf", "baseline"):
        assert s["images_per_s"][key] > 0 and 0 < s["pipeline_fraction_of_bound"][key] < math.inf
    assert s["ratio_ctf_over_baseline"] > 0 and all(v > 0 for v in s["fraction_of_bound"].values())
    cli = res["phases"]["train"]["items"]["cli"]["result"]["stages"]
    assert [(c["stage"], c["flag"]) for c in cli] == [("coarse", ""), ("fine", ""), ("baseline", ""),
                                                       ("baseline", "--fsdp")]
    for c in cli:
        assert c["returncode"] == 0 and c["tokens_per_s"] > 0 and c["peak_mib"] > 0, c
        assert math.isfinite(c["final_loss"]) and c["steps_seen"] == c["steps"], c
    eng = res["phases"]["train"]["items"]["engines"]["result"]["stages"]
    for st in eng:
        assert [e["engine"] for e in st["engines"]] == ["none", "ddp", "fsdp"], st
        assert all(e["tokens_per_s"] > 0 for e in st["engines"])
    md = (out / "results.md").read_text()
    for heading in ("## Phases", "## GPU-marked tests", "## Sampling", "## Training", "## Training engines"):
        assert heading in md


@pytest.fixture()
def runner(monkeypatch, tmp_path):
    sys.path.insert(0, str(GPU_DIR))
    try:
        import run as gpu_run
    finally:
        sys.path.remove(str(GPU_DIR))
    args = SimpleNamespace(toy=True, toy_compile=False)

    def go(code: str, cap: float):
        monkeypatch.setattr(gpu_run, "item_command", lambda *a: [sys.executable, "-c", code])
        with open(tmp_path / "log", "a") as log:
            return gpu_run.run_item("sample", "X:eager", cap, args, tmp_path, log)
    return go, gpu_run.item_path(tmp_path, "sample", "X:eager")


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_item_runner_records_results_errors_and_time_caps(runner, tmp_path):
    go, result_path = runner
    result_path.parent.mkdir(parents=True, exist_ok=True)
    ok = go(f"import pathlib; pathlib.Path({str(result_path)!r}).write_text('{{\"x\": 1}}')", 30)
    assert ok["status"] == "ok" and ok["result"] == {"x": 1}
    crash = go("raise RuntimeError('CUDA error: an illegal memory access')", 30)
    assert crash["status"] == "error" and crash["returncode"] == 1 and "result" not in crash
    silent = go("pass", 30)  # exit 0 without a result is not a success
    assert silent["status"] == "error" and "wrote no result" in silent["error"]
    # a child of the item (as torchrun's workers) that outlives the cap is stopped with it
    pid_file = tmp_path / "worker.pid"
    hang = go("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; "
              f"time.sleep(60)'], start_new_session=True); open({str(pid_file)!r}, 'w').write(str(p.pid)); "
              "time.sleep(60)", 5)
    assert hang["status"] == "timeout" and "time cap of 5 s" in hang["error"]
    # stopped at its cap, not at the end of its 60-second sleep (the runner's own clock, not a guess at this box)
    assert hang["cap_s"] == 5 and 5 <= hang["wall_s"] < 60
    assert not _running(int(pid_file.read_text()))


def test_step_clock_times_every_optimizer_step(monkeypatch):
    import coarse2fine.bench.gpu as gpu

    now = [10.0]
    monkeypatch.setattr(gpu.time, "perf_counter", lambda: now[0])
    w = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([w], lr=0.1)
    with StepClock() as clock:
        for dt in (5.0, 0.5, 0.25, 0.5):  # the first step pays for allocation; then steady steps
            now[0] += dt
            w.sum().backward()
            opt.step()
    opt.step()  # after the block: not counted
    s = clock.summary(tokens_per_step=100, skip=1)
    assert s["steps_seen"] == 4 and s["steps_timed"] == 3 and s["first_step_s"] == 5.0
    assert s["step_s"] == 0.5 and s["tokens_per_s"] == 200.0  # the median of the timed intervals
