"""Which hues a tokenizer keeps: for each hue family (green, red, blue, yellow) the test pixels of that hue,
their mean colour before and after the tokenizer's round trip and the share still of that hue afterwards,
A diagnostic of issue 29's colour drift:
greens come back brown from the 64-px tokenizers.

    OMP_NUM_THREADS=1 python benchmarks/quality/tokenizer_hues.py [--tokenizer NAME=DIR ...] [--data emoji64]

--tokenizer defaults to the shipped emoji64 demo tokenizer. Writes benchmarks/results/tokenizer_hues/<data>.md
and .json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]


def hue_masks(x: np.ndarray) -> dict[str, np.ndarray]:
    """Pixels of a clear hue, on RGB in [0, 1]: the channel (or pair) that leads the others by a margin."""
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    return {"green": g - np.maximum(r, b) > 0.15, "red": r - np.maximum(g, b) > 0.3,
            "blue": b - np.maximum(r, g) > 0.15, "yellow": np.minimum(r, g) - b > 0.4}


def measure(tok_dir: Path, x: np.ndarray, batch: int = 64) -> dict:
    from coarse2fine.checkpoint import load_vq

    vq = load_vq(tok_dir).eval()
    with torch.no_grad():
        xt = torch.from_numpy(x).permute(0, 3, 1, 2) * 2 - 1
        y = torch.cat([vq(xt[i:i + batch])[0] for i in range(0, len(xt), batch)]).clamp(-1, 1)
        y = ((y + 1) / 2).permute(0, 2, 3, 1).numpy()
    out = {"codebook_size": vq.cfg.codebook_size, "hues": {},
           "psnr_db": float(10 * np.log10(1.0 / np.mean((x - y) ** 2))), "recon": y}
    real, rec = hue_masks(x), hue_masks(y)
    for h, m in real.items():
        out["hues"][h] = {"pixel_share": float(m.mean()), "real_mean_rgb": [round(float(v), 3) for v in x[m].mean(0)],
                          "reconstructed_mean_rgb": [round(float(v), 3) for v in y[m].mean(0)],
                          "kept": float(rec[h][m].mean())}
    return out


def main(argv=None) -> int:
    from coarse2fine.bench.speed import machine_info
    from coarse2fine.data.builtin import demo_asset_dir
    from coarse2fine.data.registry import build_dataset

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokenizer", action="append", metavar="NAME=DIR", help="a tokenizer run, named (repeatable)")
    ap.add_argument("--data", default="emoji64")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "tokenizer_hues")
    ap.add_argument("--name", default="", help="file stem of the results (default: the data set's name)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    specs = args.tokenizer or [f"shipped demo tokenizer={demo_asset_dir('emoji64') / 'tokenizer'}"]
    rows = {}
    for spec in specs:
        name, _, d = spec.partition("=")
        from coarse2fine.checkpoint import load_vq

        res = load_vq(d).cfg.image_size
        test = build_dataset(args.data, res, "test")
        x = np.stack([test.get_raw(i) for i in range(len(test))]).astype(np.float32) / 255
        rows[name] = measure(Path(d), x) | {"dir": d, "resolution": res, "images": len(x)}
    args.results.mkdir(parents=True, exist_ok=True)
    stem = args.name or args.data
    # the picture: the 10 test images with the most green pixels, then each tokenizer's reconstructions
    from coarse2fine.data.preprocess import save_grid

    greenest = np.argsort(-hue_masks(x)["green"].mean((1, 2)))[:10]
    rows_img = [x[greenest]] + [r.pop("recon")[greenest] for r in rows.values()]
    grid = torch.from_numpy(np.concatenate(rows_img)).permute(0, 3, 1, 2) * 2 - 1
    save_grid(grid, args.results / f"{stem}.png", nrow=10)
    mi = machine_info()
    (args.results / f"{stem}.json").write_text(json.dumps({"rows": rows, "machine": mi}, indent=1) + "\n")
    lines = [f"# Which hues the tokenizer keeps ({args.data} test images)", "",
             f"Command: `OMP_NUM_THREADS=1 python benchmarks/quality/tokenizer_hues.py {' '.join(sys.argv[1:])}`", "",
             "A pixel is green when G leads max(R, B) by 0.15, red when R leads by 0.3, blue when B leads by 0.15, "
             "yellow when min(R, G) leads B by 0.4 (RGB in [0, 1]). 'kept': the share of those pixels that are "
             "still of that hue after the round trip. "
             f"Machine: {mi.get('cpu')}, torch {mi.get('torch')}, fp32, one thread.", "",
             f"{stem}.png: the 10 test images with the most green pixels (top row), then each tokenizer's "
             "reconstructions in the order of the table.", "",
             "| tokenizer | test PSNR dB | hue | share of pixels | mean RGB real | mean RGB reconstructed | kept |",
             "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        for h, v in r["hues"].items():
            rgb = ["(" + ", ".join(f"{c:.2f}" for c in v[k]) + ")" for k in ("real_mean_rgb", "reconstructed_mean_rgb")]
            lines.append(f"| {name} (K = {r['codebook_size']}) | {r['psnr_db']:.2f} | {h} | {v['pixel_share']:.1%} | "
                         f"{rgb[0]} | {rgb[1]} | {v['kept']:.0%} |")
    (args.results / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
