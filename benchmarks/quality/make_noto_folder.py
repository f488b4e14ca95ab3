"""Sort Google's Noto emoji (npm emoji-datasource-google@16.0.0, Apache-2.0) into a class folder,
ROOT/<category>/<code point>.png, the layout `--data folder` reads: the input of folder_check.sh.

    npm pack emoji-datasource-google@16.0.0 && tar xzf emoji-datasource-google-16.0.0.tgz
    python benchmarks/quality/make_noto_folder.py package ROOT

The same images as emoji64's Noto part: the 64x64 PNGs as shipped (RGBA; the folder loader composites
them on white), one folder per Unicode category, "Component" and skin-tone variants left out.
"""
from __future__ import annotations

import json
import shutil
import sys
from collections import Counter
from pathlib import Path

from coarse2fine.data.builtin import TWEMOJI_EXCLUDED_CATEGORIES


def main(package: Path, root: Path) -> None:
    counts: Counter[str] = Counter()
    for e in json.loads((package / "emoji.json").read_text(encoding="utf-8")):
        cat, src = e.get("category"), package / "img" / "google" / "64" / e["image"]
        if not cat or cat in TWEMOJI_EXCLUDED_CATEGORIES or not e.get("has_img_google") or not src.is_file():
            continue
        dest = root / cat.replace(" & ", "_and_").replace(" ", "_") / f"{e['unified'].lower()}.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        counts[dest.parent.name] += 1
    print(f"{sum(counts.values())} images in {len(counts)} classes: " +
          ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: make_noto_folder.py PACKAGE_DIR ROOT")
    main(Path(sys.argv[1]), Path(sys.argv[2]))
