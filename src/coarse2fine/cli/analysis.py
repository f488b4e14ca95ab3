"""`coarse2fine redundancy`: the paper's Figure 1(b) on your tokenizer."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from coarse2fine.cli._args import add_data, add_threads, kmeans_seed, positive_int, reject_unused
from coarse2fine.cli._args import check_out_path
from coarse2fine.cli.models import add_vq_preset
from coarse2fine.config import UserError


def register(sub) -> None:
    p = sub.add_parser("redundancy", help="swap codes within their clusters and measure how little the image moves "
                                          "(paper Fig. 1b), for k-means against random clusters")
    p.add_argument("--tokenizer", required=True, help="tokenizer run directory or LlamaGen VQ .pt")
    add_vq_preset(p)
    p.add_argument("--coarse-map", help="k-means CoarseMap to test (default: cluster now with --clusters)")
    p.add_argument("--clusters", type=positive_int, default=None,
                   help="clusters when clustering here (default K/32); not with --coarse-map")
    add_data(p)
    p.add_argument("--split", default="test", help="data split the images come from (default test)")
    p.add_argument("--num-images", type=positive_int, default=256, help="images to measure (default 256)")
    p.add_argument("--show", type=positive_int, default=8, help="images per row in the figure (default 8)")
    p.add_argument("--seed", type=kmeans_seed, default=0, help="seed of the image draw, the swaps and the clusterings")
    p.add_argument("--out", required=True, help="output directory (redundancy.png, redundancy.json)")
    add_threads(p)
    p.set_defaults(func=cmd_redundancy)


def cmd_redundancy(args) -> int:
    from coarse2fine.checkpoint import check_not_run_out
    from coarse2fine.eval.analysis import figure, redundancy
    from coarse2fine.cli.models import load_tokenizer_any
    from coarse2fine.data import build_dataset
    from coarse2fine.data.preprocess import save_grid
    from coarse2fine.fileio import atomic_write_bytes
    from coarse2fine.tokenizer.clustering import CoarseMap, cluster_codebook, default_num_coarse
    from coarse2fine.tokenizer.vq import codebook_fingerprint

    check_out_path(Path(args.out))
    check_not_run_out(args.out, "a redundancy folder", "redundancy would write redundancy.png and redundancy.json")
    if args.coarse_map:
        reject_unused(args, ["--clusters"], "applies when clustering here; the --coarse-map has its own count")
    vq = load_tokenizer_any(args.tokenizer, args.vq_preset)
    fp = codebook_fingerprint(vq)
    if args.coarse_map:
        km = CoarseMap.load(args.coarse_map)
        km.check_fingerprint(fp)
    else:
        km = cluster_codebook(vq.codebook_normalized(), args.clusters or default_num_coarse(vq.cfg.codebook_size),
                              "kmeans", args.seed, fp)
    rnd = cluster_codebook(vq.codebook_normalized(), km.num_coarse, "random", args.seed, fp)
    ds = build_dataset(args.data, vq.cfg.image_size, split=args.split, root=args.data_root,
                       val_fraction=args.val_fraction)
    if len(ds) == 0:
        raise UserError(f"data set {args.data} ({args.split}) is empty")
    g = torch.Generator().manual_seed(args.seed)
    idx = torch.randperm(len(ds), generator=g)[: args.num_images].tolist()
    images = torch.stack([ds[i][0] for i in idx])
    # a --coarse-map is named by the method it was made with (every map was called "kmeans"), and a random
    # one apart from the random comparison (one name for both kept a single row)
    name, rnd_name = f"{km.method}-{km.num_coarse}", f"random-{rnd.num_coarse}"
    if name == rnd_name:
        name, rnd_name = f"{name} (--coarse-map)", f"{rnd_name} (seed {args.seed})"
    stats, rows = redundancy(vq, images, {name: km, rnd_name: rnd}, args.seed)
    out = Path(args.out)
    save_grid(figure(rows, args.show), out / "redundancy.png", nrow=args.show)
    atomic_write_bytes(out / "redundancy.json", (json.dumps({"n": len(idx), **stats}, indent=1) + "\n").encode())
    print(f"{len(idx)} images of {args.data}/{args.split}; rows: {', '.join(rows)}")
    print(f"reconstruction PSNR vs original: {stats['reconstruction']['psnr_vs_original']:.2f} dB")
    for name, s in stats.items():
        if name != "reconstruction":
            print(f"{name:>14}: PSNR vs reconstruction {s['psnr_vs_reconstruction']:.2f} dB "
                  f"(vs original {s['psnr_vs_original']:.2f} dB, {100 * s['codes_changed']:.0f}% codes changed)")
    print(f"wrote {out / 'redundancy.png'} and {out / 'redundancy.json'}")
    return 0
