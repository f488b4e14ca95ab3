"""Tokenizer loss study (issue 22): L2 only vs + perceptual vs + perceptual + adversarial, at equal steps.

Each run trains `--preset` (default VQ-64-f8) on emoji64's training split with `train_tokenizer`, then
scores the 573 held-out test images: PSNR, codebook usage on the test codes, and reconstruction FD
(reconstructions against their originals on EfficientNet-Lite0 features at 64 px; the perceptual loss
runs on Lite2, so the scoring network is not the one inside the loss). Every run resumes from its last
checkpoint; a finished run's score is reused. One process per seed, one thread each:

    S=".venv/bin/python benchmarks/quality/tokenizer_study.py"
    $S --seeds 0 & $S --seeds 1 &       # train and score every recipe of that seed
    $S --report                         # table (report.md) and figure (recon.png) from the results

Results: <out>/results_<recipe>_s<seed>.json, report in benchmarks/results/tokenizer_emoji64/.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np

_OFF = dict(perceptual_weight=0.0, perceptual_depth=5, perceptual_ramp=0, colour_weight=0.0, disc_weight=0.0)
RECIPES = {  # every loss term of each recipe (everything else: the preset's recipe)
    "l2": _OFF,
    "l2+perceptual": {**_OFF, "perceptual_weight": 1.0},
    "l2+perceptual+gan": {**_OFF, "perceptual_weight": 1.0, "disc_weight": 0.5},
    # issue 29: the perceptual term smaller, ramped, or on Lite2's shallow taps only; a mean-colour term
    "l2+perceptual0.1": {**_OFF, "perceptual_weight": 0.1},
    "l2+shallow": {**_OFF, "perceptual_weight": 1.0, "perceptual_depth": 2},
    "l2+colour": {**_OFF, "colour_weight": 1.0},
    "l2+colour10": {**_OFF, "colour_weight": 10.0},
    "l2+shallow0.3+colour": {**_OFF, "perceptual_weight": 0.3, "perceptual_depth": 2, "perceptual_ramp": 200,
                             "colour_weight": 1.0},
}
ROOT = Path(__file__).resolve().parents[2]


def cpu_model() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    names = [line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")]
    return f"{names[0]} x {len(names)}" if names else platform.machine()


def cpu_flags() -> str:
    from coarse2fine.precision import cpu_info

    flags = cpu_info()[1] or frozenset()
    return ",".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags)


def run_one(recipe: str, seed: int, args) -> dict:
    import torch

    from coarse2fine.checkpoint import load_vq
    from coarse2fine.config import tokenizer_recipe
    from coarse2fine.data.registry import build_dataset
    from coarse2fine.eval.features import EffNetLite0Features, extract_features
    from coarse2fine.eval.metrics import colour_error, frechet_distance_from_features
    from coarse2fine.training.tokenizer import evaluate_reconstruction, train_tokenizer

    ktag = f"_K{args.codebook_size}" if args.codebook_size else ""
    res_path = args.out / f"results_{recipe}{ktag}_s{seed}.json"
    if res_path.exists():
        return json.loads(res_path.read_text())
    run = args.out / f"{recipe}{ktag}_s{seed}"
    arch = args.preset
    if args.codebook_size:  # the preset with another codebook size, everything else equal
        from coarse2fine.config import to_dict, vq_config

        arch = {**to_dict(vq_config(args.preset)), "codebook_size": args.codebook_size}
    train_ds = build_dataset("emoji64", 64, "train")
    cpu0 = resource.getrusage(resource.RUSAGE_SELF).ru_utime
    t0 = time.time()
    done = (run / "state.pt").exists() and torch.load(run / "state.pt", weights_only=True)["step"] >= args.steps
    if not done:
        train_tokenizer(arch, run, train_ds, tokenizer_recipe(args.preset), steps=args.steps, seed=seed,
                        dtype=args.dtype,
                        resume=(run / "state.pt").exists(), progress=False, ckpt_every=200, log_every=100,
                        **RECIPES[recipe])
    cpu_s = resource.getrusage(resource.RUSAGE_SELF).ru_utime - cpu0
    # CPU seconds of this process's training; a resumed run adds what earlier processes spent
    prior = json.loads((run / "cpu.json").read_text())["train_cpu_s"] if (run / "cpu.json").exists() else 0.0
    if not done:
        (run / "cpu.json").write_text(json.dumps({"train_cpu_s": prior + cpu_s}))
    train_cpu = prior + (cpu_s if not done else 0.0)
    vq = load_vq(run)
    test = build_dataset("emoji64", 64, "test")
    rec = evaluate_reconstruction(vq, test, keep=len(test))
    ext = EffNetLite0Features(64)
    f_orig = extract_features(ext, rec["originals"])
    f_rec = extract_features(ext, rec["recons"])
    out = {"recipe": recipe, "seed": seed, "preset": args.preset, "steps": args.steps,
           "codebook_size": vq.cfg.codebook_size,
           "train": json.loads((run / "config.json").read_text())["train"],
           "psnr_test_db": rec["psnr"], "usage_test": rec["usage"], "codes_used_test": rec["codes_used"],
           "recon_fd_lite0_64": frechet_distance_from_features(f_orig, f_rec), "n_test": rec["n"],
           **{f"colour_{k}": v for k, v in colour_error(rec["originals"].numpy(), rec["recons"].numpy()).items()},
           "train_cpu_min": train_cpu / 60, "wall_s_this_process": time.time() - t0,
           "machine": {"cpu": cpu_model(), "flags": cpu_flags(),
                       "threads": int(os.environ.get("OMP_NUM_THREADS", "0") or 0), "dtype": args.dtype},
           "command": f"benchmarks/quality/tokenizer_study.py --seeds {seed} --steps {args.steps} --recipes {recipe}"
                      + (f" --codebook-size {args.codebook_size}" if args.codebook_size else "")}
    np.savez_compressed(run / "recon_test.npz", originals=rec["originals"][:64].numpy(),
                        recons=rec["recons"][:64].numpy())
    args.out.mkdir(parents=True, exist_ok=True)
    res_path.write_text(json.dumps(out, indent=2))
    print(f"{recipe} seed {seed}: PSNR {out['psnr_test_db']:.2f} dB, recon FD {out['recon_fd_lite0_64']:.1f}, "
          f"usage {out['usage_test']:.3f}, {out['train_cpu_min']:.1f} CPU-min", flush=True)
    return out


def report(args) -> None:
    from PIL import Image

    rows = [json.loads(p.read_text()) for p in sorted(args.out.glob("results_*.json"))]
    rows = [r for r in rows if "_K" not in r["command"]]  # the codebook-size runs report elsewhere
    if not rows:
        print(f"no results in {args.out} yet")
        return
    dest = args.report_dir
    dest.mkdir(parents=True, exist_ok=True)
    r0 = rows[0]
    lines = ["# Tokenizer losses on emoji64: colour, shape and features (issues 22, 29)", "",
             f"`benchmarks/quality/tokenizer_study.py --seeds N --recipes R --steps {r0['steps']}` per run, then "
             f"`--report`. Preset {r0['preset']} (64x64 -> 8x8 codes, K = {r0['codebook_size']}), "
             f"{r0['steps']} steps of batch {r0['train']['batch_size']} on emoji64's train split (5,145 images); "
             "scores on the 573 test images:", "",
             "- PSNR of the reconstructions (dB, higher is better);",
             "- reconstruction FD: EfficientNet-Lite0 features at 64 px of the reconstructions against their "
             "originals' (the perceptual loss runs on Lite2, a sibling network; both barely see hue);",
             "- colour error: both images average-pooled to 8x8 cells (one cell per code), then the mean CIE76 "
             "ΔE in Lab (about 2.3 is a just-noticeable difference) and the mean absolute RGB difference (0-255): "
             "a colour drift that a feature metric cannot hide.", "",
             f"Machine: {r0['machine']['cpu']}, flags {r0['machine']['flags']}, dtype {r0['machine']['dtype']} "
             "(auto: bf16 autocast where the CPU has AVX512-BF16), one thread per process, other jobs sharing "
             "the two cores (train CPU-min is each run's own CPU time).", "",
             "| recipe | loss terms | seeds | PSNR dB ↑ | recon FD ↓ | ΔE (8x8) ↓ | RGB err (8x8) ↓ | test usage ↑ "
             "| train CPU-min |", "|---|---|---|---|---|---|---|---|---|"]

    def terms(r: dict) -> str:
        t = r["train"]
        out = ["L2"]
        if t.get("perceptual_weight"):
            depth = t.get("perceptual_depth", 5)
            out.append(f"perceptual {t['perceptual_weight']:g}" + (f" (taps 1-{depth})" if depth < 5 else "")
                       + (f", ramp {t['perceptual_ramp']}" if t.get("perceptual_ramp") else ""))
        if t.get("colour_weight"):
            out.append(f"colour {t['colour_weight']:g}")
        if t.get("disc_weight"):
            out.append(f"PatchGAN {t['disc_weight']:g}")
        return " + ".join(out)

    for recipe in RECIPES:
        rs = [r for r in rows if r["recipe"] == recipe]
        if not rs:
            continue

        def ms(k, fmt):
            v = np.array([r[k] for r in rs if k in r], dtype=float)
            if not len(v):
                return "-"
            return f"{v.mean():{fmt}} ± {v.std(ddof=1):{fmt}}" if len(v) > 1 else f"{v.mean():{fmt}}"
        lines.append(f"| {recipe} | {terms(rs[0])} | {','.join(str(r['seed']) for r in rs)} | "
                     f"{ms('psnr_test_db', '.2f')} | {ms('recon_fd_lite0_64', '.0f')} | {ms('colour_delta_e', '.2f')} | "
                     f"{ms('colour_rgb_abs', '.1f')} | {ms('usage_test', '.3f')} | {ms('train_cpu_min', '.1f')} |")
    lines += ["", "± is the sample standard deviation over the seeds. Per run:", ""]
    lines += [f"- {r['recipe']} seed {r['seed']}: PSNR {r['psnr_test_db']:.2f}, recon FD {r['recon_fd_lite0_64']:.1f}, "
              f"ΔE {r.get('colour_delta_e', float('nan')):.2f}, usage {r['usage_test']:.4f}, "
              f"{r['train_cpu_min']:.1f} CPU-min" for r in rows]
    # figure: 16 test images spread over the classes, then each recipe's reconstructions (seed 0)
    import torch

    from coarse2fine.checkpoint import load_vq
    from coarse2fine.data.registry import build_dataset

    test = build_dataset("emoji64", 64, "test")
    pick = np.linspace(0, len(test) - 1, 16).round().astype(int)
    raw = np.stack([test.get_raw(int(i)) for i in pick])  # [16, 64, 64, 3] uint8
    strips, shown = [raw], []
    for recipe in RECIPES:
        run = args.out / f"{recipe}_s0"
        if (run / "model.safetensors").exists() and (args.out / f"results_{recipe}_s0.json").exists():
            vq = load_vq(run).eval()
            with torch.no_grad():
                x = torch.from_numpy(raw).permute(0, 3, 1, 2).float() / 127.5 - 1
                rec = vq.decode_codes(vq.encode(x)).clamp(-1, 1)
            strips.append(((rec + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
            shown.append(recipe)
    grid = np.concatenate([np.concatenate(list(s), axis=1) for s in strips], axis=0)
    Image.fromarray(grid).save(dest / "recon.png")
    lines += ["", "recon.png: 16 test images spread over the 9 classes (top row), then the seed-0 reconstructions of "
              + ", ".join(shown) + ", one row each, in that order."]
    (dest / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--preset", default="VQ-64-f8")
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--codebook-size", type=int, help="the preset with this K instead of its own (run dirs and "
                    "results get a _K<size> tag)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "tokenizer_colour")
    ap.add_argument("--report-dir", type=Path, default=ROOT / "benchmarks" / "results" / "tokenizer_emoji64_colour")
    ap.add_argument("--report", action="store_true", help="only render the table and figure")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report:
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        for seed in [int(s) for s in args.seeds.split(",")]:
            for recipe in args.recipes.split(","):
                run_one(recipe, seed, args)
    if not args.codebook_size:
        report(args)


if __name__ == "__main__":
    main()
