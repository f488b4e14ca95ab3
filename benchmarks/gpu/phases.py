"""One work item of the GPU run, in its own process (a CUDA fault poisons only the process it happens in):

    python benchmarks/gpu/phases.py env probe --scratch DIR [--toy]
    python benchmarks/gpu/phases.py tests gpu_marked --scratch DIR [--toy]
    python benchmarks/gpu/phases.py sample GPT-B:compiled --scratch DIR [--toy]

Each writes DIR/items/<phase>__<item>.json (see item_path); run.py merges those into results.json.
The training items run under torchrun (train_worker.py).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from plan import SIZES

ROOT = Path(__file__).resolve().parents[2]


def item_path(scratch: str | Path, phase: str, item: str) -> Path:
    return Path(scratch) / "items" / f"{phase}__{item.replace(':', '_')}.json"


def write_item(scratch, phase: str, item: str, result: dict) -> None:
    from coarse2fine.fileio import atomic_write_bytes

    atomic_write_bytes(item_path(scratch, phase, item), (json.dumps(result, indent=1, default=str) + "\n").encode())


def size_of(args) -> dict:
    s = dict(SIZES["toy" if args.toy else "full"])
    if args.toy and args.toy_compile:
        s["compile_mode"] = "default"  # CUDA graphs need CUDA; on a CPU the compiled step is inductor's C++
    if s["dtype"] == "auto":
        from coarse2fine.bench.speed import machine_info

        s["dtype"] = "bf16" if machine_info("cpu").get("cpu_bf16") else "fp32"
    return s


# ---- env: the card and its limits ------------------------------------------------------------------

def run_env(args, size: dict) -> dict:
    import torch

    from coarse2fine.bench import speed as bench
    from coarse2fine.bench.gpu import card_slug, device_report
    from coarse2fine.bench.runs import DTYPES

    if size["device"] == "cuda" and not torch.cuda.is_available():
        raise SystemExit("torch sees no CUDA device; run the toy size (--toy) on a CPU")
    dev = torch.device(size["device"])
    info = device_report(dev)
    t0 = time.perf_counter()
    bw = bench.copy_bytes_per_s(dev, mib=size["copy_mib"], seconds=size["probe_s"])
    peak = bench.matmul_flops_per_s(DTYPES[size["dtype"]], dev, size=size["matmul_size"], seconds=size["probe_s"])
    return {"device": info, "card": card_slug(info.get("gpu") or "cpu"), "dtype": size["dtype"],
            "copy_bytes_per_s": bw, "copy_mib": size["copy_mib"], "matmul_flop_per_s": peak,
            "matmul_size": size["matmul_size"], "probe_wall_s": time.perf_counter() - t0}


# ---- tests: the gpu-marked suite -----------------------------------------------------------------

def run_tests(args, size: dict) -> dict:
    """pytest -m gpu tests/gpu in a child process; outcome per test from its JUnit XML."""
    xml = Path(args.scratch) / "gpu_tests_junit.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/gpu", "-q", "-rfEs", "-p", "no:cacheprovider",
           f"--junitxml={xml}"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    print(r.stdout[-6000:], r.stderr[-3000:], sep="\n", flush=True)
    tests = []
    if xml.exists():
        for case in ET.parse(xml).getroot().iter("testcase"):
            outcome, message = "passed", ""
            for tag in ("failure", "error", "skipped"):
                el = case.find(tag)
                if el is not None:
                    outcome = {"failure": "failed"}.get(tag, tag)
                    message = (el.get("message") or el.text or "")[:600]
                    break
            tests.append({"name": case.get("name"), "outcome": outcome, "time_s": float(case.get("time", 0)),
                          "message": message})
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")}
    out = {"command": " ".join(cmd), "returncode": r.returncode, "wall_s": wall, "counts": counts, "tests": tests}
    if not tests:
        out["output_tail"] = (r.stdout + r.stderr)[-2000:]
    return out


# ---- sample: CTF vs the baseline, measured and against the roofline ----------------------------------

def run_sample(args, size: dict) -> dict:
    import torch

    from coarse2fine.bench import speed as bench
    from coarse2fine.bench.gpu import read_json
    from coarse2fine.bench.runs import DTYPES, SampleBench, bound_record, run_sample_bench
    from coarse2fine.sampling import CTF_COARSE_DEFAULT

    preset, kind = args.item.split(":")
    dev = torch.device(size["device"])
    env = read_json(item_path(args.scratch, "env", "probe"))
    # the machine limits come from the env item; measured here only when that item failed
    bw = env.get("copy_bytes_per_s") or bench.copy_bytes_per_s(dev, mib=size["copy_mib"], seconds=size["probe_s"])
    peak = env.get("matmul_flop_per_s") or bench.matmul_flops_per_s(DTYPES[size["dtype"]], dev,
                                                                      size=size["matmul_size"], seconds=size["probe_s"])
    mode = size["compile_mode"] if kind == "compiled" else ""
    sb = SampleBench(preset=preset, fine_preset=size["fine_preset"], vq_preset=size["vq_preset"], batch=size["batch"],
                     grid=size["grid"], codebook_size=size["K"], num_coarse=size["C"], num_classes=size["num_classes"],
                     dtype=size["dtype"], weights="cast", device=size["device"], compile_mode=mode,
                     repeats=size["repeats"], warmup=size["warmup"], naive_repeats=0, mem_gbps=bw / 1e9)
    t0 = time.perf_counter()
    rec = run_sample_bench(sb)  # compile and CUDA-graph capture happen in its untimed first calls
    wall = time.perf_counter() - t0
    bound = bound_record(preset, size["fine_preset"], size["batch"], peak, bw, size["grid"], size["vq_preset"],
                         size["K"], size["C"], size["dtype"])
    w = rec["wall"]
    med, ips = w["median_s"], w["images_per_s"]
    frac = {part: bound["bound_s"][part] / med[part] for part in ("baseline", "stage1", "stage2", "decode")
            if med.get(part)}
    summary = {
        "preset": preset, "fine_preset": size["fine_preset"], "mode": mode or "eager", "dtype": size["dtype"],
        "weights": "cast", "batch": size["batch"], "tokens": rec["tokens"],
        "cfg_scale": CTF_COARSE_DEFAULT.cfg_scale,  # the pipelines' defaults, which run_sample_bench samples with
        "seconds": {k: med[k] for k in ("baseline", "stage1", "stage2", "decode") if k in med},
        "images_per_s": ips, "ratio_ctf_over_baseline": w["ratio_ctf_over_baseline"],
        "ratio_no_decode": w["ratio_no_decode"], "bound_seconds": bound["bound_s"],
        "bound_images_per_s": bound["images_per_s"], "fraction_of_bound": frac,
        "pipeline_fraction_of_bound": {"ctf": ips["ctf"] / bound["images_per_s"]["ctf"],
                                       "baseline": ips["baseline"] / bound["images_per_s"]["baseline"]},
        "bytes_per_decode_step": {k: v / rec["tokens"] for k, v in rec["bytes"].items()},
        "peak_memory_mib": {k: v.get("peak_mib") for k, v in rec["memory"].items()},
        "spread": w["spread"], "item_wall_s": wall, "limits": {"copy_bytes_per_s": bw, "matmul_flop_per_s": peak},
    }
    if mode:
        summary["compile"] = compile_counters()
    rec.pop("machine", None)  # stated once, by the env item
    return {"summary": summary, "raw": rec}


def compile_counters() -> dict:
    """Whether the compiled step really ran as CUDA graphs: dynamo's counters of this process (graphs
    compiled, graph breaks, cudagraph skips, e.g. for a mutated input). Private torch API: {} if moved."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return {}
    return {"unique_graphs": counters["stats"].get("unique_graphs", 0),
            "graph_breaks": sum(counters["graph_break"].values()),
            "cudagraph_skips": counters["inductor"].get("cudagraph_skips", 0)}


RUNNERS = {"env": run_env, "tests": run_tests, "sample": run_sample}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=sorted(RUNNERS))
    ap.add_argument("item")
    ap.add_argument("--scratch", required=True)
    ap.add_argument("--toy", action="store_true")
    ap.add_argument("--toy-compile", action="store_true")
    args = ap.parse_args(argv)
    size = size_of(args)
    if size["device"] == "cpu":
        from coarse2fine.distributed import configure_threads

        configure_threads()
    result = RUNNERS[args.phase](args, size)
    write_item(args.scratch, args.phase, args.item, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
