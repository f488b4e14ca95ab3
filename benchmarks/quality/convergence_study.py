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
    $S --lane ctf --steps 4000 --checkpoints 250,500,1000,2000,2800,4000 &  # a longer schedule: its own
    $S --lane baseline --steps 4000 --checkpoints 250,500,1000,2000,2800,4000 &  # K16384_4000steps folders

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

from coarse2fine.tokenizer.clustering import default_num_coarse  # noqa: E402

K = 16384
C = default_num_coarse(K)  # the paper's ratio, 512
STEPS = 2000
CHECKPOINTS = (125, 250, 500, 1000, 2000)  # log-spaced: each twice the last
CLUSTER_STEPS = 600  # k-means against agglomerative clusters: a shorter schedule, the codebook study's


def log(msg: str) -> None:
    print(f"[convergence {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def work_name(args) -> str:
    """K16384 for the default schedule; a longer (or shorter) one gets its own work and results folder,
    K16384_<steps>steps, and links the default folder's setup (tokenizer, codes, classifier, maps)."""
    return f"K{K}" if args.steps == STEPS else f"K{K}_{args.steps}steps"


def study_argv(args, phases: str, extra: tuple[str, ...] = ()) -> list[str]:
    import codebook_study

    name = work_name(args)
    if name != f"K{K}":
        extra = (*extra, "--reuse-setup", str(args.out / f"K{K}"))
    return ["--data", "emoji64", "--tokenizer", str(codebook_study.tok_dir(args.out, K)),
            "--out", str(args.out / name), "--results", str(args.results / name),
            "--steps", str(args.steps), "--checkpoints", ",".join(map(str, args.checkpoints)),
            "--threads", "1", "--phases", phases, "--seeds", args.seeds, *extra]


def prepare(args) -> None:
    """The tokenizer and the study setup (codes, classifier, k-means map, reference features), built by
    the first lane to get here while the others wait. The setup runs with the lanes' own plan (the
    checkpoints are part of it): a work dir refuses a plan other than the one it was made with."""
    import codebook_study
    import ctf_study

    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / ".prepare.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        codebook_study.tokenizer(args, K)
        if not (args.results / f"K{K}" / "results_setup.json").exists():
            # the setup always lives in the default schedule's folder (its plan), longer ones link it
            default = argparse.Namespace(**{**vars(args), "steps": STEPS, "checkpoints": list(CHECKPOINTS)})
            ctf_study.main(study_argv(default, "setup"))


def cluster_swap(args, n_images: int = 180) -> None:
    """Paper Fig. 1(b) for both groupings at C = 512 on the study's tokenizer, no training: every code of
    180 test images swapped for a random member of its cluster, PSNR of the swapped decoding against the
    plain reconstruction (higher: the clusters hold codes that decode alike), and the cluster sizes."""
    import json

    import torch

    import codebook_study
    from coarse2fine.checkpoint import load_vq
    from coarse2fine.data.registry import build_dataset
    from coarse2fine.eval.analysis import redundancy
    from coarse2fine.tokenizer.clustering import CoarseMap, cluster_codebook
    from coarse2fine.tokenizer.vq import codebook_fingerprint

    vq = load_vq(codebook_study.tok_dir(args.out, K)).eval()
    maps, seconds = {}, {}
    for method in ("kmeans", "agglomerative", "random"):
        path = args.out / f"K{K}" / "maps" / f"{method}-{C}.safetensors"
        t = time.process_time()
        if path.exists():
            maps[method] = CoarseMap.load(path)
        else:
            log(f"clustering {K} codewords into {C} ({method})")
            maps[method] = cluster_codebook(vq.codebook_normalized(), C, method, 0, codebook_fingerprint(vq))
            path.parent.mkdir(parents=True, exist_ok=True)
            maps[method].save(path)
            seconds[method] = time.process_time() - t
    test = build_dataset("emoji64", 64, "test")
    idx = torch.linspace(0, len(test) - 1, n_images).round().long()
    images = torch.stack([test[int(i)][0] for i in idx])
    with torch.no_grad():
        stats, _ = redundancy(vq, images, maps, seed=0)
    for method, m in maps.items():
        stats[method] |= {"sizes": m.stats(), "cluster_cpu_s": seconds.get(method)}
    dest = args.results / f"K{K}_clusters"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "swap.json").write_text(json.dumps({"K": K, "C": C, "n_images": n_images, "stats": stats,
                                                "command": "convergence_study.py --lane cluster-swap"}, indent=1))
    log(", ".join(f"{m}: swap PSNR {stats[m]['psnr_vs_reconstruction']:.2f} dB" for m in maps))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lane", choices=("ctf", "baseline", "agglomerative", "cluster-swap"),
                    help="what this process trains (cluster-swap: k-means vs agglomerative swap PSNR, no training)")
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
        if args.lane == "cluster-swap":
            cluster_swap(args)
        elif args.lane == "agglomerative":
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
