"""Fault cases of issue 20 that need no trained run: each ends in one line naming the problem and the fix,
or in correct behaviour; never a traceback, a silent wrong result, or a leftover that blocks the user.
docs/faults.md lists every fault class with its test."""
import errno
import json
import os
import pickle
import re
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from coarse2fine.checkpoint import load_torch_file, load_weights, save_weights
from coarse2fine.cli import build_parser, describe_os_error
from cli_checks import one_line_error
from coarse2fine.config import UserError
from coarse2fine.fileio import atomic_save_safetensors, atomic_write_bytes

SRC = str(Path(__file__).resolve().parents[2] / "src")


# ---- folders: run directories, images ---------------------------------------------------------------

def test_run_config_that_is_valid_json_but_not_an_object_is_one_line(tmp_path, capsys):
    run = tmp_path / "X"
    run.mkdir()
    (run / "config.json").write_text("[1, 2, 3]\n")
    one_line_error(capsys, ["sample", "--coarse", run, "--fine", run, "--device", "cpu", "--out", tmp_path / "s"],
                   "config.json holds a JSON list, not an object")


def _jpeg(path, seed):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(path, format="JPEG")


def test_truncated_jpeg_is_skipped_and_counted_not_replaced_by_another_image(tmp_path):
    from coarse2fine.data.folder import FolderDataset

    for c, name in enumerate(("a", "b")):
        (tmp_path / name).mkdir()
        for i in range(2):
            _jpeg(tmp_path / name / f"{i}.jpg", c * 2 + i)
    cut = tmp_path / "a" / "1.jpg"
    data = cut.read_bytes()
    cut.write_bytes(data[:len(data) // 2])  # a copy cut short: headers intact, half the scan data
    ds = FolderDataset(tmp_path, 16, val_fraction=0.0)
    assert ds.skipped == 1 and len(ds) == 3 and cut not in ds.paths
    assert ds.class_counts().tolist() == [1, 2]


def test_unreadable_class_folder_is_a_permission_error_not_an_empty_class(tmp_path, monkeypatch):
    from coarse2fine.data.folder import FolderDataset

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        _jpeg(tmp_path / name / "0.jpg", 100)
    locked = tmp_path / "b"
    locked.chmod(0)
    try:
        if os.geteuid() == 0:  # root reads a mode-000 folder anyway: refuse it as the kernel would a user
            real = os.scandir

            def scandir(path="."):
                if Path(path) == locked:
                    raise PermissionError(errno.EACCES, "Permission denied", str(path))
                return real(path)
            monkeypatch.setattr(os, "scandir", scandir)
        with pytest.raises(UserError, match=r"cannot read the folder .*/b: permission denied; .*chmod"):
            FolderDataset(tmp_path, 16, val_fraction=0.0)
    finally:
        locked.chmod(0o755)


# ---- checkpoints ---------------------------------------------------------------------------------------

def test_flipped_bytes_in_a_weight_file_are_detected_and_the_check_can_be_skipped(tmp_path, monkeypatch):
    sd = {"w": torch.randn(64, 64), "b": torch.arange(10, dtype=torch.int64), "s": torch.tensor(2.0)}
    p = tmp_path / "model.safetensors"
    save_weights(sd, p)
    assert all(torch.equal(load_weights(p)[k], v) for k, v in sd.items())
    raw = bytearray(p.read_bytes())
    header = 8 + int.from_bytes(raw[:8], "little")
    raw[header + 1000:header + 1004] = bytes(255 - b for b in raw[header + 1000:header + 1004])  # inside "w"
    p.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="is damaged: its tensors do not match the checksum"):
        load_weights(p)
    monkeypatch.setenv("COARSE2FINE_SKIP_CHECKSUM", "1")
    assert not torch.equal(load_weights(p)["w"], sd["w"])  # skipped: the damaged values load


def test_a_damaged_coarse_map_is_detected(tmp_path):
    from coarse2fine.tokenizer.clustering import CoarseMap, cluster_codebook

    p = tmp_path / "coarse_map.safetensors"
    cluster_codebook(torch.randn(64, 4, generator=torch.Generator().manual_seed(0)), 8, "kmeans", 0, "fp").save(p)
    CoarseMap.load(p)
    raw = bytearray(p.read_bytes())
    raw[-3] ^= 0xFF  # inside the last tensor's data
    p.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="is damaged"):
        CoarseMap.load(p)


def test_weight_files_written_by_other_tools_still_load(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.ones(3)}, str(tmp_path / "m.safetensors"))  # no digest in its metadata
    assert torch.equal(load_weights(tmp_path / "m.safetensors")["w"], torch.ones(3))


KILL_DURING_WRITE = """
import os, sys, torch
from coarse2fine import fileio
os.replace = lambda *a: os._exit(9)  # killed after the temp file is written, before it is renamed
fileio.atomic_save_safetensors({"w": torch.ones(1000)}, sys.argv[1])
"""


def test_temp_file_of_a_killed_weights_write_is_removed_by_the_next_write(tmp_path):
    p = tmp_path / "model.safetensors"
    atomic_save_safetensors({"w": torch.zeros(3)}, p)
    r = subprocess.run([sys.executable, "-c", KILL_DURING_WRITE, str(p)], env={**os.environ, "PYTHONPATH": SRC},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 9, r.stderr
    left = [f.name for f in tmp_path.iterdir() if f.name.endswith(".tmp")]
    assert len(left) == 1 and left[0].startswith(".model.safetensors."), left
    assert torch.equal(load_weights(p)["w"], torch.zeros(3))  # the old file stays whole
    atomic_save_safetensors({"w": torch.ones(3)}, p)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["model.safetensors"]


def test_temp_files_of_a_live_writer_are_left_alone(tmp_path):
    from coarse2fine.fileio import remove_stale_temp_files

    live = tmp_path / f".x.json.{os.getppid()}.abcdefgh.tmp"  # the parent of this process: alive
    live.write_text("{}")
    atomic_write_bytes(tmp_path / "x.json", b"{}")
    assert live.exists() and remove_stale_temp_files(tmp_path) == []


def test_plain_pickle_is_one_line_without_torchs_warning(tmp_path):
    p = tmp_path / "weights.pkl"
    p.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(UserError, match="is a plain pickle, not a torch.save checkpoint"):
            load_torch_file(p)
    assert not seen, [str(w.message) for w in seen]


def test_import_llamagen_names_a_directory_as_such(tmp_path, capsys):
    (tmp_path / "vq").mkdir()
    one_line_error(capsys, ["import-llamagen", "--vq", tmp_path / "vq", "--out", tmp_path / "o"],
                   "is a directory; pass the checkpoint file itself")


def test_small_tokenizer_file_is_imported_at_its_own_size(tmp_path, caplog):
    from coarse2fine.apps.llamagen import import_llamagen
    from coarse2fine.checkpoint import load_vq
    from coarse2fine.config import vq_config
    from coarse2fine.tokenizer.vq import VQModel

    f = tmp_path / "vq_tiny.pt"
    torch.save({"model": VQModel(vq_config("VQ-tiny")).state_dict()}, f)
    done = import_llamagen(tmp_path / "a", vq=f, vq_preset="VQ-tiny")  # no --image-size: the preset's 32 px
    assert load_vq(done["tokenizer"]).cfg.image_size == 32
    with caplog.at_level("WARNING", logger="coarse2fine.import"):
        done = import_llamagen(tmp_path / "b", vq=f, vq_preset="VQ-tiny", image_size=256)
    assert load_vq(done["tokenizer"]).cfg.image_size == 256  # asked for: allowed, but said
    assert re.search(r"--image-size 256: .* was trained at 32 px", caplog.text), caplog.text


# ---- sampling values, samples ----------------------------------------------------------------------------

def test_empty_classes_names_no_class():
    from coarse2fine.cli.models import parse_classes

    with pytest.raises(UserError, match="names no class"):
        parse_classes("", 10, 1)
    assert parse_classes(None, 3, 1).tolist() == [0, 1, 2]


def _samples(out, seed, n=6):
    from coarse2fine.data.sample_folder import write_folder

    g = torch.Generator().manual_seed(seed)
    write_folder(torch.randint(0, 256, (n, 8, 8, 3), generator=g, dtype=torch.uint8),
                 torch.arange(n) % 3, out)


def test_eval_refuses_an_npz_swapped_in_from_another_run(tmp_path):
    from coarse2fine.data.sample_folder import read_samples

    _samples(tmp_path / "a", 0)
    _samples(tmp_path / "b", 1)
    images, labels, _ = read_samples(tmp_path / "a")  # the folder's own npz: fine
    assert images.shape == (6, 8, 8, 3)
    (tmp_path / "a" / "samples.npz").write_bytes((tmp_path / "b" / "samples.npz").read_bytes())
    with pytest.raises(UserError, match=r"samples.npz does not belong to the PNGs beside it \(image 0 differs"):
        read_samples(tmp_path / "a")


def test_truncated_samples_npz_is_one_line(tmp_path, capsys):
    _samples(tmp_path / "d", 0)
    npz = tmp_path / "d" / "samples.npz"
    npz.write_bytes(npz.read_bytes()[:300])
    one_line_error(capsys, ["eval", "--samples", tmp_path / "d", "--device", "cpu"],
                   "cannot read samples", "BadZipFile", "sample it again")


# ---- disk ----------------------------------------------------------------------------------------------

def test_full_disk_error_names_the_file(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", full)
    target = tmp_path / "run" / "config.json"
    with pytest.raises(OSError) as e:
        atomic_write_bytes(target, b"{}")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(target)
    assert describe_os_error(e.value) == f"No space left on device: {target}; free some space or write to another --out"
    assert list((tmp_path / "run").iterdir()) == []  # no temp file left


# ---- the command line, the page ------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["eval", "train-classifier", "import-llamagen", "extract-codes-imagenet",
                                     "sample-fid"])
def test_help_states_each_default_once(command):
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    entries = re.split(r"\n  (?=-)", sub.format_help())
    for entry in entries:
        flat = " ".join(entry.split())
        assert flat.count("(default") <= 1 and "(default: None)" not in flat, flat


def test_app_on_a_busy_port_is_one_line_naming_the_flag_before_anything_is_printed(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out, err = one_line_error(capsys, ["app", "--port", port, "--device", "cpu"],
                                  f"--port {port}: 127.0.0.1:{port} is already in use", "pass another --port")
    assert "GRADIO_SERVER_PORT" not in err and "open http" not in out


def test_digest_is_in_the_safetensors_metadata(tmp_path):
    from safetensors import safe_open

    from coarse2fine.fileio import DIGEST_KEY

    atomic_save_safetensors({"w": torch.ones(2)}, tmp_path / "m.safetensors", metadata={"kind": "x"})
    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as f:
        meta = f.metadata()
    assert meta["kind"] == "x" and re.fullmatch(r"[0-9a-f]{64}", meta[DIGEST_KEY])
    assert json.dumps(meta)  # plain strings only, as safetensors requires
