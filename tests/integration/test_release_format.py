"""One release format: runs relocate, exports load in a fresh process, every model/tokenizer/codes
pairing is fingerprint-checked, bad checkpoint files fail in one line, save -> load is bit-exact."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from coarse2fine.cli import main
from coarse2fine.data import build_dataset
from coarse2fine.data.codes import extract_codes
from coarse2fine.training.tokenizer import train_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

STEPS = ["--steps", "2", "--batch-size", "8", "--dtype", "fp32", "--ckpt-every", "2", "--no-progress",
         "--device", "cpu"]


class NotAWeight:  # pickled into a file: weights_only must refuse it
    pass


def build_tree(root, other=True):
    """runs/{tok, codes, cmap, coarse, fine, baseline} (+ tok_other, codes_other: another tokenizer
    and its codes), written by the real writers (train-tokenizer, extract-codes, cluster, train)."""
    ds = build_dataset("default", 32, "train", limit_per_class=2)
    for name, seed in (("tok", 0), ("tok_other", 1))[:2 if other else 1]:
        train_tokenizer("VQ-tiny", root / name, ds, steps=1, batch_size=8, seed=seed, progress=False)
        extract_codes(root / name, ds, root / name.replace("tok", "codes"), flip=False, progress=False)
    assert main(["cluster", "--tokenizer", str(root / "tok"), "--clusters", "16", "--out", str(root / "cmap")]) == 0
    for stage in ("coarse", "fine", "baseline"):
        cm = ["--coarse-map", str(root / "cmap")] if stage != "baseline" else []
        assert main(["train", "--stage", stage, "--codes", str(root / "codes"), "--heldout", str(root / "codes"),
                     "--preset", "GPT-tiny", "--out", str(root / stage)] + cm + STEPS) == 0
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return build_tree(tmp_path_factory.mktemp("tree") / "runs")


def _sample(argv, out):
    assert main(argv + ["--classes", "0,3", "--per-class", "2", "--out", str(out)]) == 0
    return np.load(out / "samples.npz")["arr_0"]


def _one_line_error(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    assert "weights_only=False" not in err and "can still be loaded" not in err, err
    return err


def test_copied_run_tree_samples_identically(tmp_path, capsys):
    src = build_tree(tmp_path / "a" / "runs", other=False)
    ctf = lambda r: ["sample", "--coarse", str(r / "coarse"), "--fine", str(r / "fine")]
    base = lambda r: ["sample", "--baseline", str(r / "baseline")]
    before = _sample(ctf(src), tmp_path / "s1"), _sample(base(src), tmp_path / "s2")
    dst = tmp_path / "elsewhere" / "runs"
    shutil.copytree(src, dst)
    shutil.rmtree(src)
    after = _sample(ctf(dst), tmp_path / "s3"), _sample(base(dst), tmp_path / "s4")
    assert np.array_equal(before[0], after[0]) and np.array_equal(before[1], after[1])
    # a run copied without its tokenizer: one line naming the fingerprint and the fix
    alone = tmp_path / "alone"
    shutil.copytree(dst / "baseline", alone)
    fp = json.loads((alone / "config.json").read_text())["tokenizer"]["fingerprint"]
    _one_line_error(capsys, ["sample", "--baseline", str(alone), "--out", str(tmp_path / "s5")],
                    fp, "pass --tokenizer DIR")
    assert np.array_equal(_sample(["sample", "--baseline", str(alone), "--tokenizer", str(dst / "tok")],
                                  tmp_path / "s6"), before[1])


def test_other_tokenizer_or_codes_refused(runs, tmp_path, capsys):
    # baseline: same K, another codebook -> garbage images before; now one line (exit 2)
    _one_line_error(capsys, ["sample", "--baseline", str(runs / "baseline"), "--tokenizer", str(runs / "tok_other"),
                             "--out", str(tmp_path / "s")], "fingerprint", "pass --tokenizer DIR")
    _one_line_error(capsys, ["sample", "--coarse", str(runs / "coarse"), "--fine", str(runs / "fine"), "--tokenizer",
                             str(runs / "tok_other"), "--out", str(tmp_path / "s")], "fingerprint")
    for stage in ("baseline", "fine"):
        _one_line_error(capsys, ["eval-tokens", "--run", str(runs / stage), "--codes", str(runs / "codes_other")],
                        "codes_other", "extract the codes with the run's tokenizer")
    assert main(["eval-tokens", "--run", str(runs / "baseline"), "--codes", str(runs / "codes")]) == 0


def test_export_loads_in_a_fresh_process(runs, tmp_path, capsys):
    from coarse2fine.config import UserError
    from coarse2fine.pipeline import ARPipeline, CTFPipeline

    ctf, base = tmp_path / "ctf", tmp_path / "base"
    assert main(["export", "--coarse", str(runs / "coarse"), "--fine", str(runs / "fine"), "--out", str(ctf)]) == 0
    assert main(["export", "--baseline", str(runs / "baseline"), "--out", str(base)]) == 0
    assert sorted(p.name for p in ctf.iterdir()) == ["README.md", "coarse_map", "model_index.json", "stage1",
                                                    "stage2", "tokenizer"]
    assert sorted(p.name for p in base.iterdir()) == ["README.md", "baseline", "model_index.json", "tokenizer"]
    index = json.loads((ctf / "model_index.json").read_text())
    assert index["_class_name"] == "CTFPipeline" and index["format_version"] == 1
    assert index["components"]["stage2"] == "stage2" and (ctf / "coarse_map" / "coarse_map.safetensors").is_file()
    for sub in ("tokenizer", "stage1", "stage2"):
        assert (ctf / sub / "config.json").is_file() and (ctf / sub / "model.safetensors").is_file()
    card = (ctf / "README.md").read_text()
    assert "held-out NLL" in card and "CTFPipeline.from_pretrained" in card and "| stage1 | default" in card
    assert str(runs) not in (ctf / "stage1" / "config.json").read_text()  # no local paths in a release
    # a fresh process, only the folder: same codes as from_runs with the same seed
    code = ("import sys, torch; from coarse2fine.pipeline import CTFPipeline, ARPipeline; "
            "c = CTFPipeline.from_pretrained(sys.argv[1])(torch.tensor([0, 1, 2]), seed=3, decode_images=False); "
            "b = ARPipeline.from_pretrained(sys.argv[2])(torch.tensor([0, 1, 2]), seed=3, decode_images=False); "
            "torch.save({'ctf': c.codes, 'base': b.codes}, sys.argv[3])")
    shutil.move(str(ctf), tmp_path / "moved_ctf")  # the folder is self-contained: it may move too
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "moved_ctf"), str(base), str(tmp_path / "c.pt")],
                   check=True, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)})
    got = torch.load(tmp_path / "c.pt")
    want_c = CTFPipeline.from_runs(runs / "coarse", runs / "fine")(torch.tensor([0, 1, 2]), seed=3, decode_images=False)
    want_b = ARPipeline.from_runs(runs / "baseline")(torch.tensor([0, 1, 2]), seed=3, decode_images=False)
    assert torch.equal(got["ctf"], want_c.codes) and torch.equal(got["base"], want_b.codes)
    # refusals: a non-empty --out, a missing folder (a path is never sent to the hub), the wrong pipeline class
    _one_line_error(capsys, ["export", "--baseline", str(runs / "baseline"), "--out", str(base)], "not empty")
    with pytest.raises(UserError, match="is not a folder"):
        CTFPipeline.from_pretrained(tmp_path / "no-such-model")
    with pytest.raises(UserError, match="is a ARPipeline export, not a CTFPipeline one"):
        CTFPipeline.from_pretrained(base)
    _one_line_error(capsys, ["export", "--baseline", str(runs / "baseline"), "--tokenizer", str(runs / "tok_other"),
                             "--out", str(tmp_path / "x")], "fingerprint")
    assert not (tmp_path / "x").exists()


def _resume(run, preset="GPT-tiny"):
    return ["train", "--stage", "baseline", "--codes", str(run.parent / "codes"), "--preset", preset,
            "--out", str(run)] + STEPS


def test_bad_checkpoint_files_fail_in_one_line(runs, tmp_path, capsys):
    empty, evil = tmp_path / "empty.pt", tmp_path / "evil.pt"
    empty.write_bytes(b"")
    torch.save({"model": {"w": torch.zeros(2)}, "extra": NotAWeight()}, evil)
    for f, what in ((empty, "empty (0 bytes)"), (evil, "refused for safety")):
        _one_line_error(capsys, ["cluster", "--tokenizer", str(f), "--vq-preset", "VQ-tiny", "--out",
                                 str(tmp_path / "cm")], what)
    # state.pt on --resume: empty, a pickle of an arbitrary object, another preset's state
    run = runs.parent / "resume_me"
    shutil.copytree(runs / "codes", runs.parent / "codes")
    assert main(_resume(run)[:-len(STEPS)] + ["--steps", "1"] + STEPS[2:]) == 0
    good = (run / "state.pt").read_bytes()
    (run / "state.pt").write_bytes(b"")
    _one_line_error(capsys, _resume(run) + ["--resume"], "empty (0 bytes)", "delete it to start fresh")
    torch.save({"model": NotAWeight(), "step": 1}, run / "state.pt")
    _one_line_error(capsys, _resume(run) + ["--resume"], "refused for safety")
    other = runs.parent / "other_preset"
    assert main(_resume(other, "GPT-small")[:-len(STEPS)] + ["--steps", "1"] + STEPS[2:]) == 0
    shutil.copyfile(other / "state.pt", run / "state.pt")
    _one_line_error(capsys, _resume(run) + ["--resume"], "another preset's or run's state")
    (run / "state.pt").write_bytes(good)
    assert main(_resume(run) + ["--resume"]) == 0
    # the release weights: an empty model.safetensors
    (tmp_path / "b").mkdir()
    shutil.copy(runs / "baseline" / "config.json", tmp_path / "b")
    (tmp_path / "b" / "model.safetensors").write_bytes(b"")
    _one_line_error(capsys, ["sample", "--baseline", str(tmp_path / "b"), "--out", str(tmp_path / "s")], "empty")


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def test_save_load_bit_exact_every_kind(tmp_path):
    from coarse2fine.checkpoint import load_run, load_vq, read_run_config, save_run
    from coarse2fine.config import UserError, gpt_config, to_dict, vq_config
    from coarse2fine.eval.classifier import ClassifierNet, load_classifier
    from coarse2fine.models import Transformer
    from coarse2fine.tokenizer.clustering import CoarseMap, cluster_codebook
    from coarse2fine.tokenizer.vq import VQModel

    torch.manual_seed(0)
    vq = VQModel(vq_config("VQ-tiny"))
    save_run(tmp_path / "vq", "vq", {"vq": to_dict(vq.cfg)}, vq)
    _same(vq.state_dict(), load_vq(tmp_path / "vq").state_dict())
    gpt = Transformer(gpt_config("GPT-tiny", vocab_size=64, num_classes=3, grid=4))
    save_run(tmp_path / "gpt", "gpt", {"stage": "baseline", "gpt": to_dict(gpt.cfg)}, gpt)
    model, meta = load_run(tmp_path / "gpt", "baseline")
    _same(gpt.state_dict(), model.state_dict())
    assert (meta["format"], meta["format_version"], meta["kind"]) == ("coarse2fine", 1, "gpt")
    clf = ClassifierNet(3, 16, width=4)
    save_run(tmp_path / "clf", "classifier", {"arch": clf.arch()}, clf)
    _same(clf.state_dict(), load_classifier(tmp_path / "clf")[0].state_dict())
    cmap = cluster_codebook(vq.codebook_normalized(), 8, "kmeans", 0, "fp")
    cmap.save(tmp_path / "cm.safetensors")
    back = CoarseMap.load(tmp_path / "cm.safetensors")
    assert all(torch.equal(getattr(cmap, f), getattr(back, f)) for f in ("phi", "members", "sizes", "centroids"))
    # runs written before the format version (no "format" keys) read as version 0
    cfg = json.loads((tmp_path / "gpt" / "config.json").read_text())
    legacy = {k: v for k, v in cfg.items() if k not in ("format", "format_version")}
    (tmp_path / "gpt" / "config.json").write_text(json.dumps(legacy))
    assert read_run_config(tmp_path / "gpt")["format_version"] == 0
    _same(gpt.state_dict(), load_run(tmp_path / "gpt")[0].state_dict())
    (tmp_path / "gpt" / "config.json").write_text(json.dumps({**cfg, "format_version": 2}))
    with pytest.raises(UserError, match="upgrade coarse2fine"):
        load_run(tmp_path / "gpt")


def test_version_0_run_finds_its_tokenizer_by_absolute_path(runs, tmp_path):
    """A baseline run as written before this format: codes.tokenizer_dir absolute, no "tokenizer"."""
    from coarse2fine.pipeline import ARPipeline

    old = tmp_path / "old"
    shutil.copytree(runs / "baseline", old)
    cfg = json.loads((old / "config.json").read_text())
    cfg = {k: v for k, v in cfg.items() if k not in ("format", "format_version", "tokenizer")}
    cfg["codes"]["tokenizer_dir"] = str((runs / "tok").resolve())
    (old / "config.json").write_text(json.dumps(cfg))
    a = ARPipeline.from_runs(old)(torch.tensor([1]), seed=0, decode_images=False).codes
    b = ARPipeline.from_runs(runs / "baseline")(torch.tensor([1]), seed=0, decode_images=False).codes
    assert torch.equal(a, b)
