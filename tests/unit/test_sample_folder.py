"""The samples folder (data/sample_folder.py): both writers give a folder the one reader accepts, and the reader
refuses a folder whose npz does not hold EVERY PNG beside it."""
import numpy as np
import pytest
import torch

from coarse2fine.config import UserError
from coarse2fine.data.sample_folder import (NPZ, owned_files, png_name, read_samples, write_adm_npz, write_folder,
                                       write_png)

N = 20  # with 8 PNGs spread over 20 (the old check), index 9 was never looked at


def _images(seed: int, n: int = N) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 8, 8, 3), generator=g, dtype=torch.uint8).numpy()


def _labels(n: int = N) -> np.ndarray:
    return np.arange(n, dtype=np.int64) % 4


def test_whole_folder_round_trip_and_names(tmp_path):
    write_folder(_images(0), _labels(), tmp_path / "s", nrow=4)
    images, labels, note = read_samples(tmp_path / "s")
    assert np.array_equal(images, _images(0)) and labels.tolist() == _labels().tolist()
    assert "samples.npz" in note
    names = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert names == sorted([png_name(i, i % 4) for i in range(N)] + ["grid.png", NPZ])
    with np.load(tmp_path / "s" / NPZ) as z:
        assert z["png_sha256"].shape == (N, 32)


def test_one_png_swapped_in_the_middle_is_refused(tmp_path):
    """Issue 33 case 7: a PNG from another run (same name, same label) replaces sample 9 of 20."""
    write_folder(_images(0), _labels(), tmp_path / "a")
    write_folder(_images(1), _labels(), tmp_path / "b")
    name = png_name(9, 9 % 4)
    (tmp_path / "a" / name).write_bytes((tmp_path / "b" / name).read_bytes())
    with pytest.raises(UserError, match=rf"does not belong to the PNGs beside it \(image 9 differs from {name}"):
        read_samples(tmp_path / "a")


def test_an_npz_without_digests_is_checked_pixel_for_pixel(tmp_path):
    """Older folders (and other tools) have no png_sha256: every PNG is compared with its npz image."""
    write_folder(_images(0), _labels(), tmp_path / "a")
    write_folder(_images(1), _labels(), tmp_path / "b")
    np.savez(tmp_path / "a" / NPZ, arr_0=_images(0), labels=_labels())  # as older versions wrote it
    assert np.array_equal(read_samples(tmp_path / "a")[0], _images(0))
    name = png_name(9, 9 % 4)
    (tmp_path / "a" / name).write_bytes((tmp_path / "b" / name).read_bytes())
    with pytest.raises(UserError, match=r"image 9 differs"):
        read_samples(tmp_path / "a")


def test_streaming_writer_gives_the_same_npz_the_reader_checks(tmp_path):
    """sample-fid's layout: OUT/samples/*.png written one by one, OUT/samples.npz streamed from them."""
    out, images, labels = tmp_path / "fid", _images(2), _labels()
    (out / "samples").mkdir(parents=True)
    paths = [out / "samples" / png_name(i, int(lab)) for i, lab in enumerate(labels)]
    for p, img in zip(paths, images):
        write_png(p, img)
    assert write_adm_npz(paths, labels, out / NPZ) == (N, 8, 8)
    got, got_labels, _ = read_samples(out)
    assert np.array_equal(got, images) and np.array_equal(got_labels, labels)
    with np.load(out / NPZ) as z:  # the ADM evaluator's keys are there as before
        assert np.array_equal(z["arr_0"], images) and np.array_equal(z["labels"], labels)
    write_png(paths[13], _images(3)[13])
    with pytest.raises(UserError, match=r"image 13 differs"):
        read_samples(out)


def test_ownership_check(tmp_path):
    out = tmp_path / "s"
    assert owned_files(out) == []
    write_folder(_images(0, 3), _labels(3), out)
    assert sorted(p.name for p in owned_files(out)) == sorted([png_name(i, i) for i in range(3)] + ["grid.png", NPZ])
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="1 file.* that `sample` did not write \\(e.g. notes.txt\\)"):
        owned_files(out)
