"""Tokenizer quality benchmark: train the CPU preset on the embedded data, reconstruct the held-out
test split, and write benchmarks/results/tokenizer.md (command, machine, wall/CPU time, PSNR, usage).

    .venv/bin/python benchmarks/quality/tokenizer_psnr.py [--steps N] [--preset VQ-tiny] [--out DIR]

Target (issue): PSNR >= 24 dB on the test split with >= 90% of the 4096 codes in use, within
~10 CPU-minutes on a 2-core CPU. CPU time is the children's user+sys time (getrusage), which other
processes sharing the cores do not inflate; wall time is reported beside it.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(cmd: list[str], threads: int | None) -> tuple[str, float, float]:
    """Run a command; return (stdout, wall seconds, CPU seconds of the child)."""
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, env=env)
    wall = time.time() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {shlex.join(cmd)}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return proc.stdout, wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vq-preset", default="VQ-tiny", help="tokenizer architecture (default VQ-tiny)")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: the trainer's default)")
    ap.add_argument("--out", default="runs/bench_tokenizer", help="tokenizer run directory (default runs/bench_tokenizer)")
    ap.add_argument("--results", default="benchmarks/results/tokenizer.md", help="results file to append to")
    ap.add_argument("--machine", default="2-core CPU (this dev box)")
    ap.add_argument("--note", default="", help="extra line for the results file (e.g. load on the machine)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads for the child processes (OMP_NUM_THREADS; default: torch's choice). "
                         "On a box shared with other jobs, 1 avoids threads spinning while waiting for a core.")
    args = ap.parse_args()

    exe = str(Path(sys.executable).parent / "coarse2fine")
    out = Path(args.out)
    if (ROOT / out).exists():
        sys.exit(f"{out} exists; remove it or pass --out")
    train = [exe, "train-tokenizer", "--data", "default", "--vq-preset", args.vq_preset, "--out", str(out), "--no-progress"]
    if args.steps:
        train += ["--steps", str(args.steps)]
    recon = [exe, "reconstruct", "--tokenizer", str(out), "--data", "default", "--split", "test",
             "--num-shown", "64", "--out", str(out / "recon.png")]
    load_before = os.getloadavg()[0]
    _, wall, cpu = run(train, args.threads)
    load_after = os.getloadavg()[0]
    text, _, _ = run(recon, args.threads)
    psnr = float(re.search(r"PSNR ([\d.]+) dB over (\d+)", text).group(1))
    n_test = int(re.search(r"over (\d+) test images", text).group(1))
    usage = float(re.search(r"codebook usage ([\d.]+)%", text).group(1))
    used = re.search(r"\((\d+/\d+) codes\)", text).group(1)
    import torch  # for the version line only

    ok = psnr >= 24.0 and usage >= 90.0 and cpu <= 600
    lines = [
        "# Tokenizer reconstruction (CPU preset, embedded data)", "",
        f"Command: `.venv/bin/python benchmarks/quality/tokenizer_psnr.py{' --steps ' + str(args.steps) if args.steps else ''}"
        f"{' --threads ' + str(args.threads) if args.threads else ''}`",
        "", f"- train: `{shlex.join(train)}`", f"- eval: `{shlex.join(recon)}`", "",
        f"Machine: {args.machine}, torch {torch.__version__}, Python {platform.python_version()}, "
        f"{args.threads or torch.get_num_threads()} torch thread(s); "
        f"1-min load average {load_before:.1f} before / {load_after:.1f} after training "
        f"(above 2 means other jobs shared the cores and the wall time is pessimistic).", "",
        "| preset | train wall | train CPU (user+sys) | test PSNR | test codebook usage | target met |",
        "|---|---|---|---|---|---|",
        f"| {args.vq_preset} | {wall / 60:.1f} min | {cpu / 60:.1f} CPU-min | {psnr:.2f} dB ({n_test} images) "
        f"| {usage:.1f}% ({used}) | {'yes' if ok else 'no'} |", "",
        "Target: >= 24 dB PSNR (uint8, mean per image) and >= 90% of the 4096 codes used on the held-out "
        "test split, in <= ~10 CPU-minutes.",
    ]
    if args.note:
        lines += ["", args.note]
    (ROOT / args.results).parent.mkdir(parents=True, exist_ok=True)
    (ROOT / args.results).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
