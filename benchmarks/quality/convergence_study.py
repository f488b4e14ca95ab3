"""Does CTF's lead survive training? (issue 30) emoji64, 8x8 codes, K = 16384, C = 512, trained long.

The codebook study (codebook_study.py) compared CTF and the AR baseline after 600 steps. This driver
trains the same configuration (its L2 VQ-64-f8 tokenizer recipe at K = 16384, k-means C = K/32 = 512,
GPT-tiny for the baseline, stage 1 and stage 2, batch 64, lr 1e-3 cosine) for `--steps` steps and
scores every pipeline at log-spaced checkpoints: FD and KID (EfficientNet-Lite0, 64 px), class accuracy
(the study's emoji64 classifier), held-out NLL, training CPU-seconds. Lanes are one-thread processes:

    S=".venv/bin/python benchmarks/quality/convergence_study.py"
    $S --lane ctf --seeds 0 &  $S --lane baseline --seeds 0 &   # tokenizer + setup once (a lock), then
                                                               # CTF and the baseline side by side
    $S --lane agglomerative --seeds 0     # CTF on k-means vs average-linkage clusters (MASC), C = 512,
                                          # both at a 600-step schedule (the codebook study's length)
    $S --report                           # benchmarks/results/convergence_emoji64/report.md + plots

Every lane resumes: finished runs, checkpoints and scores are reused. Work dir: --out.
"""
from __future__ import annotations

import argparse
import fcntl
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

K = 16384
STEPS = 2000
CHECKPOINTS = (125, 250, 500, 1000, 2000)  # log-spaced: each twice the last
CLUSTER_STEPS = 600  # k-means against agglomerative clusters: a shorter schedule, the codebook study's


def log(msg: str) -> None:
    print(f"[convergence {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def study_argv(args, phases: str, extra: tuple[str, ...] = ()) -> list[str]:
    import codebook_study

    return ["--data", "emoji64", "--tokenizer", str(codebook_study.tok_dir(args.out, K)),
            "--out", str(args.out / f"K{K}"), "--results", str(args.results / f"K{K}"),
            "--steps", str(args.steps), "--checkpoints", ",".join(map(str, args.checkpoints)),
            "--threads", "1", "--phases", phases, "--seeds", args.seeds, *extra]


def prepare(args) -> None:
    """The tokenizer and the study setup (codes, classifier, k-means map, reference features), built by
    the first lane to get here while the others wait."""
    import codebook_study

    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / ".prepare.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        codebook_study.tokenizer(args, K)
        codebook_study.setup(args, K)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lane", choices=("ctf", "baseline", "agglomerative"), help="what this process trains")
    ap.add_argument("--seeds", default="0", help="model seeds (comma list)")
    ap.add_argument("--steps", type=int, default=STEPS, help="schedule length of every transformer")
    ap.add_argument("--checkpoints", default=",".join(map(str, CHECKPOINTS)),
                    help="comma list of steps at which every pipeline is scored (ends at --steps)")
    ap.add_argument("--out", type=Path, default=Path("/work/c2f_convergence"))
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "convergence_emoji64")
    ap.add_argument("--report", action="store_true", help="render report.md and the plots from the results")
    args = ap.parse_args(argv)
    args.checkpoints = sorted({int(c) for c in args.checkpoints.split(",")})
    if args.checkpoints[-1] != args.steps:
        ap.error(f"--checkpoints must end at --steps ({args.steps})")
    import torch

    torch.set_num_threads(1)
    if args.lane:
        import codebook_study
        import ctf_study

        prepare(args)
        if args.lane == "agglomerative":
            # the setup (tokenizer, codes, classifier, k-means map, features) is linked, nothing retrained
            ctf_study.main(["--data", "emoji64", "--tokenizer", str(codebook_study.tok_dir(args.out, K)), "--out", str(args.out / f"K{K}_clusters"),
                            "--results", str(args.results / f"K{K}_clusters"), "--reuse-setup",
                            str(args.out / f"K{K}"), "--steps", str(CLUSTER_STEPS), "--checkpoints",
                            str(CLUSTER_STEPS), "--threads", "1", "--phases", "headline,peers",
                            "--headline-pipelines", "ctf", "--peers", "agglomerative", "--seeds", args.seeds])
        else:
            ctf_study.main(study_argv(args, "headline", ("--headline-pipelines", args.lane)))
    if args.report or not args.lane:
        import convergence_report

        convergence_report.render(args.results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
