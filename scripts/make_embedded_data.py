#!/usr/bin/env python3
"""Regenerate the Fashion-MNIST subset embedded in the package (data set "default").

Source: the Debian package dataset-fashion-mnist (`apt-get install -y dataset-fashion-mnist`),
IDX files in /usr/share/datasets/fashion-mnist. Selection: for each class, a seeded random sample
of 1,000 of its 6,000 training images and 100 of its 1,000 test images, kept in the source order.
The .npz is written with fixed zip timestamps so the same inputs give the same bytes.

    .venv/bin/python scripts/make_embedded_data.py            # write src/coarse2fine/data/assets/
    .venv/bin/python scripts/make_embedded_data.py --check    # verify the committed file
"""
from __future__ import annotations

import argparse
import hashlib
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

from coarse2fine.data.builtin import EMBEDDED_FILE, FASHION_DEBIAN_ROOT, read_fashion_mnist

SEED = 20240601
TRAIN_PER_CLASS = 1000
TEST_PER_CLASS = 100
ASSETS = Path(__file__).resolve().parent.parent / "src" / "coarse2fine" / "data" / "assets"


def balanced_subset(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Ascending indices: `per_class` items drawn without replacement from each class 0..9."""
    picks = []
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        if len(idx) < per_class:
            sys.exit(f"class {c} has only {len(idx)} images, need {per_class}")
        picks.append(rng.choice(idx, size=per_class, replace=False))
    return np.sort(np.concatenate(picks))


def build_arrays(root: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)
    out = {}
    for split, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        images, labels = read_fashion_mnist(root, split)
        sel = balanced_subset(labels, per_class, rng)
        out[f"x_{split}"] = np.ascontiguousarray(images[sel])          # uint8 [N, 28, 28]
        out[f"y_{split}"] = labels[sel].astype(np.uint8)                # uint8 [N]
        out[f"index_{split}"] = sel.astype(np.int32)                    # position in the source file
    return out


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A compressed .npz with a fixed timestamp per member (np.savez_compressed stamps 'now')."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, arrays[name], allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, member.getvalue(), compresslevel=9)
    return buf.getvalue()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=FASHION_DEBIAN_ROOT, help="directory with the Fashion-MNIST IDX files")
    ap.add_argument("--out", default=str(ASSETS / EMBEDDED_FILE), help="output .npz path")
    ap.add_argument("--check", action="store_true", help="compare with the existing file instead of writing")
    args = ap.parse_args()
    data = npz_bytes(build_arrays(args.root))
    digest = hashlib.sha256(data).hexdigest()
    out = Path(args.out)
    if args.check:
        old = out.read_bytes() if out.is_file() else b""
        same = hashlib.sha256(old).hexdigest() == digest
        print(f"{out}: {'matches' if same else 'DIFFERS from'} the regenerated subset (sha256 {digest[:16]})")
        return 0 if same else 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    print(f"wrote {out} ({len(data) / 1e6:.2f} MB, sha256 {digest[:16]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
