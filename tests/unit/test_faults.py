"""Fault cases of issue 20 that need no trained run: each ends in one line naming the problem and the fix,
or in correct behaviour; never a traceback, a silent wrong result, or a leftover that blocks the user.
docs/faults.md lists every fault class with its test."""
import copy
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


@pytest.mark.parametrize("spec, where", [("1,,2", "between two commas"), ("1, ,2", "between two commas"),
                                         (",1", "before the first comma"), ("1,2,", "after the last comma")])
def test_an_empty_entry_in_classes_is_named_not_dropped(spec, where):
    """`sample --classes 1,,2` sampled classes 1 and 2 without a word: the id meant between the commas was lost."""
    from coarse2fine.cli.models import parse_classes

    with pytest.raises(UserError, match=f"--classes '{spec}' has an empty entry {where}; remove the extra comma"):
        parse_classes(spec, 10, 1)
    assert parse_classes(" 1 , 2", 10, 2).tolist() == [1, 1, 2, 2]  # spaces around an id are fine


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


# ---- issue 33: run configs checked at load, failures that leave nothing behind, warnings ------------------

def _gpt_run_config(run, **edit):
    """A stage run's config.json (no weights: the checks come first), with `edit` applied."""
    from coarse2fine.config import TrainConfig, gpt_config, to_dict

    meta = {"format": "coarse2fine", "format_version": 1, "kind": "gpt", "stage": "coarse",
            "gpt": to_dict(gpt_config("GPT-tiny")), "train": to_dict(TrainConfig()), "codes": {"dir": "codes"}}
    meta.update(edit)
    meta = {k: v for k, v in meta.items() if v is not Ellipsis}
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text(json.dumps(meta))
    return run


@pytest.mark.parametrize("edit, needle", [
    ({"gpt": ...}, "config.json has no 'gpt' section (a gpt run needs it)"),  # was: KeyError: 'gpt'
    ({"gpt": "x"}, "'gpt' must be a JSON object, got str 'x'"),  # was: unknown GPTConfig field(s) ['x']
    ({"gpt": {"dim": "wide"}}, "GPTConfig dim must be an integer, got 'wide'"),
])
def test_a_run_config_is_checked_against_its_schema_at_load(tmp_path, capsys, edit, needle):
    run = _gpt_run_config(tmp_path / "c", **edit)
    one_line_error(capsys, ["sample", "--coarse", run, "--fine", run, "--device", "cpu", "--out", tmp_path / "s"],
                   needle, "restore")
    assert not (tmp_path / "s").exists()  # the failed command leaves no output folder behind


def test_resume_with_a_mistyped_setting_is_refused_before_anything_is_written(tmp_path, capsys):
    from coarse2fine.config import TrainConfig, to_dict

    run = _gpt_run_config(tmp_path / "r", train={**to_dict(TrainConfig()), "lr": "fast"})
    before = (run / "config.json").read_bytes()
    out, _ = one_line_error(capsys, ["train", "--resume", "--out", run, "--steps", "2000", "--device", "cpu",
                                     "--no-progress"], "'train': TrainConfig lr must be a number, got 'fast'")
    assert "extending" not in out and (run / "config.json").read_bytes() == before  # was: a history entry


def test_a_seed_out_of_range_is_one_line(tmp_path, capsys):
    from coarse2fine.cli import main
    from coarse2fine.pipeline import _generator

    with pytest.raises(SystemExit) as e:  # argparse's one line (was: Overflow when unpacking long long)
        main(["sample", "--baseline", str(tmp_path), "--seed", str(2 ** 64), "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert "argument --seed: must be an integer from 0 to 9223372036854775807" in err
    with pytest.raises(UserError, match="seed must be an integer from 0 to"):
        _generator(2 ** 64, torch.device("cpu"))  # the API, too


@pytest.mark.parametrize("command", [["cluster", "--tokenizer", "tok", "--out", "m"],
                                     ["redundancy", "--tokenizer", "tok", "--out", "r"], ["demo", "--quick"]])
def test_a_seed_k_means_cannot_take_is_one_line_before_any_work(capsys, command):
    """`cluster --seed 4294967296` (any seed from 2^32 up; `redundancy` and `demo` cluster with theirs) was taken,
    then scikit-learn's InvalidParameterError ("The 'random_state' parameter of KMeans must be an int in the range
    [0, 4294967295]") as a traceback: after the tokenizer was loaded, or the demo's codes extracted."""
    from coarse2fine.cli import main
    from coarse2fine.tokenizer.clustering import cluster_codebook

    with pytest.raises(SystemExit) as e:
        main([*command, "--seed", str(2 ** 32)])
    out, err = capsys.readouterr()
    assert e.value.code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert "argument --seed: must be an integer from 0 to 4294967295, got '4294967296'" in err
    cw = np.random.default_rng(0).normal(size=(16, 4))
    for seed in (2 ** 32, -1, 2.0):  # the API, too; the largest seed k-means takes is taken
        with pytest.raises(UserError, match=re.escape(f"seed must be an integer from 0 to 4294967295 (the seeds "
                                                      f"scikit-learn's k-means takes), got {seed!r}")):
            cluster_codebook(cw, 4, seed=seed)
    assert cluster_codebook(cw, 4, seed=2 ** 32 - 1).seed == 2 ** 32 - 1


@pytest.mark.parametrize("seed", ["-1", str(2 ** 64)])
def test_a_train_seed_out_of_range_is_one_line(tmp_path, capsys, seed):
    """`train --seed -1` ended in numpy's "expected non-negative integer", `--seed 18446744073709551616` in torch's
    "Overflow when unpacking long long", as tracebacks: its flag took any int, where every other --seed is checked."""
    from coarse2fine.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train", "--stage", "baseline", "--codes", str(tmp_path / "codes"), "--preset", "GPT-tiny", "--seed", seed,
              "--device", "cpu", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"argument --seed: must be an integer from 0 to 9223372036854775807, got '{seed}'" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("preset, layers, most", [("VQ-tiny", 4, 3), ("VQ-tiny", 8, 3), ("VQ-64-f8", 5, 4)])
def test_a_discriminator_too_deep_for_the_images_is_refused_before_the_run_starts(tmp_path, capsys, preset, layers,
                                                                                   most):
    from coarse2fine.tokenizer.discriminator import PatchDiscriminator

    out = tmp_path / "tok"
    one_line_error(capsys, ["train-tokenizer", "--data", "default", "--limit-per-class", "1", "--vq-preset", preset,
                            "--steps", "1", "--disc-weight", "0.5", "--disc-layers", layers, "--out", out,
                            "--device", "cpu", "--no-progress"],
                   f"--disc-layers {layers}", f"use --disc-layers {most} or fewer")
    assert not out.exists()  # was: a RuntimeError from the convolution, after the run directory was made
    size = 64 if preset == "VQ-64-f8" else 32
    disc = PatchDiscriminator(4, most).eval()
    assert disc(torch.zeros(1, 3, size, size)).shape[-1] == PatchDiscriminator.patch_grid(size, most) >= 1


def test_a_tokenizer_run_that_fails_at_step_0_leaves_no_folder(tmp_path, monkeypatch):
    from coarse2fine.cli import main
    from coarse2fine.training import tokenizer as tok_train

    def crash(*a, **kw):
        raise RuntimeError("boom at step 0")
    monkeypatch.setattr(tok_train, "fit", crash)
    out = tmp_path / "runs" / "tok"
    with pytest.raises(RuntimeError, match="boom"):
        main(["train-tokenizer", "--data", "default", "--limit-per-class", "1", "--vq-preset", "VQ-tiny", "--steps",
              "1", "--batch-size", "4", "--out", str(out), "--device", "cpu", "--no-progress"])
    assert not (tmp_path / "runs").exists()  # was: config.json, an empty metrics.jsonl and .lock


def test_a_failed_write_keeps_a_folder_that_existed_or_holds_a_checkpoint(tmp_path):
    from coarse2fine.fileio import DirLock

    old = tmp_path / "old"
    old.mkdir()
    with pytest.raises(RuntimeError), DirLock(old, clean_failed=()):
        raise RuntimeError
    assert old.is_dir()  # not ours: kept
    new = tmp_path / "new"
    with pytest.raises(RuntimeError), DirLock(new, clean_failed=("state.pt",)):
        (new / "state.pt").write_text("x")
        raise RuntimeError
    assert (new / "state.pt").exists()  # something to resume from: kept


WORKER = """
import os, sys, time
from coarse2fine.apps.demo_stages import exit_with_parent
exit_with_parent(int(sys.argv[1]), poll_s=0.1)
print(os.getpid(), flush=True)
time.sleep(60)
"""
PARENT = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], str(__import__("os").getpid())], stdout=subprocess.PIPE,
                         text=True)
print(child.stdout.readline().strip(), flush=True)
child.wait()
"""


def test_demo_workers_end_when_the_demo_is_killed(tmp_path):
    import signal
    import time

    import coarse2fine

    src = str(Path(coarse2fine.__file__).parents[1])  # the code under test, wherever it was imported from
    parent = subprocess.Popen([sys.executable, "-c", PARENT, WORKER], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": src})
    child = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)  # the demo killed with -9: no chance to stop its workers
    parent.wait()

    def alive(pid):
        try:
            return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] not in ("Z", "X")
        except FileNotFoundError:
            return False
    deadline = time.time() + 20
    while alive(child) and time.time() < deadline:
        time.sleep(0.1)
    assert not alive(child)  # was: it trained on to the end


def test_a_val_split_of_single_image_classes_says_why_it_is_empty(tmp_path):
    from coarse2fine.data.folder import FolderDataset

    for c, name in enumerate(("a", "b")):
        (tmp_path / name).mkdir()
        _jpeg(tmp_path / name / "0.jpg", c)
    with pytest.raises(UserError, match="every class has a single image") as e:
        FolderDataset(tmp_path, 16, split="val", val_fraction=0.05)
    assert "use a fraction > 0" not in str(e.value)  # was: advised the fraction already in use


def test_a_val_split_missing_a_class_is_warned_about(tmp_path, caplog):
    from coarse2fine.data.folder import FolderDataset

    for c, (name, n) in enumerate((("a", 4), ("b", 1))):
        (tmp_path / name).mkdir()
        for i in range(n):
            _jpeg(tmp_path / name / f"{i}.jpg", 10 * c + i)
    with caplog.at_level("WARNING", logger="coarse2fine.data"):
        ds = FolderDataset(tmp_path, 16, split="val", val_fraction=0.5)
    assert ds.class_counts().tolist() == [2, 0]
    assert "has no image of 1 class(es) (e.g. 'b')" in caplog.text


def test_a_class_folder_linked_to_another_is_warned_about(tmp_path, caplog):
    from coarse2fine.data.folder import FolderDataset

    (tmp_path / "cat").mkdir()
    _jpeg(tmp_path / "cat" / "0.jpg", 0)
    (tmp_path / "dog").symlink_to(tmp_path / "cat")
    with caplog.at_level("WARNING", logger="coarse2fine.data"):
        FolderDataset(tmp_path, 16, val_fraction=0.0)
    assert "class folders cat and dog are the same folder (dog links to it)" in caplog.text


@pytest.mark.parametrize("name, size, word", [("default", 64, "upsampled 2.3x"), ("emoji64", 32, "downsampled 2.0x")])
def test_data_resampled_by_a_large_factor_is_warned_about(caplog, name, size, word):
    from coarse2fine.data import build_dataset
    from coarse2fine.data.datasets import warn_resampled

    with caplog.at_level("WARNING", logger="coarse2fine.data"):
        assert warn_resampled(build_dataset(name, size, limit_per_class=1))
        assert not warn_resampled(build_dataset("default", 32, limit_per_class=1))  # 28 -> 32 px: the usual
    assert word in caplog.text and caplog.text.count("WARNING") == 1


def test_a_discriminator_that_never_starts_is_warned_about(caplog):
    from coarse2fine.training.tokenizer import _resolve

    with caplog.at_level("WARNING", logger="coarse2fine.train"):
        _resolve("VQ-tiny", None, {"steps": 100, "disc_weight": 0.5, "disc_start": 100})
    assert "--disc-start 100 is at or beyond --steps 100: the discriminator never trains" in caplog.text


def test_a_one_cluster_map_has_no_nan_and_no_warning(capsys):
    from coarse2fine.tokenizer.clustering import cluster_codebook

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # was: torch's degrees-of-freedom warning, then "std nan"
        st = cluster_codebook(torch.nn.functional.normalize(torch.randn(2, 4), dim=1), 1).stats()
    assert st["std_size"] == 0.0 and st["clusters"] == 1


def test_a_numpy_codebook_is_clustered_and_one_that_is_no_table_is_one_line():
    """cluster_codebook(np.load("codebook.npy"), 4) ended in "TypeError: 'int' object is not callable" (a numpy
    array's size is no method); a 3-D array, or one holding nan, in scikit-learn's ValueError."""
    from coarse2fine.tokenizer.clustering import cluster_codebook

    cw = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
    assert cluster_codebook(cw, 4).digest == cluster_codebook(torch.from_numpy(cw), 4).digest
    nan = cw.copy()
    nan[3, 1] = np.nan
    for bad, got in ((cw[:, :, None], "shape [32, 4, 1]"), (nan, "nan or inf values"),
                     (cw > 0, "torch.bool values"), ("codebook.npy", "values that are not numbers")):
        with pytest.raises(UserError, match=re.escape("codewords must be a [K, D] table of finite numbers, one row "
                                                      f"per code (e.g. vq.codebook_normalized()); got {got}")):
            cluster_codebook(bad, 4)


def test_code_ids_a_coarse_map_does_not_have_are_one_line():
    """CoarseMap.coarse_of(-1) returned the last code's cluster (phi[-1]) without a word; an id of K or more was
    torch's IndexError, float ids its "tensors used as indices must be long" IndexError, an int or list an
    AttributeError ("'int' object has no attribute 'device'")."""
    from coarse2fine.tokenizer.clustering import cluster_codebook

    cmap = cluster_codebook(torch.nn.functional.normalize(torch.randn(16, 4), dim=1), 4)
    for codes in (torch.tensor([[3, -1]]), [16], -2):
        with pytest.raises(UserError, match=re.escape("fine code ids must be in 0..15 (the codes of the map's "
                                                      "codebook), got [")):
            cmap.coarse_of(codes)
    with pytest.raises(UserError, match=re.escape("fine code ids must be integers, got torch.float32 values")):
        cmap.coarse_of(torch.tensor([1.0, 2.0]))
    assert cmap.coarse_of(np.array([0, 15])).tolist() == cmap.phi[[0, 15]].tolist() == cmap.coarse_of([0, 15]).tolist()
    assert int(cmap.coarse_of(5)) == int(cmap.phi[5])


def test_an_export_given_as_a_coarse_map_names_its_coarse_map(tmp_path, capsys):
    """`train --coarse-map EXP` (or `redundancy --coarse-map EXP`) of an exported pipeline said "coarse map
    EXP/coarse_map.safetensors not found; create it with `coarse2fine cluster`", of a folder that holds one."""
    from fakes import make_store
    from coarse2fine.tokenizer.clustering import CoarseMap

    exp = tmp_path / "release"
    (exp / "coarse_map").mkdir(parents=True)
    (exp / "model_index.json").write_text("{}")
    one_line_error(capsys, ["train", "--stage", "coarse", "--codes", make_store(tmp_path / "codes"), "--coarse-map", exp,
                            "--preset", "GPT-tiny", "--steps", "1", "--device", "cpu", "--out", tmp_path / "r"],
                   f"{exp} is an exported pipeline folder, not a coarse map; pass its coarse map, {exp / 'coarse_map'}")
    assert not (tmp_path / "r").exists()
    (exp / "coarse_map").rmdir()
    with pytest.raises(UserError, match="it holds no coarse map \\(a baseline export\\)"):
        CoarseMap.load(exp)


def test_a_fractional_limit_per_class_from_python_is_one_line():
    """build_dataset("default", 32, limit_per_class=2.5) ended in numpy's "slice indices must be integers" TypeError
    (a string in a comparison's); the CLI's --limit-per-class takes integers only."""
    from coarse2fine.data import build_dataset

    for limit in (2.5, "2"):
        with pytest.raises(UserError, match=re.escape(f"limit_per_class must be an integer >= 1, got {limit!r}")):
            build_dataset("default", 32, "train", limit_per_class=limit)
    assert len(build_dataset("default", 32, "train", limit_per_class=np.int64(1))) == 10  # numpy's integers are taken


def test_saving_a_pipeline_onto_a_file_says_it_is_a_file(tmp_path):
    from coarse2fine.release import check_fresh

    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder"):  # was: "is not empty"
        check_fresh(tmp_path / "f")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / ".lock").write_text("123\n")  # left by a killed command; nobody holds it
    assert check_fresh(tmp_path / "d") == tmp_path / "d"


def _shapes(n: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def test_a_cache_folder_that_is_a_file_is_named_and_a_failed_cache_write_keeps_the_scores(tmp_path, monkeypatch):
    """COARSE2FINE_CACHE set to a file failed after the reference features were computed ("File exists:
    FILE; choose another path", naming neither the variable nor the cache), and any failed cache write
    threw the scores away."""
    from coarse2fine.eval.samples import evaluate_images

    (tmp_path / "a_file").write_text("x")
    quiet = dict(ref_count=20, kid_subsets=2, log=lambda s: None)
    monkeypatch.setenv("COARSE2FINE_CACHE", str(tmp_path / "a_file"))
    with pytest.raises(UserError, match=r"COARSE2FINE_CACHE=.*a_file is a file, not a folder; .*--no-cache"):
        evaluate_images(_shapes(4), None, "default", **quiet)
    lines = []
    res = evaluate_images(_shapes(4), None, "default", **{**quiet, "log": lines.append},
                          cache_dir=tmp_path / "a_file" / "sub")  # cannot be made: a warning, the scores stay
    assert res["rows"][0]["metric"].startswith("FD-") and res["reference"]["cache"] is None
    assert any(line.startswith("reference features not cached: ") and "--cache-dir" in line for line in lines)


def test_too_few_balanced_samples_suggest_one_per_class():
    from coarse2fine.apps.sample_fid import class_schedule

    with pytest.raises(UserError, match=r"use 10 \(one per class\) or more$"):  # was "use 10 or 10"
        class_schedule(5, 10)
    with pytest.raises(UserError, match=r"use 20 or 30$"):
        class_schedule(25, 10)


@pytest.mark.parametrize("bench", [["sample", "--naive-repeats", "0"], ["train", "--parts", "coarse"]])
def test_bench_with_more_clusters_than_codes_is_one_line(capsys, bench):
    """bench sample --clusters C > K ended in random_members' shape error; bench train timed a stage-1
    head of C > K classes without a word."""
    one_line_error(capsys, ["bench", *bench, "--preset", "GPT-tiny", "--vq-preset", "VQ-tiny", "--codebook-size", "64",
                            "--clusters", "65", "--batch-size", "2", "--repeats", "1", "--untimed-rounds", "0",
                            "--dtype", "fp32", "--device", "cpu", "--threads", "1", "--quiet"],
                   "--clusters 65 is more than the 64 codes of the codebook; use at most 64")


@pytest.mark.parametrize("env, needle", [
    ({"WORLD_SIZE": "2"}, "WORLD_SIZE=2 is set but RANK and MASTER_ADDR are not: launch with torchrun"),
    ({"WORLD_SIZE": "abc", "RANK": "0", "MASTER_ADDR": "localhost"},
     "WORLD_SIZE='abc' in the environment is not an integer >= 1"),
    ({"RANK": "x", "MASTER_ADDR": "localhost"}, "RANK='x' in the environment is not an integer >= 0"),
])
def test_torchruns_variables_left_set_or_garbled_are_one_line(tmp_path, capsys, monkeypatch, env, needle):
    """A WORLD_SIZE left in the shell without torchrun ended in torch's env:// rendezvous ValueError; a
    garbled WORLD_SIZE, RANK or LOCAL_RANK in int()'s. Both before the run directory exists."""
    from fakes import make_store

    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    store = make_store(tmp_path / "codes")
    one_line_error(capsys, ["train", "--stage", "baseline", "--codes", store, "--preset", "GPT-tiny", "--steps", "1",
                            "--batch-size", "4", "--out", tmp_path / "run", "--device", "cpu", "--threads", "1",
                            "--no-progress"], needle)
    assert not (tmp_path / "run").exists()


def test_a_demo_with_an_unknown_preset_is_refused_before_any_work(tmp_path, capsys):
    """`demo --preset GPT-nope` failed only when the transformers were built: after the tokenizer (10 minutes
    with --train-tokenizer), the codes and k-means, into a folder it had made."""
    out, _ = one_line_error(capsys, ["demo", "--quick", "--preset", "GPT-nope", "--out", tmp_path / "d"],
                            "unknown model preset 'GPT-nope'")
    assert out == "" and not (tmp_path / "d").exists()


@pytest.mark.parametrize("command", [
    ["extract-codes", "--data", "default", "--out", "codes", "--device", "cpu"],
    ["cluster", "--clusters", "4", "--out", "map"],
    ["train-classifier", "--data", "default", "--out", "clf"],
])
def test_an_export_given_as_a_tokenizer_names_its_tokenizer(tmp_path, capsys, command):
    """`--tokenizer EXPORT` said "load it with CTFPipeline.from_pretrained / ARPipeline.from_pretrained", which
    no tokenizer flag can; the fix is the export's own tokenizer folder."""
    export = tmp_path / "release"
    export.mkdir()
    (export / "model_index.json").write_text(json.dumps({"components": {"tokenizer": "tok"}}))
    one_line_error(capsys, [command[0], "--tokenizer", export, *command[1:]],
                   f"{export} is an exported pipeline folder, not a tokenizer run; pass its tokenizer, {export}/tok")


def test_an_export_given_as_a_run_names_the_pipeline_flag(tmp_path, capsys):
    """`sample --coarse EXPORT` pointed a command-line user at the Python API only."""
    export = tmp_path / "release"
    export.mkdir()
    (export / "model_index.json").write_text("{}")
    one_line_error(capsys, ["sample", "--coarse", export, "--fine", export, "--out", "s", "--device", "cpu"],
                   f"{export} is an exported pipeline folder, not a run; sample from it whole with `--pipeline {export}`")


def test_a_numpy_seed_is_taken_and_a_bad_seed_names_its_own_fix():
    """A pipeline call refused seed=np.int64(3) (a seed drawn with numpy) as out of range, and said "pass a
    smaller seed" for -1 and 2.0 as well."""
    from coarse2fine.pipeline import _generator

    cpu = torch.device("cpu")
    for seed in (np.int64(3), torch.tensor(3)):
        assert _generator(seed, cpu).initial_seed() == 3
    for seed, fix in ((-1, "pass a seed >= 0"), (2.0, "pass an integer"), (True, "pass an integer"),
                      (2 ** 63, "pass a smaller seed")):
        with pytest.raises(UserError, match=f"got {re.escape(repr(seed))}; {fix}$"):
            _generator(seed, cpu)


def test_omp_num_threads_in_openmps_list_form_is_honoured_and_garbage_is_warned_about(monkeypatch, caplog):
    """OMP_NUM_THREADS="4,2" (OpenMP's counts per nesting level) was ignored for the free-core default, and
    "abc" as well, without a word from coarse2fine (libgomp only says "Invalid value")."""
    from coarse2fine import distributed

    n0 = torch.get_num_threads()
    monkeypatch.setattr(distributed, "free_cores", lambda: 1)
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "2,1")
        assert distributed.configure_threads() == 2
        monkeypatch.setenv("OMP_NUM_THREADS", "abc")
        with caplog.at_level("WARNING", logger="coarse2fine"):
            assert distributed.configure_threads() == 1
        assert "OMP_NUM_THREADS='abc' is not a thread count (an integer >= 1), so it is ignored: 1 thread(s)" \
            in caplog.text and "--threads N" in caplog.text
    finally:
        torch.set_num_threads(n0)


@pytest.mark.parametrize("argv", [["data", "show", "default"], ["reconstruct", "--tokenizer", "tok", "--device", "cpu"]])
def test_a_png_written_under_another_formats_name_is_refused(tmp_path, capsys, argv):
    """`reconstruct --out recon.jpg` and `data show --out preview.jpg` wrote PNG bytes into a .jpg file."""
    one_line_error(capsys, [*argv, "--out", "recon.jpg"], "--out recon.jpg names a .jpg file, but a PNG is written; "
                                                           "name it recon.png")
    assert not (tmp_path / "recon.jpg").exists()


@pytest.mark.parametrize("argv", [["data", "show", "default"], ["reconstruct", "--tokenizer", "tok", "--device", "cpu"]])
def test_a_png_written_under_a_name_without_an_extension_is_refused(tmp_path, capsys, argv):
    """`reconstruct --out recon` and `data show --out preview` wrote a PNG file named `recon`, with no extension."""
    one_line_error(capsys, [*argv, "--out", "recon"], "--out recon has no file extension, but a PNG is written; "
                                                      "name it recon.png")
    assert list(tmp_path.iterdir()) == []


def test_a_folder_of_pngs_from_two_runs_with_one_number_twice_is_refused(tmp_path):
    """Two runs' PNGs copied into one folder (000000_c0.png beside 000000_c1.png) were all scored as one set."""
    from coarse2fine.data.sample_folder import read_samples

    for name in ("000000_c0.png", "000001_c1.png", "000000_c1.png", "grid.png"):
        Image.fromarray(_shapes(1)[0]).save(tmp_path / name)
    with pytest.raises(UserError, match=r"two samples numbered 0 \(000000_c0.png, 000000_c1.png\): the samples of "
                                        "two runs mixed"):
        read_samples(tmp_path)
    (tmp_path / "000000_c1.png").unlink()
    assert read_samples(tmp_path)[1].tolist() == [0, 1]


def test_a_checkpoint_of_another_model_is_a_short_line(tmp_path, capsys):
    """A file that matches none of the model's keys listed every one of them: a single 'line' of 5 kB."""
    torch.save({"model": {"x": torch.zeros(2)}}, tmp_path / "other.pt")
    _, err = one_line_error(capsys, ["import-llamagen", "--vq", tmp_path / "other.pt", "--vq-preset", "VQ-tiny",
                                     "--out", tmp_path / "o"], "other.pt does not match the model (missing keys [",
                            "unexpected keys ['x']")
    assert re.search(r", \.\.\.\] \(\d+ in all\)", err) and len(err) < 500, err


def test_skip_checksum_set_to_off_keeps_the_check_and_garbage_is_one_line(tmp_path, monkeypatch):
    """COARSE2FINE_SKIP_CHECKSUM=off counted as set: the check it meant to keep was skipped and a damaged
    file loaded without a word."""
    p = tmp_path / "model.safetensors"
    save_weights({"w": torch.arange(1000, dtype=torch.float32)}, p)
    raw = bytearray(p.read_bytes())
    header = 8 + int.from_bytes(raw[:8], "little")
    raw[header + 100] ^= 0xFF
    p.write_bytes(bytes(raw))
    monkeypatch.setenv("COARSE2FINE_SKIP_CHECKSUM", "off")
    with pytest.raises(UserError, match="is damaged"):
        load_weights(p)
    monkeypatch.setenv("COARSE2FINE_SKIP_CHECKSUM", "maybe")
    with pytest.raises(UserError, match="COARSE2FINE_SKIP_CHECKSUM='maybe' is neither yes nor no; set it to 1"):
        load_weights(p)
    monkeypatch.setenv("COARSE2FINE_SKIP_CHECKSUM", " Yes ")
    assert load_weights(p)["w"].shape == (1000,)


@pytest.mark.parametrize("argv, prog", [
    (["redundancy", "--tokenizer", "t", "--out", "o", "--device", "cpu"], "redundancy"),
    (["bench", "sample", "--nope", "3"], "bench sample"),
])
def test_a_flag_a_command_does_not_take_is_named_with_that_commands_help(capsys, argv, prog):
    """`coarse2fine redundancy ... --device cpu` said "coarse2fine: error: unrecognized arguments: --device cpu;
    see `coarse2fine --help`": the top command's help, which lists no command's flags."""
    from coarse2fine.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"coarse2fine {prog}: error: unrecognized arguments: "), err
    assert f"see `coarse2fine {prog} --help`" in err


@pytest.mark.parametrize("held, command, needle", [
    ("vq", ["train-classifier", "--data", "default", "--limit-per-class", "1", "--epochs", "1", "--threads", "1"],
     "holds a tokenizer run, whose config.json and weights a classifier run would replace"),
    ("classifier", ["train", "--stage", "baseline", "--codes", "codes", "--preset", "GPT-tiny", "--steps", "1",
                    "--batch-size", "4", "--device", "cpu", "--threads", "1", "--no-progress"],
     "holds a classifier run, whose config.json and weights a transformer stage run would replace"),
    ("gpt", ["train-tokenizer", "--data", "default", "--limit-per-class", "1", "--vq-preset", "VQ-tiny", "--steps", "1",
             "--batch-size", "4", "--device", "cpu", "--threads", "1", "--no-progress"],
     "holds a transformer stage run, whose config.json and weights a tokenizer run would replace"),
])
def test_a_run_is_not_written_over_a_run_of_another_kind(tmp_path, capsys, held, command, needle):
    """`train-classifier --out R` of a stage or tokenizer run replaced R's config.json and model.safetensors,
    `train --out C` of a classifier the classifier's; train-tokenizer over a stage run called it a tokenizer run."""
    from fakes import make_store

    make_store(tmp_path / "codes")
    run = tmp_path / "run"
    run.mkdir()
    files = {"config.json": json.dumps({"format": "coarse2fine", "kind": held}), "model.safetensors": "weights",
             "state.pt": "state"}
    for name, text in files.items():
        (run / name).write_text(text)
    one_line_error(capsys, [*command, "--out", run], f"--out {run} {needle}; choose another --out")
    assert {f.name: f.read_text() for f in run.iterdir() if f.name in files} == files


def test_a_demo_into_a_run_directory_is_refused_before_it_touches_it(tmp_path, capsys):
    """`demo --out R` of a stage run wrote the demo's k-means map over R/coarse_map.safetensors (the run's own),
    then its samples and report among R's files."""
    run = tmp_path / "coarse"
    run.mkdir()
    for name in ("config.json", "coarse_map.safetensors"):
        (run / name).write_text(name)
    out, _ = one_line_error(capsys, ["demo", "--quick", "--out", run],
                            f"--out {run} holds config.json: a run, an export or a code store, not a demo folder")
    assert out == "" and sorted(f.name for f in run.iterdir()) == ["coarse_map.safetensors", "config.json"]
    assert (run / "coarse_map.safetensors").read_text() == "coarse_map.safetensors"


@pytest.mark.parametrize("held", ["config.json", "model.safetensors", "model_index.json"])
def test_sample_fid_into_a_run_directory_is_refused_as_sample_refuses_it(tmp_path, capsys, held):
    """`sample-fid --out R` of a run (or an export) wrote samples/, samples.npz and fid_run.json among R's
    config.json and weights, where `sample --out R` refuses R."""
    run = tmp_path / "baseline"
    run.mkdir()
    (run / held).write_text(held)
    out, _ = one_line_error(capsys, ["sample-fid", "--baseline", tmp_path / "other", "--num-samples", "10",
                                     "--device", "cpu", "--no-progress", "--out", run],
                            f"--out {run} holds {held}: a run, an export or a code store, not a sample-fid folder",
                            "choose another --out")
    assert out == "" and [f.name for f in run.iterdir()] == [held]
    one_line_error(capsys, ["sample", "--baseline", tmp_path / "other", "--device", "cpu", "--out", run],
                   f"--out {run} holds 1 file(s) that `sample` did not write")


@pytest.mark.parametrize("held", ["config.json", "model_index.json", "meta.json"])
def test_redundancy_into_a_run_directory_is_refused(tmp_path, capsys, held):
    """`redundancy --out R` of a run (an export, a code store) wrote redundancy.png and redundancy.json among R's
    config.json and weights without a word, where sample-fid and demo refuse R."""
    run = tmp_path / "coarse"
    run.mkdir()
    (run / held).write_text(held)
    out, _ = one_line_error(capsys, ["redundancy", "--tokenizer", tmp_path / "tok", "--out", run],
                            f"--out {run} holds {held}: a run, an export or a code store, not a redundancy folder",
                            "choose another --out")
    assert out == "" and [f.name for f in run.iterdir()] == [held]


@pytest.mark.parametrize("held", ["config.json", "model_index.json", "meta.json"])
def test_a_report_file_is_not_written_over_a_runs_own_file(tmp_path, capsys, held):
    """`bench sample --json R/config.json` (or --md, `eval --json`) wrote its records over the run's config.json
    (an export's model_index.json, a code store's meta.json): the folder was no longer one, its run lost."""
    run = tmp_path / "coarse"
    run.mkdir()
    (run / held).write_text("{}")
    for argv in (["bench", "sample", "--preset", "GPT-tiny", "--json", run / held],
                 ["bench", "train", "--preset", "GPT-tiny", "--md", run / held],
                 ["eval", "--samples", tmp_path / "samples", "--json", run / held]):
        out, _ = one_line_error(capsys, argv, f"{run / held} is the {held} of a run, an export or a code store "
                                              f"({run}), which the output would replace; name another file")
        assert out == "" and (run / held).read_text() == "{}"


def test_cluster_out_named_as_another_kind_of_file_is_refused_before_clustering(tmp_path, capsys):
    """`cluster --out map.npy` wrote a folder named map.npy holding coarse_map.safetensors; `--out notes` of an
    existing file clustered first, then failed on "File exists"."""
    tok = tmp_path / "tok"  # not there: every refusal comes before the tokenizer is loaded
    one_line_error(capsys, ["cluster", "--tokenizer", tok, "--out", tmp_path / "map.npy"],
                   f"--out {tmp_path / 'map.npy'} names a .npy file, but a SAFETENSORS is written; name it "
                   f"{tmp_path / 'map.safetensors'}")
    assert not (tmp_path / "map.npy").exists()
    (tmp_path / "notes").write_text("mine")
    one_line_error(capsys, ["cluster", "--tokenizer", tok, "--out", tmp_path / "notes"],
                   f"--out {tmp_path / 'notes'} is an existing file; give a directory path")
    assert (tmp_path / "notes").read_text() == "mine"
    # a folder's name with a dot, and an existing folder named like a file, are folders
    for folder in (tmp_path / "maps" / "v1.2", tmp_path / "old.safetensors"):
        one_line_error(capsys, ["cluster", "--tokenizer", tok, "--out", folder], f"--tokenizer {tok} does not exist")


@pytest.mark.parametrize("command, what", [
    (["train", "--stage", "baseline", "--codes", "codes", "--preset", "GPT-tiny", "--steps", "1", "--batch-size", "4",
      "--device", "cpu", "--threads", "1", "--no-progress"], "transformer stage"),
    (["train-tokenizer", "--data", "default", "--limit-per-class", "1", "--vq-preset", "VQ-tiny", "--steps", "1",
      "--batch-size", "4", "--device", "cpu", "--threads", "1", "--no-progress"], "tokenizer"),
    (["train-classifier", "--data", "default", "--limit-per-class", "1", "--epochs", "1", "--threads", "1"],
     "classifier"),
])
def test_a_run_is_not_written_into_a_code_store(tmp_path, capsys, command, what):
    """`train --out S` (or train-tokenizer, train-classifier) of a code store wrote the run's config.json, weights,
    state.pt and metrics among S's codes.npy and meta.json, without a word."""
    from fakes import make_store

    make_store(tmp_path / "codes")
    store = make_store(tmp_path / "store", seed=1)
    def files():  # a `.lock` nobody holds is left by the output lock, as on any refused --out
        return sorted(f.name for f in store.iterdir() if f.name != ".lock")

    before = files()
    one_line_error(capsys, [*command, "--out", store],
                   f"--out {store} is a code store (it holds meta.json and extracted codes), not a run directory",
                   f"write the {what} run into another --out")
    assert files() == before


@pytest.mark.parametrize("held", ["store", "run"])
def test_extract_codes_imagenet_into_a_code_store_or_run_is_refused(tmp_path, capsys, held):
    """`extract-codes-imagenet --out S` of an extract-codes store replaced S's meta.json and labels.npy (the codes.npy
    beside them no longer matched: the store was lost); into a run it put shards/, plan.json, ... among its files."""
    from fakes import make_store

    out = tmp_path / held
    if held == "store":
        make_store(out)
    else:
        out.mkdir()
        (out / "config.json").write_text("{}")
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    one_line_error(capsys, ["extract-codes-imagenet", "--tokenizer", tmp_path / "tok", "--data-root", tmp_path / "imgs",
                            "--device", "cpu", "--workers", "0", "--no-progress", "--out", out],
                   f"--out {out} holds other files and no ten-crop extraction (e.g. ", "give a new or empty directory")
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before


@pytest.mark.parametrize("argv", [["sample", "--coarse", "{f}", "--fine", "{f}", "--device", "cpu", "--out", "s"],
                                  ["sample", "--baseline", "{f}", "--device", "cpu", "--out", "s"],
                                  ["eval-tokens", "--run", "{f}", "--codes", "codes", "--device", "cpu"]])
def test_a_file_of_a_run_given_as_the_run_is_named_as_a_file(tmp_path, capsys, argv):
    """`sample --coarse runs/coarse/model.safetensors` said "run directory ... not found" of a file that is there."""
    f = tmp_path / "coarse" / "model.safetensors"
    f.parent.mkdir()
    f.write_text("weights")
    one_line_error(capsys, [a.format(f=f) for a in argv],
                   f"{f} is a file, not a run directory; pass the folder that holds it ({f.parent})")


def test_mps_asked_for_where_torch_has_none_is_one_line(tmp_path, capsys, monkeypatch):
    """`--device mps` on Linux (or a torch built without MPS) passed the device check, then ended in torch's
    "PyTorch is not linked with support for mps devices" traceback from the first model moved there."""
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    one_line_error(capsys, ["sample", "--baseline", tmp_path / "b", "--device", "mps", "--out", tmp_path / "s"],
                   "--device mps asked for, but torch sees no MPS device", "use --device cpu")


@pytest.mark.parametrize("device, needle", [("gpu", "device='gpu' is not a device; use cpu, cuda or cuda:N"),
                                            ("cuda", "device='cuda' asked for, but torch sees no CUDA device; "
                                                     "use device='cpu'"),
                                            (3.5, "device='3.5' is not a device")])
def test_a_pipeline_on_a_device_torch_cannot_use_is_one_line(tmp_path, monkeypatch, device, needle):
    """CTFPipeline.from_runs(..., device="gpu") ended in torch's RuntimeError ("Expected one of cpu, cuda, ...
    device type at start of device string"), device="cuda" without CUDA in "Torch not compiled with CUDA enabled"
    (an AssertionError), each from inside the weight loading."""
    from coarse2fine.pipeline import ARPipeline, CTFPipeline

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match=re.escape(needle)):
        CTFPipeline.from_runs(tmp_path / "coarse", tmp_path / "fine", device=device)
    with pytest.raises(UserError, match=re.escape(needle)):
        ARPipeline.from_runs(tmp_path / "baseline", device=device)


@pytest.mark.parametrize("knob, value, needle", [
    ("top_k", 2.5, "top-k must be an integer, got 2.5"), ("top_k", "5", "top-k must be an integer, got '5'"),
    ("top_k", None, "top-k must be an integer, got None"), ("cfg_interval", 2.5, "cfg interval must be an integer"),
    ("cfg_interval", True, "cfg interval must be an integer, got True"),
    ("temperature", "1.1", "temperature must be a number, got '1.1'"), ("top_p", None, "top-p must be a number"),
    ("cfg_scale", "2", "cfg scale must be a number, got '2'")])
def test_sampling_knobs_of_the_wrong_type_are_one_line(knob, value, needle):
    """StageSampling(top_k=2.5) reached torch.topk ("argument 'k' must be int, not float"), a string or None a
    comparison's TypeError in validate; StageSampling(cfg_interval=2.5) sampled without a word."""
    from coarse2fine.sampling import StageSampling

    with pytest.raises(UserError, match=re.escape(f"stage-1 {needle}") + ".*e.g. StageSampling"):
        StageSampling(**{knob: value}).validate(64, "stage-1")
    for ok in (dict(top_k=np.int64(5), cfg_interval=np.int32(3)), dict(temperature=np.float32(1.1)),
               dict(temperature=torch.tensor(1.1), top_p=0.9, cfg_scale=2)):  # numbers from numpy and torch are taken
        StageSampling(**ok).validate(64, "stage-1")


def _tiny_ctf_pipeline():
    """An untrained CTF pipeline of 4x4 tokens (K 64, C 8, 3 classes): for what a call does with its arguments."""
    from coarse2fine.config import VQConfig
    from coarse2fine.models import Transformer
    from coarse2fine.pipeline import CTFPipeline
    from coarse2fine.stages import stage_config
    from coarse2fine.tokenizer.clustering import cluster_codebook
    from coarse2fine.tokenizer.vq import VQModel, codebook_fingerprint

    torch.manual_seed(0)
    vq = VQModel(VQConfig(codebook_size=64, codebook_embed_dim=4, ch=8, ch_mult=(1, 2), z_channels=8,
                          num_res_blocks=1, image_size=8, use_attn=False)).eval()
    cmap = cluster_codebook(vq.codebook_normalized(), 8, "kmeans", 0, codebook_fingerprint(vq))
    coarse, fine = (Transformer(stage_config("GPT-tiny", s, 64, 8, 3, vq.cfg.grid)).eval() for s in ("coarse", "fine"))
    return CTFPipeline(vq, coarse, fine, cmap)


def test_redraw_with_coarse_maps_that_are_not_whole_cluster_ids_is_one_line():
    """pipe.redraw(coarse) with a float map holding 2.5 sampled cluster 2 there without a word (as_tensor with
    dtype=long truncates), and a string ended in torch's TypeError ("new(): invalid data type 'str'")."""
    pipe = _tiny_ctf_pipeline()
    ref = pipe([0, 1], seed=0, decode_images=False)
    c = ref.coarse.float()
    c[1, 3] = 2.5
    with pytest.raises(UserError, match=r"coarse maps must hold whole cluster ids, got torch.float32 values such as "
                                        r"\[2.5\]; round them or pass integers"):
        pipe.redraw(c, [0, 1], decode_images=False)
    c[1, 3] = float("inf")
    with pytest.raises(UserError, match=r"values such as \[inf\]"):
        pipe.redraw(c, [0, 1], decode_images=False)
    with pytest.raises(UserError, match="coarse maps must be cluster ids .* got 'abc'"):
        pipe.redraw("abc", [0], decode_images=False)
    whole = pipe.redraw(ref.coarse.double(), [0, 1], seed=3, decode_images=False)  # whole floats are taken
    assert torch.equal(whole.codes, pipe.redraw(ref.coarse, [0, 1], seed=3, decode_images=False).codes)


LFS = (b"version https://git-lfs.github.com/spec/v1\n"
       b"oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 1183502\n")


def test_a_git_lfs_pointer_or_a_text_file_in_place_of_weights_is_named_as_such(tmp_path, capsys):
    """A repository cloned without Git LFS holds pointer files where the weights should be: a .pt pointer was
    "a plain pickle", a .safetensors one "corrupt, re-export it" (neither says to fetch the file); a short text
    file given as a .pt (`hi`) ended in a KeyError traceback from torch's unpickler."""
    from coarse2fine.tokenizer.clustering import CoarseMap

    for name in ("vq_ds16_c2i.pt", "model.safetensors", "coarse_map.safetensors"):
        (tmp_path / name).write_bytes(LFS)
    lfs = f"is a Git LFS pointer ({len(LFS)} bytes), not the file it stands for: its repository was cloned without " \
          "Git LFS; run `git lfs pull` there"
    one_line_error(capsys, ["import-llamagen", "--vq", tmp_path / "vq_ds16_c2i.pt", "--out", tmp_path / "o"],
                   f"{tmp_path / 'vq_ds16_c2i.pt'} {lfs}")
    with pytest.raises(UserError, match=re.escape(lfs)):
        load_weights(tmp_path / "model.safetensors")
    with pytest.raises(UserError, match=re.escape(lfs)):
        CoarseMap.load(tmp_path)
    (tmp_path / "page.pt").write_text("hi\n")
    with pytest.raises(UserError, match=r"page.pt is a text file \(it begins 'hi'\), not a weights file"):
        load_torch_file(tmp_path / "page.pt")


@pytest.mark.parametrize("edit, needle", [
    ("label", "labels.npy holds class id 7, outside 0..2 (num_classes 3 in meta.json); re-extract the codes"),
    ("negative", "labels.npy holds class id -1, outside 0..2"),
    ("float codes", "codes.npy holds float32 values, not integer ids; re-extract the codes"),
    ("float labels", "labels.npy holds float64 values, not integer ids")])
def test_a_code_store_with_ids_it_cannot_hold_is_one_line_at_load(tmp_path, edit, needle):
    """A code store (written by hand, or by another tool) with a label past its classes trained until a step drew
    that row, then ended in an IndexError traceback (eval-tokens at once); float codes were floored without a word."""
    from coarse2fine.data.codes import CodeStore
    from fakes import make_store

    store = make_store(tmp_path / "codes")
    codes, labels = np.load(store / "codes.npy"), np.load(store / "labels.npy")
    if edit in ("label", "negative"):
        labels[5] = 7 if edit == "label" else -1
    elif edit == "float codes":
        codes = codes.astype(np.float32) + 0.5
    else:
        labels = labels.astype(np.float64)
    np.save(store / "codes.npy", codes)
    np.save(store / "labels.npy", labels)
    with pytest.raises(UserError, match=re.escape(needle)):
        CodeStore(store)


@pytest.mark.parametrize("error, reason", [
    (MemoryError("Unable to allocate 27.9 GiB for an array with shape (100000, 100000, 3) and data type uint8"),
     "Unable to allocate 27.9 GiB for an array with shape (100000, 100000, 3) and data type uint8"),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.10 GiB "
                            "of which 1.02 GiB is free. Of the allocated memory 70.00 GiB is allocated by PyTorch"),
     "CUDA out of memory. Tried to allocate 2.00 GiB"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                  "tried to allocate 1000002000001 bytes. Error code 12 (Cannot allocate memory)"),
     "can't allocate memory: you tried to allocate 1000002000001 bytes"),
    (MemoryError(), "MemoryError")])
def test_running_out_of_memory_is_one_line_naming_the_allocation(tmp_path, capsys, monkeypatch, error, reason):
    """`data show --image-size 100000` ended in numpy's _ArrayMemoryError traceback, `sample --batch-size 512` on a
    small GPU in torch's OutOfMemoryError, `bench sample --grid 1000` in its CPU allocator's RuntimeError."""
    import coarse2fine.cli.data as data_cli

    def show(args):
        raise error
    monkeypatch.setattr(data_cli, "cmd_show", show)
    one_line_error(capsys, ["data", "show", "default", "--out", tmp_path / "p.png"],
                   f"coarse2fine data: error: out of memory ({reason}); lower --batch-size or the sizes asked for, "
                   "or free memory")
    monkeypatch.setattr(data_cli, "cmd_show", lambda args: [][1])  # any other error is a bug: its traceback stays
    with pytest.raises(IndexError):
        from coarse2fine.cli import main
        main(["data", "show", "default", "--out", str(tmp_path / "p.png")])


def test_a_tilde_after_an_equals_sign_or_in_the_cache_variable_is_the_home_folder(tmp_path, monkeypatch, capsys):
    """`--out=~/preview.png` (the shell expands ~ only at the start of a word, not after `=`) and a quoted
    COARSE2FINE_CACHE='~/.cache/c2f' (a .env file, a Dockerfile ENV) made a folder named `~` in the working
    directory, where a later `rm -r ~` would be a disaster."""
    from coarse2fine.cli import main
    from coarse2fine.eval.samples import default_cache_dir

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    assert main(["data", "show", "default", "--per-class", "1", "--max-classes", "2", "--out=~/preview.png"]) == 0
    assert (home / "preview.png").is_file() and not (tmp_path / "~").exists()
    monkeypatch.setenv("COARSE2FINE_CACHE", "~/.cache/c2f")
    assert default_cache_dir() == home / ".cache" / "c2f"


def test_a_tilde_in_a_pipelines_paths_from_python_is_the_home_folder(tmp_path, monkeypatch):
    """pipe.save_pretrained("~/ctf") from Python (no shell to expand it) made ./~/ctf in the working directory, and
    CTFPipeline.from_pretrained("~/ctf") then said "~/ctf is not a folder" of a folder that is there."""
    from coarse2fine.pipeline import CTFPipeline, load_pretrained

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    pipe = _tiny_ctf_pipeline()
    assert pipe.save_pretrained("~/ctf") == home / "ctf"
    assert (home / "ctf" / "model_index.json").is_file() and not (tmp_path / "~").exists()
    for loaded in (CTFPipeline.from_pretrained("~/ctf"), load_pretrained("~/ctf")):
        assert torch.equal(loaded([1], seed=0, decode_images=False).codes, pipe([1], seed=0, decode_images=False).codes)
    with pytest.raises(UserError, match=re.escape(f"{home}/ctf/stage1 is a component of the exported folder")):
        CTFPipeline.from_runs("~/ctf/stage1", "~/ctf/stage2")  # found, and named as what it is (was: "not found")


def test_a_classifier_too_small_for_its_poolings_is_refused_before_any_data_is_read(tmp_path, capsys):
    """`train-classifier --image-size 3` read and resized the data, then ended in a max-pool's RuntimeError
    ("Output size is too small") traceback."""
    out, _ = one_line_error(capsys, ["train-classifier", "--data", "default", "--limit-per-class", "1", "--epochs",
                                     "1", "--threads", "1", "--image-size", "3", "--out", tmp_path / "c"],
                            "--image-size 3 is too small for the classifier CNN", "use --image-size 8 or more")
    assert out == "" and not (tmp_path / "c").exists()


@pytest.mark.parametrize("argv, after", [
    (["extract-codes", "--tokenizer", "tok", "--out", "codes"], "; run the same command again to continue where it "
                                                               "stopped"),
    (["sample", "--pipeline", "exp", "--out", "s"], "; nothing was finished: run the command again to start over"),
    (["train", "--resume", "--out", "run"], "; rerun with --resume to continue"),
])
def test_an_interrupted_command_is_told_how_it_continues(monkeypatch, capsys, argv, after):
    """Ctrl-C told every command "rerun with --resume to continue": only train and train-tokenizer take --resume
    (`extract-codes --resume` and `sample --resume` are "unrecognized arguments"); extract-codes continues when
    run again as it was, sample starts over."""
    import coarse2fine.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "prepare", interrupted)
    assert cli.main(argv) == 130
    err = capsys.readouterr().err
    assert err == f"coarse2fine {argv[0]}: interrupted{after}\n"


def test_a_file_of_a_code_store_or_a_missing_store_is_named_as_such(tmp_path, capsys):
    """`train --codes codes/codes.npy` (a file of the store) and `--codes codse` (a typo) both said "holds no
    extracted codes (no meta.json); run extract-codes first", of a store that was extracted."""
    from fakes import make_store

    store = make_store(tmp_path / "codes")
    run = ["train", "--stage", "baseline", "--preset", "GPT-tiny", "--steps", "1", "--device", "cpu", "--out",
           tmp_path / "r"]
    for f in ("codes.npy", "meta.json"):
        one_line_error(capsys, [*run, "--codes", store / f],
                       f"{store / f} is a file, not a code store; pass the folder that holds it ({store})")
    one_line_error(capsys, [*run, "--codes", store, "--heldout", store / "labels.npy"],
                   f"{store / 'labels.npy'} is a file, not a code store")
    one_line_error(capsys, [*run, "--codes", tmp_path / "codse"],
                   f"code store {tmp_path / 'codse'} not found; pass the --out folder of `coarse2fine extract-codes`")
    assert not (tmp_path / "r").exists()


def test_samples_whose_class_ids_the_data_set_lacks_are_one_line_before_any_feature(tmp_path, capsys):
    """`eval --samples S --classifier C` with samples of another data set's classes (ids 10..19 against the 10
    classes of default) computed every feature and the Inception Score, then ended in class_accuracy's
    ValueError ("labels must lie in [0, 10)") traceback; without --classifier it scored them without a word."""
    from coarse2fine.cli import main

    assert main(["train-classifier", "--data", "default", "--limit-per-class", "1", "--epochs", "1", "--threads", "1",
                 "--out", str(tmp_path / "clf")]) == 0
    capsys.readouterr()
    npz = tmp_path / "other.npz"
    np.savez(npz, arr_0=_shapes(20), labels=np.arange(20) % 10 + 10)
    for clf in (["--classifier", tmp_path / "clf"], []):
        one_line_error(capsys, ["eval", "--samples", npz, *clf, "--no-cache", "--ref-count", "20", "--device", "cpu"],
                       "the samples carry class ids 10..19, but default has classes 0..9: they were made for another "
                       "data set; pass the --data")


@pytest.mark.parametrize("overrides, needle", [
    ({}, "grid 8, needs 4; num_classes 10, needs 3; vocab_size 16384, needs 64"),  # the bare preset
    ({"grid": 4, "vocab_size": 64, "num_classes": 2}, "num_classes 2, needs 3"),  # class 2 trained as the null class
    ({"grid": 4, "vocab_size": 64, "num_classes": 3, "causal": False}, "causal False, needs True"),
])
def test_a_model_config_that_does_not_fit_the_code_store_is_one_line(tmp_path, overrides, needle):
    """train(stage, gpt_config("GPT-tiny"), ...) from Python on a store of 4x4 codes, K 64 and 3 classes trained
    a model of another grid, vocabulary or class count without a word: with 2 classes, class 2's rows taught the
    model's null (unconditional) class; a bidirectional baseline cannot be sampled."""
    from fakes import make_store
    from coarse2fine.config import TrainConfig, gpt_config
    from coarse2fine.training.gpt import train

    store = make_store(tmp_path / "codes")
    with pytest.raises(UserError, match=re.escape(
            f"the model config does not fit the baseline stage on {store}: {needle}; build it with "
            "coarse2fine.stages.stage_config(preset, 'baseline', 64, 0, 3, 4)")):
        train("baseline", gpt_config("GPT-tiny", **overrides), TrainConfig(steps=1, batch_size=4, dtype="fp32"), store,
              tmp_path / "r", progress=False, device="cpu")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("overrides, needle", [
    ({"steps": 2.5}, "steps must be an integer, got 2.5"),
    ({"log_every": 0}, "log_every must be an integer >= 1, got 0"),
    ({"ckpt_every": 0}, "ckpt_every must be an integer >= 1, got 0"),
    ({"lr": float("nan")}, "lr must be a finite number > 0, got nan"),
    ({"weight_decay": -0.05}, "weight_decay must be a finite number >= 0, got -0.05"),
    ({"min_lr_ratio": 5.0}, "min_lr_ratio must be in [0, 1], got 5.0"),
])
def test_training_settings_out_of_range_from_python_are_one_line(tmp_path, overrides, needle):
    """TrainConfig(steps=2.5) trained to "step 3" and never saved its weights (no step equals 2.5); log_every=0 or
    ckpt_every=0 ended in a ZeroDivisionError, lr=nan in torch's "Invalid learning rate" (of the scaled rate);
    weight_decay=-0.05 and min_lr_ratio=5 trained on without a word. The CLI's flags refused each of them."""
    from fakes import make_store
    from coarse2fine.config import TokenizerTrainConfig, TrainConfig
    from coarse2fine.stages import stage_config
    from coarse2fine.training.gpt import train

    store = make_store(tmp_path / "codes")
    with pytest.raises(UserError, match=re.escape(f"TrainConfig {needle}")):
        train("baseline", stage_config("GPT-tiny", "baseline", 64, 0, 3, 4),
              TrainConfig(**{"steps": 1, "batch_size": 4, "dtype": "fp32", **overrides}), store, tmp_path / "r",
              progress=False, device="cpu")
    assert not (tmp_path / "r").exists()
    with pytest.raises(UserError, match=re.escape(f"TokenizerTrainConfig {needle}")):  # the tokenizer's, the same
        TokenizerTrainConfig(**overrides).validate()


@pytest.mark.parametrize("dtype", [torch.float64, torch.int64])
def test_a_torch_dtype_autocast_cannot_compute_in_is_one_line(dtype):
    """CTFPipeline(..., dtype=torch.float64) (or from_pretrained / from_runs with it) sampled in float32 without a
    word: autocast skips float64, and an integer dtype only drew torch's "CPU Autocast only supports" warning."""
    from coarse2fine.pipeline import CTFPipeline

    pipe = _tiny_ctf_pipeline()
    with pytest.raises(UserError, match=re.escape(f"dtype {dtype} is not a precision autocast computes in; use "
                                                  "'auto', 'fp32' or 'bf16' (or torch.float32, torch.bfloat16, "
                                                  "torch.float16)")):
        CTFPipeline(pipe.vq, pipe.coarse_model, pipe.fine_model, pipe.cmap, dtype=dtype)
    half = CTFPipeline(pipe.vq, pipe.coarse_model, pipe.fine_model, pipe.cmap, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and half([0], decode_images=False).codes.shape == (1, 16)


def test_a_model_config_the_network_cannot_be_built_with_is_one_line(tmp_path):
    """gpt_config("GPT-B", n_head=10) ended in the attention layer's AssertionError ("dim must be divisible by
    n_head") when the network was built, a head size the 2-D RoPE cannot split (n_head 32 of dim 64) in its
    ValueError, n_head 0 in a ZeroDivisionError; a run's config.json edited to such a value the same."""
    from coarse2fine.config import GPTConfig, from_dict, gpt_config, to_dict

    with pytest.raises(UserError, match=re.escape("GPTConfig dim 768 with n_head 10: each head must get a whole "
                                                  "number of channels, a multiple of 4 for the 2-D RoPE (dim / n_head "
                                                  "= 76.8); use n_head 8 (head size 96)")):
        gpt_config("GPT-B", n_head=10)
    with pytest.raises(UserError, match=r"dim / n_head = 2\); use n_head 16 \(head size 4\)"):
        GPTConfig(dim=64, n_head=32)
    with pytest.raises(UserError, match="GPTConfig n_head 0, grid 0: every size must be 1 or more"):
        gpt_config("GPT-tiny", n_head=0, grid=0)
    edited = {**to_dict(gpt_config("GPT-tiny")), "n_head": 3}  # a run's "gpt" section, edited by hand
    with pytest.raises(UserError, match=r"^R/config.json: GPTConfig dim 128 with n_head 3: .*use n_head 2 "
                                        r"\(head size 64\)$"):
        from_dict(GPTConfig, edited, "R/config.json")


def test_a_damaged_png_among_the_samples_is_named(tmp_path, capsys):
    """`eval --samples D` with one PNG of D cut short (an interrupted copy) said "image file is truncated" (or
    "cannot identify image file" of an empty one) without naming which of the folder's files it was."""
    folder = tmp_path / "samples"
    folder.mkdir()
    for i, img in enumerate(_shapes(6)):
        Image.fromarray(img).save(folder / f"{i:06d}_c{i % 3}.png")
    cut, empty = folder / "000004_c1.png", folder / "000002_c2.png"
    cut.write_bytes(cut.read_bytes()[:200])
    fix = "the file is damaged or was copied in part; sample it again, or copy the folder again"
    one_line_error(capsys, ["eval", "--samples", folder, "--no-cache", "--device", "cpu"],
                   f"cannot read the sample {cut} (image file is truncated): {fix}")
    cut.unlink()
    empty.write_bytes(b"")  # a copy that never started
    one_line_error(capsys, ["eval", "--samples", folder, "--no-cache", "--device", "cpu"],
                   f"cannot read the sample {empty} (cannot identify image file", fix)


@pytest.mark.parametrize("mode", [True, "fastest", "max_autotune"])
def test_a_compile_mode_torch_does_not_know_is_one_line(mode):
    """pipe.compile_mode = True (or a mistyped mode) from Python ran the prefill, then ended in torch.compile's
    RuntimeError ("Unrecognized mode=True") from inside sampling; the CLI's --compile takes only known modes."""
    pipe = _tiny_ctf_pipeline()
    pipe.compile_mode = mode
    with pytest.raises(UserError, match=re.escape("compile_mode must be one of default, reduce-overhead, "
                                                  "max-autotune, max-autotune-no-cudagraphs, or None for eager "
                                                  f"decoding; got {mode!r}")):
        pipe([0], decode_images=False)
    pipe.compile_mode = False  # off, as None is
    assert pipe([0], decode_images=False).codes.shape == (1, 16)


def test_eval_every_without_held_out_codes_is_refused(tmp_path, capsys):
    """`train --eval-every 50` without --heldout trained without a word and evaluated nothing: the loop evaluates
    the held-out codes only (DESIGN: a flag the chosen mode would ignore is refused, not dropped)."""
    from fakes import make_store

    store = make_store(tmp_path / "codes")
    one_line_error(capsys, ["train", "--stage", "baseline", "--codes", store, "--preset", "GPT-tiny", "--steps", "1",
                            "--batch-size", "4", "--eval-every", "50", "--device", "cpu", "--out", tmp_path / "r"],
                   "--eval-every 50 evaluates the held-out codes, and this run has none: pass --heldout S (codes "
                   "extracted with --split test) or drop --eval-every")
    assert not (tmp_path / "r").exists()


def test_a_warm_up_longer_than_the_run_is_warned_about(tmp_path, caplog):
    """`train-tokenizer --steps 50` (the recipe's warm-up is 100 steps) or `train --steps 1 --warmup-steps 5` trained
    at a learning rate that climbed to only steps/warmup of the one asked for and never decayed, without a word."""
    from fakes import make_store
    from coarse2fine.cli import main
    from coarse2fine.training.tokenizer import _resolve

    with caplog.at_level("WARNING", logger="coarse2fine.train"):
        _resolve("VQ-tiny", None, {"steps": 100})  # a warm-up as long as the run reaches --lr at its last step
        assert "--warmup-steps" not in caplog.text
        _resolve("VQ-tiny", None, {"steps": 50})
        assert ("--warmup-steps 100 is longer than --steps 50: the learning rate climbs to only 50% of --lr and never "
                "decays; lower --warmup-steps (e.g. 2, 5% of the run) or raise --steps") in caplog.text
        caplog.clear()
        assert main(["train", "--stage", "baseline", "--codes", str(make_store(tmp_path / "codes")), "--preset",
                     "GPT-tiny", "--steps", "1", "--batch-size", "4", "--warmup-steps", "5", "--device", "cpu",
                     "--no-progress", "--out", str(tmp_path / "r")]) == 0
    assert "--warmup-steps 5 is longer than --steps 1: the learning rate climbs to only 20% of --lr" in caplog.text


# ---- eval metrics from Python ----------------------------------------------------------------------

def test_features_holding_nan_or_inf_are_one_line():
    """Features of a model or extractor that diverged (a nan or an inf row) ended in torch's LinAlgError ("the
    algorithm failed to converge") from frechet_distance_from_features, and scored KID (nan, nan) and precision
    and recall (0.0, 0.0) without a word."""
    from coarse2fine.eval import metrics as M

    good = np.random.default_rng(0).normal(size=(50, 8))
    bad = good.copy()
    bad[3, 2], bad[7] = np.nan, np.inf
    line = "hold nan or inf values (2 of 50 rows): the model or extractor that made them diverged; score finite values"
    for call, what in ((lambda: M.frechet_distance_from_features(bad, good), "features"),
                       (lambda: M.frechet_distance_from_features(good[:5], bad[:5] * 0 + np.nan), "features"),
                       (lambda: M.feature_stats(bad), "features"),
                       (lambda: M.kernel_distance(good, bad), "fake features"),
                       (lambda: M.precision_recall(bad, good), "real features")):
        with pytest.raises(ValueError, match=re.escape(what + " hold nan or inf values (")):
            call()
    with pytest.raises(ValueError, match=f"^features {re.escape(line)}$"):
        M.feature_stats(bad)
    assert M.frechet_distance_from_features(good, good) < 1e-9


def test_feature_tables_of_two_widths_or_not_tables_are_one_line():
    """precision_recall of features from two extractors (widths 8 and 6) ended in torch's "mat1 and mat2 shapes
    cannot be multiplied"; a vector of features (one per image) in kernel_distance's or
    frechet_distance_from_features' IndexError ("tuple index out of range")."""
    from coarse2fine.eval import metrics as M

    a = np.random.default_rng(0).normal(size=(50, 8))
    for call, shapes in ((lambda: M.precision_recall(a, a[:, :6]), "(50, 8) and (50, 6)"),
                         (lambda: M.kernel_distance(a[:, 0], a[:, 0]), "(50,) and (50,)"),
                         (lambda: M.frechet_distance_from_features(a[:, 0], a[:, 1]), "(50,) and (50,)")):
        with pytest.raises(ValueError, match=re.escape("need two feature tables [N, D] of one width D (one row per "
                                                       f"image, both from one extractor), got shapes {shapes}")):
            call()
    assert M.precision_recall(a, a) == (1.0, 1.0)


def test_metric_counts_out_of_range_from_python_are_one_line():
    """precision_recall(k=0) scored (1.0, 1.0) whatever the features (each row is its own 0-th neighbour);
    kernel_distance(subsets=0) (nan, nan) after numpy's "Mean of empty slice"; inception_score(splits=0) ended in
    torch's "number of sections must be larger than 0", a fractional count in a TypeError."""
    from coarse2fine.eval import metrics as M

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 8)), rng.normal(3, 1, size=(40, 8))
    probs = rng.dirichlet(np.ones(5), 20)
    for call, line in ((lambda: M.precision_recall(a, b, k=0), "k must be an integer >= 1, got 0"),
                       (lambda: M.precision_recall(a, b, k=2.5), "k must be an integer >= 1, got 2.5"),
                       (lambda: M.kernel_distance(a, b, subsets=0), "subsets must be an integer >= 1, got 0"),
                       (lambda: M.kernel_distance(a, b, subset_size=1), "subset_size must be an integer >= 2, got 1"),
                       (lambda: M.inception_score(probs, splits=0), "splits must be an integer >= 1, got 0"),
                       (lambda: M.inception_score(probs, splits=True), "splits must be an integer >= 1, got True")):
        with pytest.raises(ValueError, match=f"^{re.escape(line)}$"):
            call()
    assert M.precision_recall(a, b, k=np.int64(3))[0] < 0.5 and M.inception_score(probs, splits=np.int64(2))[0] > 1


def test_an_inception_score_of_logits_is_one_line():
    """inception_score(logits) (a classifier's raw outputs, which class_accuracy takes) scored (nan, nan) without a
    word, and positive scores that were not probabilities a number that meant nothing."""
    from coarse2fine.eval import metrics as M

    logits = torch.tensor([[2.0, -1.0, 0.5], [0.1, 3.0, -2.0]] * 5)
    with pytest.raises(ValueError, match=r"^probs must be probabilities, rows of values >= 0 summing to 1; got values "
                                         r"from -2 to 3, rows summing to 1.1..1.5: apply softmax to logits first "
                                         r"\(logits.softmax\(-1\)\)$"):
        M.inception_score(logits.numpy(), splits=2)
    with pytest.raises(ValueError, match=r"rows summing to 5\.\.6\.6:"):
        M.inception_score(logits.abs().numpy() + 0.5, splits=2)
    assert M.inception_score(logits.softmax(-1).float().numpy(), splits=2)[0] > 1


def test_colour_error_of_images_it_does_not_take_is_one_line():
    """colour_error of the library's own images (float [N, 3, H, W] in [-1, 1]) ended in a matmul RuntimeError, and
    the same images channels last in a delta E near 0 without a word (read as 0-255 values); two sets of different
    counts in a broadcast RuntimeError, grid=0 scored (nan, nan)."""
    from coarse2fine.data.preprocess import to_uint8
    from coarse2fine.eval.metrics import colour_error

    x = torch.rand(2, 3, 16, 16) * 2 - 1
    fix = "bring the library's [-1, 1] images [N, 3, H, W] to it with coarse2fine.data.preprocess.to_uint8(x)"
    for images, got in ((x, "torch.float32 (2, 3, 16, 16)"), (x.permute(0, 2, 3, 1), "torch.float32 (2, 16, 16, 3)")):
        with pytest.raises(ValueError, match=re.escape(f"colour_error takes uint8 [N, H, W, 3] images, got {got}; {fix}")):
            colour_error(images, -images)
    u8 = to_uint8(x).permute(0, 2, 3, 1)
    with pytest.raises(ValueError, match="got 2 originals and 3 reconstructions$"):
        colour_error(u8, torch.cat([u8, u8[:1]]))
    with pytest.raises(ValueError, match="^grid must be an integer >= 1, got 0$"):
        colour_error(u8, u8, grid=0)
    assert colour_error(u8, 255 - u8)["delta_e"] > 10


def test_a_damaged_reference_batch_is_one_line_before_any_feature(tmp_path, capsys, monkeypatch):
    """`eval --ref-batch R` with R empty or cut short (an interrupted download) was read only after the samples'
    and the reference split's features and the Inception network, then ended in numpy's EOFError or zipfile's
    BadZipFile as a traceback."""
    from coarse2fine.eval import samples as S
    from coarse2fine.eval.inception import load_ref_batch

    _samples(tmp_path / "d", 0, n=12)
    (tmp_path / "w.pth").write_bytes(b"weights")
    np.savez(tmp_path / "ref.npz", arr_0=np.zeros((4, 8, 8, 3), np.uint8))
    whole = (tmp_path / "ref.npz").read_bytes()
    monkeypatch.setattr(S, "reference_features", lambda *a, **k: pytest.fail("features extracted"))
    fix = "the file is damaged or not an .npz: download or copy the reference batch again"
    for name, data in (("cut.npz", whole[:len(whole) // 2]), ("empty.npz", b"")):
        (tmp_path / name).write_bytes(data)
        one_line_error(capsys, ["eval", "--samples", tmp_path / "d", "--inception-weights", tmp_path / "w.pth",
                                "--ref-batch", tmp_path / name, "--no-cache", "--device", "cpu"],
                       f"cannot read reference batch {tmp_path / name} (BadZipFile: ", fix)
        with pytest.raises(UserError, match=re.escape(fix)):
            load_ref_batch(tmp_path / name)
    np.savez(tmp_path / "float.npz", arr_0=np.zeros((4, 8, 8, 3), np.float32))
    with pytest.raises(UserError, match=re.escape("arr_0 must be uint8 [N, H, W, 3], got float32 (4, 8, 8, 3)")):
        load_ref_batch(tmp_path / "float.npz")
    assert load_ref_batch(tmp_path / "ref.npz").shape == (4, 8, 8, 3)


def test_codes_a_tokenizer_does_not_have_are_one_line_at_decode():
    """vq.decode_codes with a code id of -1 decoded the codebook's last code without a word (e[-1]), an id of K
    ended in an IndexError, float ids holding 2.5 were truncated to code 2; a numpy array (np.load of codes.npy)
    in an AttributeError."""
    vq = _tiny_ctf_pipeline().vq
    codes = torch.arange(32).reshape(2, 16) % 64
    for bad in (-1, 64):
        c = codes.clone()
        c[1, 5] = bad
        with pytest.raises(UserError, match=re.escape(f"codes must be in 0..63 (the ids of this tokenizer's codebook), "
                                                      f"got [{bad}]; decode codes with the tokenizer that made them")):
            vq.decode_codes(c)
    with pytest.raises(UserError, match=r"^codes must be integer ids, got torch.float32 values; pass the codes as "
                                        r"integers$"):
        vq.decode_codes(codes.float() + 0.5)
    assert torch.equal(vq.decode_codes(codes.numpy().astype(np.int16)), vq.decode_codes(codes.reshape(2, 4, 4)))


def test_images_the_tokenizer_does_not_take_are_one_line_at_encode():
    """vq.encode of uint8 images or of channels-last floats ended in a convolution's RuntimeError ("Input type
    (unsigned char) and bias type (float) should be the same", "expected input[2, 8, 8, 3] to have 3 channels"),
    and 0-255 floats were encoded without a word, into the codes of other images."""
    vq = _tiny_ctf_pipeline().vq
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    fix = "bring uint8 [B, H, W, 3] pixels to it with x.permute(0, 3, 1, 2) / 127.5 - 1"
    for images, got in ((torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8), "torch.uint8 (2, 3, 8, 8)"),
                        (x.permute(0, 2, 3, 1), "torch.float32 (2, 8, 8, 3)"), (x.numpy(), "ndarray")):
        with pytest.raises(UserError, match=re.escape(f"images must be a float tensor [B, 3, H, W] in [-1, 1], got "
                                                      f"{got}; {fix}")):
            vq.encode(images)
    with pytest.raises(UserError, match=r"^images must be in \[-1, 1\], got values from 0 to 255; scale 0-255 pixels "
                                        r"with x / 127.5 - 1$"):
        vq.encode(torch.cat([x.new_zeros(1, 3, 8, 8), x.new_full((1, 3, 8, 8), 255.0)]))
    assert vq.encode(x).shape == (2, 4, 4) and vq.encode(x * 1.05).shape == (2, 4, 4)  # a resampler's overshoot


@pytest.mark.parametrize("overrides, needle", [
    ({"width": 0}, "width must be an integer >= 1, got 0"),
    ({"shift": -2}, "shift must be an integer >= 0, got -2"),
    ({"batch_size": 2.5}, "batch_size must be an integer >= 1, got 2.5"),
    ({"lr": -1.0}, "lr must be a finite number > 0, got -1.0"),
    ({"dropout": 1.0}, "dropout must be in [0, 1), got 1.0"),
])
def test_classifier_settings_out_of_range_from_python_are_one_line(tmp_path, overrides, needle):
    """train_classifier(..., width=0) or shift=-2 read the data, then ended in torch's RuntimeError ("expected weight
    to be at least 1 at dimension 0", "random_ expects 'from' to be less than 'to'"), batch_size=2.5 in a slice's
    TypeError, lr=-1 in AdamW's "Invalid learning rate"; dropout=1 trained a head that saw only zeros. The CLI's
    flags refuse the values they take; shift, dropout and weight_decay are the API's only."""
    from coarse2fine.eval.classifier import train_classifier

    with pytest.raises(UserError, match=f"^train_classifier {re.escape(needle)}$"):
        train_classifier("default", 8, tmp_path / "clf", epochs=1, limit_per_class=2, log=lambda s: None, **overrides)
    assert not (tmp_path / "clf").exists()


def test_generate_ar_called_with_what_it_does_not_take_is_one_line():
    """generate_ar called directly from Python: a list of labels was an AttributeError ('list' object has no
    attribute 'numel'), float labels torch's embedding RuntimeError, [B, 1] labels an unpacking ValueError, a dict
    of knobs an AttributeError, dtype "bf16" the cache's TypeError, a stage-2 model a RuntimeError from the cache,
    num_tokens past the grid an IndexError and num_tokens=0 every token without a word."""
    from coarse2fine.sampling import StageSampling, generate_ar

    pipe = _tiny_ctf_pipeline()
    m, o, y = pipe.coarse_model, StageSampling(), torch.tensor([0, 1])
    for cond, got in (([0, 1], "list"), (torch.tensor([0.0, 1.0]), "torch.float32 of shape [2]"),
                      (torch.tensor([[0], [1]]), "torch.int64 of shape [2, 1]")):
        with pytest.raises(UserError, match=re.escape(f"generate_ar labels must be a 1-D integer tensor of class ids "
                                                      f"[B], got {got}; e.g. torch.tensor([0, 1, 2])")):
            generate_ar(m, cond, o)
    with pytest.raises(UserError, match="^generate_ar opts must be a coarse2fine.sampling.StageSampling, got dict"):
        generate_ar(m, y, {"temperature": 1.0})
    with pytest.raises(UserError, match=r"^num_tokens must be an integer from 1 to 16 \(the model's tokens per image\)"
                                        r", or None for all of them; got 17$"):
        generate_ar(m, y, o, num_tokens=17)
    for n in (0, -1, 2.5):
        with pytest.raises(UserError, match=f"got {n}$"):
            generate_ar(m, y, o, num_tokens=n)
    with pytest.raises(UserError, match="^generate_ar decodes a causal .* this is a stage-2 model.*use generate_fine$"):
        generate_ar(pipe.fine_model, y, o)
    with pytest.raises(UserError, match=r"^generate_ar labels are on cpu but the model is on meta; move them with "
                                        r"labels.to\('meta'\)$"):
        generate_ar(copy.deepcopy(m).to("meta"), y, o)
    assert generate_ar(m, y, o, num_tokens=3).shape == (2, 3)
    torch.testing.assert_close(generate_ar(m, y, o, torch.Generator().manual_seed(0), dtype="fp32"),
                               generate_ar(m, y, o, torch.Generator().manual_seed(0)))  # a precision's name is taken


def test_generate_fine_called_with_coarse_maps_it_does_not_take_is_one_line():
    """generate_fine called directly from Python with a coarse map of another grid ([2, 10] for a 4x4 model) sampled
    10 codes per image without a word; ids outside the coarse vocabulary were an embedding IndexError, a float map
    its RuntimeError, a map of another row count than the labels a concatenation RuntimeError, a 1-D map an
    unpacking ValueError, a causal model's loop ran as stage 2."""
    from coarse2fine.sampling import StageSampling, generate_fine

    pipe = _tiny_ctf_pipeline()
    m, o, y = pipe.fine_model, StageSampling(), torch.tensor([0, 1])
    c = torch.randint(0, 8, (2, 16), generator=torch.Generator().manual_seed(0))
    for coarse, cond, got in ((c[:, :10], y, "[2, 10] for 2 labels"), (c, y[:1], "[2, 16] for 1 labels"),
                              (c[0], y, "[16] for 2 labels")):
        with pytest.raises(UserError, match=re.escape(f"coarse maps must be [B, 16] (the model's tokens per image), "
                                                      f"one row per label; got shape {got}")):
            generate_fine(m, coarse, cond, o)
    for coarse, got in ((c + 8, "from 8 to 15"), (c - 1, "from -1 to 6")):
        for members in (None, pipe.members):
            with pytest.raises(UserError, match=re.escape(f"coarse maps must hold cluster ids in 0..7 (the model's "
                                                          f"coarse vocabulary), got ids {got}")):
                generate_fine(m, coarse, y, o, members=members)
    with pytest.raises(UserError, match="^coarse maps must be an integer tensor of cluster ids, got torch.float32"):
        generate_fine(m, c.float(), y, o)
    with pytest.raises(UserError, match="^generate_fine runs a stage-2 model .* use generate_ar$"):
        generate_fine(pipe.coarse_model, c, y, o)
    assert generate_fine(m, c, y, o, members=pipe.members).shape == (2, 16)


def test_a_demo_that_fails_into_a_new_folder_leaves_nothing_and_a_second_demo_is_refused(tmp_path, capsys):
    """`demo --data nope --out D` said "unknown data set" and left the empty folder D it had made (and
    runs/demo_nope without --out); a second demo on a folder another demo was writing went ahead, copying its
    tokenizer and writing its coarse map under the first one's models."""
    from coarse2fine.fileio import DirLock

    out, _ = one_line_error(capsys, ["demo", "--quick", "--data", "nope", "--out", tmp_path / "d"],
                            "unknown data set 'nope'")
    assert out == "" and not (tmp_path / "d").exists()
    busy = tmp_path / "busy"
    with DirLock(busy, "another demo"):
        one_line_error(capsys, ["demo", "--quick", "--out", busy], f"{busy} is in use by another demo (pid {os.getpid()})")
    assert sorted(f.name for f in busy.iterdir()) == [".lock"]


def test_demo_vq_steps_without_a_tokenizer_to_train_is_one_line(tmp_path, capsys, monkeypatch):
    """`demo --vq-steps 50` without --train-tokenizer used the shipped tokenizer and dropped the flag without a
    word: the report said "shipped", not the 50-step tokenizer asked for."""
    import coarse2fine.cli.demo as demo_cli

    def started(out, plan, progress):
        raise AssertionError(f"the demo started with the {plan.tokenizer} tokenizer")
    monkeypatch.setattr(demo_cli, "run_demo", started)
    out, _ = one_line_error(capsys, ["demo", "--quick", "--vq-steps", "50", "--out", tmp_path / "d"],
                            "--vq-steps sets the steps of a tokenizer trained here, and the demo of default uses the "
                            "shipped tokenizer; add --train-tokenizer, or drop --vq-steps")
    assert out == "" and not (tmp_path / "d").exists()


@pytest.mark.parametrize("knobs, needle", [
    ({"n": float("nan")}, "number of images must be a whole number, got nan"),
    ({"n": float("inf")}, "number of images must be a whole number, got inf"),
    ({"seed": "one"}, "seed must be a whole number, got one"),
    ({"top_k2": float("nan")}, "stage-2 top-k must be a whole number, got nan"),
    ({"cfg": "strong"}, "cfg scale must be a number, got 'strong'"),
    ({"temperature_baseline": None}, "baseline temperature is empty; enter a number"),
])
def test_page_knobs_that_are_not_numbers_are_one_line(knobs, needle):
    """Explorer.generate(Knobs(n=nan)) from Python ended in int()'s ValueError ("cannot convert float NaN to
    integer"), n=inf in an OverflowError, seed="one" or cfg="strong" in float()'s ValueError, a baseline
    temperature of None (its box emptied on the page) in float()'s TypeError after stage 1 and 2 had run."""
    from coarse2fine.apps.app import Explorer, Knobs
    from coarse2fine.models import Transformer
    from coarse2fine.pipeline import ARPipeline
    from coarse2fine.stages import stage_config

    pipe = _tiny_ctf_pipeline()
    base = ARPipeline(pipe.vq, Transformer(stage_config("GPT-tiny", "baseline", 64, 8, 3, pipe.vq.cfg.grid)).eval())
    ex = Explorer(pipe, base, ["a", "b", "c"])
    with pytest.raises(UserError, match=f"^{re.escape(needle)}$"):
        ex.generate(Knobs(**{"class_name": "a", "n": 1, **knobs}))
    assert ex.check(Knobs(class_name="a", n=2.0, seed="3")).n == 2  # whole numbers as the page sends them


def test_stage_models_of_different_class_counts_are_one_line():
    """CTFPipeline(vq, coarse, fine, cmap) with a stage-2 model trained on 5 classes and a stage-1 model on 3 (codes
    of two data sets under one tokenizer and coarse map) sampled without a word: class 1's coarse maps detailed as
    the other data set's class 1, labels 3 and 4 of the stage-2 model never reachable."""
    from coarse2fine.models import Transformer
    from coarse2fine.pipeline import CTFPipeline
    from coarse2fine.stages import stage_config

    pipe = _tiny_ctf_pipeline()
    fine5 = Transformer(stage_config("GPT-tiny", "fine", 64, 8, 5, pipe.vq.cfg.grid)).eval()
    with pytest.raises(UserError, match=r"^the stage-1 model was trained on 3 classes, the stage-2 model on 5: codes "
                                        r"of different data sets; use runs trained on the same codes$"):
        CTFPipeline(pipe.vq, pipe.coarse_model, fine5, pipe.cmap)


def test_a_tilde_in_the_pages_run_paths_from_python_is_the_home_folder(tmp_path, monkeypatch):
    """Explorer.from_runs("~/r/coarse", "~/r/fine") from Python loaded the runs (the pipeline expands "~"), then
    read the class names from Path("~/r/coarse") as it was: "missing ~/r/coarse/config.json; is this a coarse2fine
    run directory?" of a run it had just loaded."""
    from coarse2fine.apps.app import Explorer
    from coarse2fine.pipeline import CTFPipeline

    home = tmp_path / "home"
    run = home / "r" / "coarse"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"codes": {"classes": ["cat", "dog", "owl"]}}))
    monkeypatch.setenv("HOME", str(home))
    pipe = _tiny_ctf_pipeline()

    def from_runs(cls, coarse, fine=None, tokenizer_dir=None, device="cpu", dtype=torch.float32):
        pipe.sources = {"stage1": Path(coarse).expanduser(), "stage2": Path(fine).expanduser()}
        return pipe
    monkeypatch.setattr(CTFPipeline, "from_runs", classmethod(from_runs))
    assert Explorer.from_runs("~/r/coarse", "~/r/fine").class_names == ["cat", "dog", "owl"]


def test_a_baseline_of_another_data_set_on_the_page_is_one_line(tmp_path, monkeypatch):
    """`app --coarse C --fine F --baseline B` with B trained on another data set of as many classes (MNIST digits
    beside Fashion-MNIST) showed B's digits under the CTF runs' class names without a word: only the class count
    was compared."""
    from coarse2fine.apps.app import Explorer
    from coarse2fine.models import Transformer
    from coarse2fine.pipeline import ARPipeline, CTFPipeline
    from coarse2fine.stages import stage_config

    for run, classes in (("coarse", ["shirt", "shoe", "bag"]), ("base", ["zero", "one", "two"]),
                         ("same", ["shirt", "shoe", "bag"])):
        (tmp_path / run).mkdir()
        (tmp_path / run / "config.json").write_text(json.dumps({"codes": {"classes": classes}}))
    pipe = _tiny_ctf_pipeline()
    base = ARPipeline(pipe.vq, Transformer(stage_config("GPT-tiny", "baseline", 64, 8, 3, pipe.vq.cfg.grid)).eval())

    def ctf_runs(cls, coarse, fine=None, tokenizer_dir=None, device="cpu", dtype=torch.float32):
        pipe.sources = {"stage1": Path(coarse), "stage2": Path(fine)}
        return pipe

    def ar_runs(cls, baseline_dir, tokenizer_dir=None, device="cpu", dtype=torch.float32):
        base.sources = {"baseline": Path(baseline_dir)}
        return base
    monkeypatch.setattr(CTFPipeline, "from_runs", classmethod(ctf_runs))
    monkeypatch.setattr(ARPipeline, "from_runs", classmethod(ar_runs))
    with pytest.raises(UserError, match=re.escape(f"the baseline run {tmp_path / 'base'} was trained on other classes "
                                                  "(zero, one, two, ...) than the CTF runs (shirt, shoe, bag, ...); "
                                                  "pass a baseline trained on the same data")):
        Explorer.from_runs(tmp_path / "coarse", tmp_path / "fine", tmp_path / "base")
    assert Explorer.from_runs(tmp_path / "coarse", tmp_path / "fine", tmp_path / "same").baseline is base
