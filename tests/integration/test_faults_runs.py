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
from PIL import Image

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
    """A copy of the store `src` with meta.json fields replaced; a store of fewer classes gets its labels folded
    into them, so that it is a whole store of that many classes (the store checks its labels when opened)."""
    import numpy as np

    shutil.copytree(src, dst)
    m = json.loads((dst / "meta.json").read_text())
    (dst / "meta.json").write_text(json.dumps({**m, **meta}))
    if "num_classes" in meta:
        labels = np.load(dst / "labels.npy")
        np.save(dst / "labels.npy", labels % meta["num_classes"])
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


# ---- issue 33: a run's coarse map, exports of runs, outputs of failed commands ---------------------------------

def test_a_coarse_map_put_in_place_of_a_runs_own_is_refused(tiny_runs, tmp_path, capsys):
    from coarse2fine.tokenizer.clustering import CoarseMap

    fine = shutil.copytree(tiny_runs["fine"], tmp_path / "fine")
    own = CoarseMap.load(fine / "coarse_map.safetensors")
    assert json.loads((fine / "config.json").read_text())["coarse_map"]["sha256"] == own.digest  # recorded
    other = tmp_path / "other"
    assert main(["cluster", "--tokenizer", str(tiny_runs["tok"]), "--clusters", "8", "--method", "random", "--out",
                 str(other)]) == 0
    shutil.copyfile(other / "coarse_map.safetensors", fine / "coarse_map.safetensors")
    one_line_error(capsys, ["sample", "--coarse", tiny_runs["coarse"], "--fine", fine, "--per-class", "1", "--out",
                            tmp_path / "s", "--device", "cpu"],
                   f"coarse map {fine / 'coarse_map.safetensors'} is not the one {fine} was trained with")
    before = (fine / "config.json").read_text()
    one_line_error(capsys, ["train", "--resume", "--out", fine, "--steps", "6", *QUIET], "is not the one")
    assert (fine / "config.json").read_text() == before


def test_cluster_refuses_to_write_into_a_run_directory(tiny_runs, tmp_path, capsys):
    run = shutil.copytree(tiny_runs["coarse"], tmp_path / "coarse")
    before = (run / "coarse_map.safetensors").read_bytes()
    one_line_error(capsys, ["cluster", "--tokenizer", tiny_runs["tok"], "--clusters", "4", "--out", run],
                   f"{run} is a run directory", "write the new map to another folder")
    assert (run / "coarse_map.safetensors").read_bytes() == before


def test_export_of_a_run_being_trained_is_refused(tiny_runs, tmp_path, capsys):
    fine = shutil.copytree(tiny_runs["fine"], tmp_path / "fine")
    holder = _hold_lock(fine)  # a training process holds the run's lock
    try:
        one_line_error(capsys, ["export", "--coarse", tiny_runs["coarse"], "--fine", fine, "--out", tmp_path / "e"],
                       f"{fine} (stage2) is being trained right now (pid {holder.pid}", "export it after the run ends")
    finally:
        holder.communicate("")
    assert not (tmp_path / "e").exists()
    assert main(["export", "--coarse", str(tiny_runs["coarse"]), "--fine", str(fine), "--out", str(tmp_path / "e")]) == 0


def test_export_into_the_current_empty_folder(tiny_runs, tmp_path, monkeypatch):
    here = tmp_path / "here"
    here.mkdir(mode=0o750)
    inode = here.stat().st_ino
    monkeypatch.chdir(here)
    assert main(["export", "--coarse", str(tiny_runs["coarse"]), "--fine", str(tiny_runs["fine"]), "--out", "."]) == 0
    assert (here / "model_index.json").is_file() and here.stat().st_ino == inode  # filled, not replaced
    assert oct(here.stat().st_mode & 0o777) == "0o750" and sorted(p.name for p in tmp_path.iterdir()) == ["here"]


def test_save_pretrained_failures_are_the_librarys_one_line(tiny_runs, tmp_path, monkeypatch):
    import huggingface_hub.constants

    from coarse2fine import release
    from coarse2fine.config import UserError
    from coarse2fine.pipeline import CTFPipeline

    pipe = CTFPipeline.from_runs(tiny_runs["coarse"], tiny_runs["fine"])
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)  # an empty read-only folder: root could write it, its mode says no
    with pytest.raises(UserError, match=r"ro is read-only \(mode 555\); `chmod u\+w"):
        pipe.save_pretrained(ro)
    assert oct(ro.stat().st_mode & 0o777) == "0o555" and not any(ro.iterdir())  # was: replaced, mode changed
    with pytest.raises(UserError, match="is read-only"):
        pipe.save_pretrained(ro / "x")  # its parent cannot be written

    def denied(pipe, name, tmp):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp))
    monkeypatch.setattr(release, "_write_release", denied)  # e.g. a parent this (non-root) user cannot write
    with pytest.raises(UserError, match=r"cannot save the pipeline to .*Permission denied: .*check the permissions"):
        pipe.save_pretrained(tmp_path / "out")
    monkeypatch.undo()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match=r"cannot push to the Hugging Face repo me/x \(OfflineModeIsEnabled"):
        pipe.push_to_hub("me/x")  # was: the Hub library's own exception


def test_sample_that_fails_into_a_new_folder_leaves_nothing(tiny_runs, tmp_path, capsys):
    out = tmp_path / "new" / "s"
    one_line_error(capsys, ["sample", "--baseline", tiny_runs["baseline"], "--classes", "99", "--out", out,
                            "--device", "cpu"], "class ids [99] out of range")
    assert not (tmp_path / "new").exists()  # was: a folder holding only .lock, refused by export as "not empty"
    out.mkdir(parents=True)
    (out / ".lock").write_text("12345\n")  # what a killed command leaves; nobody holds it
    assert main(["export", "--baseline", str(tiny_runs["baseline"]), "--out", str(out)]) == 0


def test_a_long_sample_says_how_long_it_will_take(tiny_runs, tmp_path, capsys):
    assert main(["sample", "--baseline", str(tiny_runs["baseline"]), "--per-class", "2", "--batch-size", "8",
                 "--out", str(tmp_path / "s"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "sampling 20 images in 3 batches of 8" in out and "batch 1/3 after" in out and "s left" in out


def test_exported_parts_passed_as_runs_name_the_folder(exported, tmp_path, capsys):
    one_line_error(capsys, ["sample", "--coarse", exported / "stage1", "--fine", exported / "stage2", "--out",
                            tmp_path / "s", "--device", "cpu"],
                   f"{exported / 'stage1'} is a component of the exported folder {exported}", "from_pretrained")
    part = shutil.copytree(exported, tmp_path / "part")
    shutil.rmtree(part / "coarse_map")
    from coarse2fine.config import UserError
    from coarse2fine.pipeline import CTFPipeline

    with pytest.raises(UserError, match=r"component coarse_map \(coarse_map/\) is missing") as e:
        CTFPipeline.from_pretrained(part)
    assert "coarse2fine cluster" not in str(e.value)  # was: advised creating a map


def test_a_link_out_of_an_export_is_named_as_a_link(exported, tmp_path):
    from coarse2fine.config import UserError
    from coarse2fine.pipeline import CTFPipeline

    folder = shutil.copytree(exported, tmp_path / "ctf")
    shutil.move(folder / "stage1", tmp_path / "stage1")
    (folder / "stage1").symlink_to(tmp_path / "stage1")
    with pytest.raises(UserError, match=f"stage1 is a link to {tmp_path / 'stage1'}, outside the exported folder"):
        CTFPipeline.from_pretrained(folder)


def test_the_page_starts_at_the_exports_sampling_defaults(exported, tmp_path):
    from coarse2fine.apps.app import Explorer

    folder = shutil.copytree(exported, tmp_path / "ctf")
    _edit_index(folder, sampling_defaults={"stage1": {"temperature": 0.5, "cfg_scale": 3.0, "top_k": 7},
                                           "stage2": {"temperature": 0.7, "top_k": 5}})
    ex = Explorer.from_pretrained(folder)
    k = ex.default_knobs()
    assert (k.temperature1, k.cfg, k.top_k1, k.temperature2, k.top_k2) == (0.5, 3.0, 7, 0.7, 5)
    assert k.stage1() == ex.pipe.coarse_default and k.stage2() == ex.pipe.fine_default


def test_the_page_shows_the_exports_sampling_defaults(exported, tmp_path):
    pytest.importorskip("gradio")  # the page's extra; the knobs it starts at are checked above without it
    from coarse2fine.apps.app import Explorer
    from coarse2fine.apps.app_page import build

    folder = shutil.copytree(exported, tmp_path / "ctf")
    _edit_index(folder, sampling_defaults={"stage1": {"temperature": 0.5, "top_k": 7},
                                           "stage2": {"temperature": 0.7, "top_k": 5}})
    shown = {c.elem_id: c.value for c in build(Explorer.from_pretrained(folder)).blocks.values()
             if getattr(c, "elem_id", None)}
    assert (shown["c2f-t1"], shown["c2f-k1"], shown["c2f-t2"], shown["c2f-k2"]) == (0.5, 7, 0.7, 5)


def test_heldout_codes_missing_classes_are_warned_about(tiny_runs, tmp_path, caplog):
    held = shutil.copytree(tiny_runs["codes"], tmp_path / "held")
    labels = np.load(held / "labels.npy")
    np.save(held / "labels.npy", np.where(labels == 3, 2, labels))  # class 3 has no codes
    m = json.loads((held / "meta.json").read_text())
    m.pop("labels_sha256", None)
    (held / "meta.json").write_text(json.dumps(m))
    with caplog.at_level("WARNING", logger="coarse2fine.data"):
        assert main(["train", "--stage", "baseline", "--codes", str(tiny_runs["codes"]), "--heldout", str(held),
                     "--preset", "GPT-tiny", "--steps", "1", "--batch-size", "4", "--out", str(tmp_path / "r"),
                     *QUIET]) == 0
    assert f"--heldout {held} has no codes of 1 of its 10 classes" in caplog.text


# ---- eval ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, needle", [
    (["--split", "nonsense"], "has splits train, test; got split 'nonsense'"),
    (["--classifier", "no_such_classifier"], "no_such_classifier not found"),
    (["--ref-count", "100000"], "--ref-count 100000 exceeds the 1000 images"),
    (["--inception-weights", "no.pth", "--ref-batch", "no.npz"], "--inception-weights no.pth not found"),
    (["--cache-dir", "a_file"], "--cache-dir a_file is a file, not a folder"),
    (["--num-samples", "5"], "use 10 (one per class) or more"),
    (["--data", "folder", "--data-root", "three", "--split", "train"],  # a 10-class model against 3 classes
     "the samples carry class ids 0..9, but folder has classes 0..2: they were made for another data set"),
])
def test_eval_of_a_pipeline_checks_its_flags_before_it_samples(exported, tmp_path, capsys, monkeypatch, flags,
                                                              needle):
    """`eval --pipeline` sampled --num-samples images first and read the reference split, the classifier and
    the cache folder only then: a mistyped flag failed after the sampling (hours at sample-fid sizes)."""
    from coarse2fine.apps import sample_fid

    def no_sampling(*a, **k):
        raise AssertionError("sampled before the flags were checked")
    monkeypatch.setattr(sample_fid, "sample_balanced", no_sampling)
    (tmp_path / "a_file").write_text("x")
    for c in "abc":  # an image folder of 3 classes
        (tmp_path / "three" / c).mkdir(parents=True)
        Image.new("RGB", (16, 16), "red").save(tmp_path / "three" / c / "0.png")
    argv = ["eval", "--pipeline", exported, "--num-samples", "10", "--device", "cpu", *flags]
    one_line_error(capsys, argv, needle)


# ---- the Python API --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pipelines(tiny_runs):
    from coarse2fine.pipeline import ARPipeline, CTFPipeline

    return {"ctf": CTFPipeline.from_runs(tiny_runs["coarse"], tiny_runs["fine"]),
            "ar": ARPipeline.from_runs(tiny_runs["baseline"])}


@pytest.mark.parametrize("kind", ["ctf", "ar"])
@pytest.mark.parametrize("labels, needle", [
    (torch.tensor([], dtype=torch.long), "labels name no image"),  # was a RuntimeError of a reshape
    (torch.tensor([1.5]), r"whole class ids, got \[1.5\]"),  # was class 1, without a word
    ([float("inf")], r"whole class ids, got \[inf\]"),
    (torch.tensor([[1, 2]]), r"1-D, one class id per image \[B\], got shape \[1, 2\]"),  # was a ValueError
    (torch.tensor(1), r"got shape \[\]; e.g. \[3\]"),  # was an IndexError
    (["a"], "labels must be class ids"),
])
def test_pipeline_labels_that_are_not_a_list_of_class_ids_are_one_line(pipelines, kind, labels, needle):
    from coarse2fine.config import UserError

    with pytest.raises(UserError, match=needle):
        pipelines[kind](labels, decode_images=False)


def test_pipeline_labels_of_whole_floats_are_taken(pipelines):
    out = pipelines["ar"](np.array([2.0, 0.0]), decode_images=False)
    assert out.labels.tolist() == [2, 0] and out.labels.dtype == torch.long


@pytest.mark.parametrize("method, rows", [
    ("agglomerative", ["agglomerative-4", "random-4"]),
    ("random", ["random-4 (--coarse-map)", "random-4 (seed 0)"]),
])
def test_redundancy_names_a_coarse_map_by_its_own_method(tiny_runs, tmp_path, method, rows):
    """`redundancy --coarse-map M` called every map "kmeans-C"; a random map's row then had the random
    comparison's name as well, and only one of the two was kept."""
    assert main(["cluster", "--tokenizer", str(tiny_runs["tok"]), "--clusters", "4", "--method", method,
                 "--out", str(tmp_path / "map")]) == 0
    assert main(["redundancy", "--tokenizer", str(tiny_runs["tok"]), "--coarse-map", str(tmp_path / "map"),
                 "--num-images", "2", "--show", "2", "--out", str(tmp_path / "r")]) == 0
    stats = json.loads((tmp_path / "r" / "redundancy.json").read_text())
    assert [k for k in stats if k not in ("n", "reconstruction")] == rows


@pytest.mark.parametrize("component", ["stage2", "tokenizer"])
def test_an_export_missing_a_components_weights_says_it_was_copied_in_part(exported, tmp_path, component):
    """An export whose stage2/ or tokenizer/ lacks model.safetensors (a copy cut short) was read as a run
    directory: "weights file .../model.safetensors not found; is the run directory complete?"."""
    from coarse2fine.config import UserError
    from coarse2fine.pipeline import CTFPipeline

    folder = shutil.copytree(exported, tmp_path / "ctf")
    (folder / component / "model.safetensors").unlink()
    with pytest.raises(UserError, match=rf"component {component} \({component}/\) is missing or incomplete "
                                        r"\(no model.safetensors\); the folder was copied in part"):
        CTFPipeline.from_pretrained(folder)


@pytest.mark.parametrize("kind, kwargs, needle", [
    ("ar", {"opts": {"temperature": 1.0}}, r"opts must be a coarse2fine.sampling.StageSampling, got dict; e.g. "
                                           r"dataclasses.replace\(pipe.default, temperature=1.0\)"),
    ("ctf", {"coarse_opts": {"temperature": 1.0}}, r"coarse_opts must be .*pipe.coarse_default"),
    ("ctf", {"fine_opts": {}}, r"fine_opts must be .*StageSampling, got dict"),  # was: the default, without a word
])
def test_pipeline_options_that_are_not_a_stage_sampling_are_one_line(pipelines, kind, kwargs, needle):
    """Sampling options given as a dict ended in "AttributeError: 'dict' object has no attribute 'validate'"."""
    from coarse2fine.config import UserError

    with pytest.raises(UserError, match=needle):
        pipelines[kind]([1], decode_images=False, **kwargs)
