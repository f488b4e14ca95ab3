"""Does CTF's gain grow with the codebook? (issue 23) K = 1024, 4096, 16384 at 8x8 codes on emoji64.

At each codebook size K, with everything else equal:
- a VQ-64-f8 tokenizer (64 px -> 8x8 codes), the tokenizer study's L2 recipe, 800 steps of batch 16, seed 0
  (`tokenizer_study.py --recipes l2 --codebook-size K`): test PSNR, codebook usage;
- the redundancy check of paper Fig. 1(b) as a curve: every code of 180 test images swapped for a random
  member of its k-means cluster, at C = K/128, K/32, K/8 clusters (and random clusters at K/32), PSNR of
  the swapped decoding against the plain reconstruction;
- C = K/32 k-means clusters; the AR baseline and CTF (stage 1 + stage 2) on GPT-tiny with the CTF study's
  schedule (`ctf_study.py --data emoji64`: batch 64, lr 1e-3, cosine, 600 steps), scored with 450
  class-balanced samples: FD/KID on EfficientNet-Lite0 at 64 px against the 5,145 training images, class
  accuracy of an emoji64 classifier, held-out NLL (CTF: coarse + fine, the exact joint NLL); and the
  no-network decodings (stage 1 + the centroid's member or a random member);
- images/s of both pipelines at every K, measured side by side in one process (`--speed`).

One process per (K, seed), one thread each; every step resumes (finished runs and scores are reused):

    S=".venv/bin/python benchmarks/quality/codebook_study.py"
    $S --K 1024 --seeds 0 &  $S --K 16384 --seeds 0 &     # tokenizer, setup, redundancy, headline, members
    $S --K 4096 --seeds 0                                 # (seed 0 of a K first: it builds that K's setup)
    $S --K 1024 --seeds 1 &  $S --K 16384 --seeds 1 & ... # the spread at the smallest and largest K
    $S --speed                                            # images/s, all K, one process
    $S --cost16                                           # measured step costs of the 16x16-code, K=16384 run
    $S --report                                           # benchmarks/results/codebook_emoji64/report.md

Work dir: /work/c2f_codebook (--out); per-K study results and reports: <results>/K<k>/.
"""
from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

from coarse2fine.tokenizer.clustering import default_num_coarse  # noqa: E402

KS = (1024, 4096, 16384)
STEPS = 600
DIVISORS = (128, 32, 8)  # the redundancy curve's cluster counts, C = K / divisor
TOK_STEPS = 800


def log(msg: str) -> None:
    print(f"[codebook {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def tok_dir(out: Path, k: int) -> Path:
    return out / "tokenizers" / f"l2_K{k}_s0"


def study_args(args, k: int, phases: str, seeds: str = "0", extra: tuple[str, ...] = ()) -> list[str]:
    return ["--data", "emoji64", "--tokenizer", str(tok_dir(args.out, k)), "--out", str(args.out / f"K{k}"),
            "--results", str(args.results / f"K{k}"), "--steps", str(args.steps), "--checkpoints", str(args.steps),
            "--threads", "1", "--phases", phases, "--seeds", seeds, *extra]


def tokenizer(args, k: int) -> None:
    if (args.out / "tokenizers" / f"results_l2_K{k}_s0.json").exists():
        return
    log(f"K={k}: tokenizer ({TOK_STEPS} steps, L2 recipe)")
    cmd = [sys.executable, str(HERE / "tokenizer_study.py"), "--recipes", "l2", "--seeds", "0", "--steps",
           str(TOK_STEPS), "--codebook-size", str(k), "--out", str(args.out / "tokenizers")]
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def setup(args, k: int) -> None:
    """The K's codes, clusters and reference features; the classifier and the reference-feature cache are
    shared by every K (they do not depend on the tokenizer). A lock lets seeds of one K start together."""
    import ctf_study

    work = args.out / f"K{k}"
    work.mkdir(parents=True, exist_ok=True)
    shared = args.out / "shared"
    (shared / "feature_cache").mkdir(parents=True, exist_ok=True)
    with open(args.out / f".setup_K{k}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for name in ("classifier", "feature_cache"):
            if not (work / name).exists() and (shared / name).exists():
                (work / name).symlink_to((shared / name).resolve(), target_is_directory=True)
        if not (args.results / f"K{k}" / "results_setup.json").exists():
            ctf_study.main(study_args(args, k, "setup"))
        if not (shared / "classifier").exists():  # the first K trained it: later ones link it
            shutil.move(str(work / "classifier"), shared / "classifier")
            (work / "classifier").symlink_to((shared / "classifier").resolve(), target_is_directory=True)


def redundancy(args, k: int) -> None:
    """Fig. 1(b) as a curve over the number of clusters, on the K's own tokenizer."""
    import torch

    from coarse2fine.checkpoint import load_vq
    from coarse2fine.fileio import dump_json
    from coarse2fine.data.registry import build_dataset
    from coarse2fine.eval.analysis import redundancy as swap_psnr
    from coarse2fine.tokenizer.clustering import cluster_codebook
    from coarse2fine.tokenizer.vq import codebook_fingerprint

    dest = args.results / f"K{k}" / "redundancy.json"
    if dest.exists():
        return
    log(f"K={k}: redundancy curve")
    vq = load_vq(tok_dir(args.out, k)).eval()
    test = build_dataset("emoji64", 64, "test")
    idx = torch.linspace(0, len(test) - 1, 180).round().long()
    images = torch.stack([test[int(i)][0] for i in idx])
    maps, secs = {}, {}
    for method, d in [("kmeans", d) for d in DIVISORS] + [("random", 32)]:
        t = time.time()
        maps[f"{method}-{k // d}"] = cluster_codebook(vq.codebook_normalized(), k // d, method, 0,
                                                      codebook_fingerprint(vq))
        secs[f"{method}-{k // d}"] = time.time() - t
    stats, _ = swap_psnr(vq, images, maps, seed=0)
    for name, s in secs.items():
        stats[name]["cluster_s"] = s
    dump_json({"K": k, "n": len(idx), "stats": stats}, dest)


def speed(args, repeats: int = 5, batch: int = 64) -> None:
    """images/s of CTF and the baseline at every K (seed 0), one thread, alternating in this process."""
    import torch

    from coarse2fine.bench.speed import alternate, median
    from coarse2fine.fileio import dump_json
    from coarse2fine.pipeline import ARPipeline, CTFPipeline
    from coarse2fine.sampling import StageSampling
    from study_core import AR_OPTS, CTF_OPTS, MACHINE

    torch.set_num_threads(1)
    pipes = {}
    for k in KS:
        runs = args.out / f"K{k}" / "runs"
        c = default_num_coarse(k)
        names = {"ctf": (f"coarse_kmeans-{c}_s0", f"fine_kmeans-{c}_s0"), "baseline": ("baseline_s0",)}
        if not all((runs / n / "model.safetensors").exists() for v in names.values() for n in v):
            log(f"speed: K={k} is not trained yet; skipped")
            continue
        pipes[f"ctf/K{k}"] = CTFPipeline.from_runs(*(runs / n for n in names["ctf"]))
        pipes[f"baseline/K{k}"] = ARPipeline.from_runs(runs / names["baseline"][0])
    labels = torch.arange(batch) % 9
    s1c, s2c, s1b = (StageSampling(**CTF_OPTS["s1"]), StageSampling(**CTF_OPTS["s2"]), StageSampling(**AR_OPTS["s1"]))
    fns = {name: (lambda p=p: p(labels, s1c, s2c, seed=0)) if isinstance(p, CTFPipeline) else
           (lambda p=p: p(labels, s1b, seed=0)) for name, p in pipes.items()}
    log(f"speed: {len(fns)} pipelines, batch {batch}, {repeats} rounds after one untimed round")
    times = alternate(fns, repeats).wall
    out = {name: {"median_s": median(ts), "images_per_s": batch / median(ts), "all_s": ts}
           for name, ts in times.items()}
    dump_json({"batch": batch, "repeats": repeats, "threads": 1, "machine": MACHINE, "dtype": "float32",
               "pipelines": out, "command": "benchmarks/quality/codebook_study.py --speed"},
              args.results / "speed.json")


def cost16(args, repeats: int = 3) -> None:
    """Measured seconds per training step of the 16x16-code, K = 16384 configuration (VQ-64-f4 tokenizer,
    GPT-tiny stage 1 / stage 2 / baseline at 256 tokens), one thread, against the 8x8 K = 16384 ones."""
    import torch

    from coarse2fine.bench.runs import gpt_train_step
    from coarse2fine.bench.speed import median, tokenizer_step_seconds
    from coarse2fine.config import TrainConfig, train_recipe
    from coarse2fine.fileio import dump_json
    from coarse2fine.stages import stage_config, stage_spec
    from study_core import MACHINE

    torch.set_num_threads(1)
    res = {"tokenizer": {}, "gpt": {}}
    for preset in ("VQ-64-f8", "VQ-64-f4"):  # the study's recipe: L2 only, K = 16384
        t = tokenizer_step_seconds(preset, repeats=repeats, vq_overrides={"codebook_size": 16384},
                                   perceptual_weight=0.0, disc_weight=0.0)
        res["tokenizer"][preset] = t
        log(f"cost16: tokenizer {preset}: {t}")
    k = 16384
    c = default_num_coarse(k)
    # balanced clusters of 32 stand in for k-means ones (whose largest cluster sets the restricted head's width)
    members = torch.arange(k).view(c, k // c)
    # the CTF study's recipe (ctf_study.py: GPT-tiny's at the study's steps, batch 64, no EMA), in fp32, the
    # precision its runs recorded
    recipe = TrainConfig(**{**train_recipe("GPT-tiny", args.steps), "ema_decay": 0.0})
    for grid in (8, 16):
        for stage in ("coarse", "fine", "baseline"):
            restricted = stage_spec(stage).restricted_head  # the study trains stage 2 with the restricted head
            _, step, _, _ = gpt_train_step(stage, stage_config("GPT-tiny", stage, k, c, 9, grid), 64, "cpu", "fp32",
                                           members=members if restricted else None, train=recipe)
            times = []  # CPU seconds of this one-thread process: robust to other jobs on the box
            for r in range(repeats + 1):
                t0 = time.process_time()
                step()  # one step of the training loop (training.loop.train_step)
                if r:
                    times.append(time.process_time() - t0)
            res["gpt"][f"{stage}/{grid}x{grid}"] = median(times)
            log(f"cost16: {stage} {grid}x{grid}: {median(times):.3f} CPU-s/step")
    res.update(machine=MACHINE, threads=1, batch_gpt=64, tokenizer_steps=TOK_STEPS, gpt_steps=args.steps,
               command="benchmarks/quality/codebook_study.py --cost16")
    dump_json(res, args.results / "cost16.json")


def run_k(args, k: int, seeds: str) -> None:
    import ctf_study

    tokenizer(args, k)
    setup(args, k)
    if "0" in seeds.split(","):
        redundancy(args, k)
    ctf_study.main(study_args(args, k, "headline", seeds))
    if "0" in seeds.split(","):
        ctf_study.main(study_args(args, k, "peers", "0", ("--peers", "members")))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--K", type=int, choices=KS, help="the codebook size this process works on")
    ap.add_argument("--seeds", default="0", help="model seeds (comma list); seed 0 also runs redundancy and members")
    ap.add_argument("--steps", type=int, default=STEPS, help="training steps of every transformer")
    ap.add_argument("--out", type=Path, default=Path("/work/c2f_codebook"))
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "codebook_emoji64")
    ap.add_argument("--speed", action="store_true", help="images/s of both pipelines at every trained K")
    ap.add_argument("--cost16", action="store_true", help="step costs of the 16x16-code K=16384 configuration")
    ap.add_argument("--report", action="store_true", help="render report.md and the plots from the results")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    if args.K:
        run_k(args, args.K, args.seeds)
    if args.speed:
        speed(args)
    if args.cost16:
        cost16(args)
    if args.report or not (args.K or args.speed or args.cost16):
        import codebook_report

        codebook_report.render(args.results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
