"""Fault cases of issue 20 that need trained runs (the tiny_runs fixture of conftest.py): the code store a
run trains on, held-out codes, output folders written by two processes or on a full disk, exported
folders. docs/faults.md lists every fault class with its test."""
import errno
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from coarse2fine.cli import main
from cli_checks import one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py
QUIET = ["--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def other_codes(tiny_runs, tmp_path_factory):
    """Codes of the same tokenizer on another subset of the data (1 image per class instead of 2)."""
    out = tmp_path_factory.mktemp("other") / "codes"
    assert main(["extract-codes", "--tokenizer", str(tiny_runs["tok"]), "--data", "default", "--limit-per-class", "1",
                 "--no-flip", "--out", str(out), *QUIET]) == 0
    return out


def _edited_store(src, dst, **meta):
    shutil.copytree(src, dst)
    m = json.loads((dst / "meta.json").read_text())
    (dst / "meta.json").write_text(json.dumps({**m, **meta}))
    return dst


# ---- code stores -----------------------------------------------------------------------------------------

def test_resume_refuses_another_code_store_and_keeps_the_runs_record(tiny_runs, other_codes, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_runs["baseline"], run)
    before = (run / "config.json").read_text()
    assert "labels_sha256" in json.loads(before)["codes"]  # the run records its data, not only a path
    one_line_error(capsys, ["train", "--resume", "--out", run, "--codes", other_codes, "--steps", "5", *QUIET],
                   f"--codes {other_codes.resolve()} is not the code store {run} trains on", "count: the run's 20",
                   "leave --codes out")
    assert (run / "config.json").read_text() == before
    fewer = _edited_store(tiny_runs["codes"], tmp_path / "one_class", num_classes=1)
    one_line_error(capsys, ["train", "--resume", "--out", run, "--codes", fewer, "--steps", "5", *QUIET],
                   "num_classes: the run's 10, this store's 1")
    moved = shutil.copytree(tiny_runs["codes"], tmp_path / "moved")  # the same store elsewhere: the same data
    assert main(["train", "--resume", "--out", str(run), "--codes", str(moved), "--steps", "4", *QUIET]) == 0


@pytest.mark.parametrize("edit, needle", [
    ({"tokenizer_fingerprint": "0123456789abcdef"}, "holds codes of another tokenizer (codebook fingerprint)"),
    ({"num_classes": 3, "classes": ["a", "b", "c"]}, "has 3 classes"),
])
def test_heldout_codes_must_match_the_runs_tokenizer_and_classes(tiny_runs, tmp_path, capsys, edit, needle):
    held = _edited_store(tiny_runs["codes"], tmp_path / "held", **edit)
    one_line_error(capsys, ["train", "--stage", "baseline", "--codes", tiny_runs["codes"], "--heldout", held,
                            "--preset", "GPT-tiny", "--steps", "1", "--batch-size", "4", "--out", tmp_path / "r", *QUIET],
                   f"--heldout {held}", needle)
    assert not (tmp_path / "r" / "state.pt").exists()


# ---- concurrency: one writer per output folder -------------------------------------------------------------

def _hold_lock(folder):
    """Another process holding `folder`'s lock as a writer does: flock on <folder>/.lock, its pid inside."""
    folder.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import fcntl, os, sys; f = open({str(folder / '.lock')!r}, 'w'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); f.write(f'{os.getpid()}\\n'); f.flush(); "
                               "print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


@pytest.mark.parametrize("command", ["sample", "sample-fid", "extract-codes"])
def test_a_second_writer_of_an_output_folder_is_refused(tiny_runs, tmp_path, capsys, command):
    out = tmp_path / "out"
    argv = {"sample": ["sample", "--baseline", tiny_runs["baseline"], "--per-class", "1", "--device", "cpu"],
            "sample-fid": ["sample-fid", "--baseline", tiny_runs["baseline"], "--num-samples", "10", "--no-progress"],
            "extract-codes": ["extract-codes", "--tokenizer", tiny_runs["tok"], "--data", "default",
                              "--limit-per-class", "1", *QUIET]}[command] + ["--out", out]
    holder = _hold_lock(out)
    try:
        one_line_error(capsys, argv, f"in use by another {'`sample`' if command == 'sample' else command} process "
                                     f"(pid {holder.pid})")
    finally:
        holder.communicate("")
    assert sorted(f.name for f in out.iterdir()) == [".lock"]  # nothing written
    assert main([str(a) for a in argv]) == 0  # released with its holder


# ---- disk: failed writes leave the old state or one the rerun accepts -----------------------------------------

def test_sample_on_a_full_disk_keeps_the_earlier_output_and_names_the_folder(tiny_runs, tmp_path, capsys, monkeypatch):
    from PIL import Image

    from coarse2fine.data.sample_folder import read_samples

    out = tmp_path / "s"
    argv = ["sample", "--baseline", str(tiny_runs["baseline"]), "--per-class", "1", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    real, calls = Image.Image.save, []

    def save(self, fp, *a, **kw):
        calls.append(fp)
        if len(calls) == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, fp, *a, **kw)
    monkeypatch.setattr(Image.Image, "save", save)
    one_line_error(capsys, argv + ["--seed", "1"], f"No space left on device: {out}; free some space")
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before  # no partial PNG, the old npz intact
    monkeypatch.setattr(Image.Image, "save", real)
    assert main(argv + ["--seed", "1"]) == 0 and len(read_samples(out)[0]) == 10


def test_extract_codes_that_failed_on_a_full_disk_is_restarted_by_the_rerun(tiny_runs, other_codes, tmp_path, capsys,
                                                                            monkeypatch):
    from coarse2fine.data.codes import CodeStore

    out = tmp_path / "codes"
    argv = ["extract-codes", "--tokenizer", str(tiny_runs["tok"]), "--data", "default", "--limit-per-class", "1",
            "--no-flip", "--out", str(out), *QUIET]

    def full_disk(path, *a, **kw):  # what a full disk left: an empty codes.npy and an error
        Path(path).write_bytes(b"")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(np.lib.format, "open_memmap", full_disk)
    one_line_error(capsys, argv, f"No space left on device: {out / 'codes.npy'}")
    monkeypatch.undo()
    assert main(argv) == 0  # the rerun the message advises
    store = CodeStore(out)
    clean = CodeStore(other_codes)  # the same extraction, never interrupted
    assert np.array_equal(store.codes, clean.codes) and np.array_equal(store.labels, clean.labels)


def test_sample_fid_removes_the_temp_files_of_a_killed_run(tiny_runs, tmp_path):
    out = tmp_path / "fid"
    (out / "samples").mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = out / "samples" / f".000000_c0.png.{int(dead.stdout)}.w.tmp"
    stale.write_bytes(b"half a png")
    argv = ["sample-fid", "--baseline", tiny_runs["baseline"], "--num-samples", "10", "--no-progress", "--device",
            "cpu", "--out", out]
    assert main([str(a) for a in argv]) == 0
    assert not stale.exists() and len(list((out / "samples").glob("*.png"))) == 10


# ---- export -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def exported(tiny_runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "ctf"
    assert main(["export", "--coarse", str(tiny_runs["coarse"]), "--fine", str(tiny_runs["fine"]), "--out", str(out)]) == 0
    return out


def _edit_index(folder, **kw):
    index = json.loads((folder / "model_index.json").read_text())
    index.update(kw)
    (folder / "model_index.json").write_text(json.dumps(index))


def test_export_component_outside_the_folder_is_refused(exported, tmp_path):
    from coarse2fine.config import UserError
    from coarse2fine.pipeline import CTFPipeline

    folder = shutil.copytree(exported, tmp_path / "a" / "b" / "ctf")
    shutil.copytree(exported / "stage1", tmp_path / "elsewhere" / "coarse")
    index = json.loads((folder / "model_index.json").read_text())
    _edit_index(folder, components={**index["components"], "stage1": "../../../elsewhere/coarse"})
    with pytest.raises(UserError, match="component stage1 is '../../../elsewhere/coarse', outside the exported folder"):
        CTFPipeline.from_pretrained(folder)
    (folder / "stage1_link").symlink_to(tmp_path / "elsewhere" / "coarse")  # a link out of it is outside too
    _edit_index(folder, components={**index["components"], "stage1": "stage1_link"})
    with pytest.raises(UserError, match="outside the exported folder"):
        CTFPipeline.from_pretrained(folder)


def test_export_sampling_defaults_are_honoured_and_checked(exported, tmp_path):
    from coarse2fine.config import UserError
    from coarse2fine.pipeline import CTFPipeline
    from coarse2fine.sampling import CTF_COARSE_DEFAULT, CTF_FINE_DEFAULT, StageSampling

    labels = torch.tensor([0, 1, 2, 3])
    plain = CTFPipeline.from_pretrained(exported)(labels, seed=0).codes
    folder = shutil.copytree(exported, tmp_path / "ctf")
    edited = {"stage1": {"temperature": 0.5, "cfg_scale": 1.0}, "stage2": {"temperature": 0.7}}
    _edit_index(folder, sampling_defaults=edited)
    pipe = CTFPipeline.from_pretrained(folder)
    codes = pipe(labels, seed=0).codes
    assert not torch.equal(codes, plain)
    asked = pipe(labels, StageSampling(0.5, cfg_scale=1.0), StageSampling(0.7), seed=0).codes
    assert torch.equal(codes, asked)  # the edited values are what a call without options uses
    assert torch.equal(pipe(labels, CTF_COARSE_DEFAULT, CTF_FINE_DEFAULT, seed=0).codes, plain)
    _edit_index(folder, sampling_defaults={"stage1": {"temperature": -1.0}})
    with pytest.raises(UserError, match="sampling_defaults: stage1 temperature must be > 0"):
        CTFPipeline.from_pretrained(folder)
    _edit_index(folder, sampling_defaults={"stage1": {"temprature": 1.0}})
    with pytest.raises(UserError, match="stage1 must hold some of"):
        CTFPipeline.from_pretrained(folder)
