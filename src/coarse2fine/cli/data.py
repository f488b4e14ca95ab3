"""`coarse2fine data list|show`: what data sets exist here, and what one looks like."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from coarse2fine.cli._args import check_out_path, positive_int, unit_interval_open
from coarse2fine.data import build_dataset, dataset_availability, list_datasets
from coarse2fine.data.preprocess import save_grid

FOLDER_HELP = """\
folder layout: ROOT/<class>/**/<image>. Class ids are the sorted sub-folder names.
If ROOT contains only train/ val/ test/ sub-folders, --split picks one of them ("val" and "test"
stand in for each other); otherwise ROOT has the single split "train". Unreadable files, images
with a side under 8 px or over 64 Mpx, broken links and files reached twice through links are
skipped and counted; a class folder with no usable image is an error. Symlinked folders are
followed; a link to ROOT or to a folder above itself (a cycle) is an error. Transparent images are
composited on white; grey images become RGB.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("data", help="list the data sets and preview one",
                              description="Inspect the data sets coarse2fine can train on.")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION")
    sub.required = True

    pl = sub.add_parser("list", help="names, descriptions and availability on this machine",
                        description="List every data set name with a description and whether it "
                                    "can be loaded on this machine (and how to get it if not).")
    pl.set_defaults(func=cmd_list)

    ps = sub.add_parser("show", help="class counts and a preview grid PNG of one data set",
                        description="Load a data set, print images per class and skipped files, "
                                    "and write a preview grid (one row per class).",
                        epilog=FOLDER_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    ps.add_argument("name", help="data set name (see `coarse2fine data list`) or folder:PATH")
    ps.add_argument("--data-root", default=None,
                    help="data location: folder ROOT for 'folder', IDX directory for 'fashion-mnist', "
                         "csv path for 'mnist5k'")
    ps.add_argument("--split", default="train", help="train, test (built-in) or val (folders); default train")
    ps.add_argument("--val-fraction", type=unit_interval_open, default=None,
                    help="plain image folders: the seeded fraction of each class held out as split val/test "
                         "(default 0.05)")
    ps.add_argument("--image-size", type=positive_int, default=32, help="preview image size in px (default 32)")
    ps.add_argument("--out", default="preview.png", help="PNG file to write (default preview.png)")
    ps.add_argument("--per-class", type=positive_int, default=8, help="images per row/class in the grid (default 8)")
    ps.add_argument("--max-classes", type=positive_int, default=20,
                    help="at most this many class rows in the grid (default 20; counts list all)")
    ps.add_argument("--limit-per-class", type=positive_int, default=None,
                    help="load only the first N images of each class (quick look at a big folder)")
    ps.set_defaults(func=cmd_show)


def cmd_list(args: argparse.Namespace) -> int:
    rows = []
    for name, desc in list_datasets():
        ok, where = dataset_availability(name)
        rows.append((name, "yes" if ok else "no", desc, where))
    width = max(len(r[0]) for r in rows)
    print(f"{'NAME':<{width}}  AVAILABLE  DESCRIPTION")
    for name, ok, desc, where in rows:
        print(f"{name:<{width}}  {ok:<9}  {desc}")
        print(f"{'':<{width}}  {'':<9}  -> {where}")
    return 0


def preview_indices(labels: np.ndarray, classes: int, per_class: int) -> list[list[int]]:
    """For each class < `classes`: up to per_class dataset indices spread evenly over the class."""
    rows = []
    for c in range(classes):
        idx = np.flatnonzero(labels == c)
        if len(idx) > per_class:
            idx = idx[np.linspace(0, len(idx) - 1, per_class).round().astype(int)]
        rows.append([int(i) for i in idx])
    return rows


def cmd_show(args: argparse.Namespace) -> int:
    check_out_path(args.out, kind="file", suffix=".png")
    ds = build_dataset(args.name, args.image_size, split=args.split, root=args.data_root,
                       limit_per_class=args.limit_per_class, val_fraction=args.val_fraction)
    counts = ds.class_counts()
    width = max([len(c) for c in ds.classes] + [5])
    print(f"{ds.name} split={ds.split}: {len(ds)} images, {ds.num_classes} classes, "
          f"{ds.skipped} skipped (unreadable, too small or too large, or links that loop)")
    for c, (cls, n) in enumerate(zip(ds.classes, counts)):
        print(f"  {c:>4}  {cls:<{width}}  {n}")
    shown = min(ds.num_classes, args.max_classes)
    blank = np.full((ds.resolution, ds.resolution, 3), 255, dtype=np.uint8)
    tiles = []
    for row in preview_indices(ds.labels, shown, args.per_class):
        tiles += [ds.get_raw(i) for i in row] + [blank] * (args.per_class - len(row))
    out = save_grid(np.stack(tiles), Path(args.out), nrow=args.per_class)
    more = f" (first {shown} of {ds.num_classes} classes)" if shown < ds.num_classes else ""
    print(f"wrote {out}: {shown} rows x {args.per_class} images at {ds.resolution}px{more}")
    return 0
