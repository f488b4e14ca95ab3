"""The README's main job at smoke-test size: every step runs and writes what it promises."""
import hashlib
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from coarse2fine.cli import main
from coarse2fine.apps.demo import DemoPlan, Progress, demo_precision, run_demo
from coarse2fine.apps.demo_stages import LATER_STAGES_NICE
from coarse2fine.data.builtin import demo_asset_dir as asset_dir

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("demo")
    plan = DemoPlan.quick()
    plan.limit_per_class, plan.per_class, plan.eval_per_class = 12, 1, 1
    plan.workers = 3  # the parallel stage processes, whatever this machine's core count
    with pytest.MonkeyPatch.context() as mp:
        # the stage processes inherit this: AVX2-only kernels, where the demo must choose fp32
        mp.setenv("ATEN_CPU_CAPABILITY", "avx2")
        mp.setenv("COARSE2FINE_CACHE", str(out / "cache"))
        report = run_demo(out, plan, progress=False)
    return out, report


def test_demo_writes_report_grid_runs_and_scores(demo):
    out, report = demo
    for f in ["report.md", "report.json", "samples_ctf_vs_baseline.png", "coarse/model.safetensors",
              "fine/model.safetensors", "baseline/model.safetensors", "tokenizer/model.safetensors"]:
        assert (out / f).is_file(), f
    text = (out / "report.md").read_text()
    assert "stage 2 given the true coarse labels" in text and "baseline (next-token)" in text
    assert "How to read" in text and "class accuracy" in text
    for stage in ("coarse", "fine", "baseline"):
        h = report["models"][stage]["heldout"]
        assert 0.0 <= h["acc"] <= 1.0 and h["count"] == 120
    for name in ("ctf", "baseline"):
        s = report["evaluation"][name]
        assert s["n"] == 10 and s["m"] == 1000 and np.isfinite(s["fd"]) and np.isfinite(s["kid"])
        assert 0.0 <= s["class_accuracy"] <= 1.0
    npz = np.load(out / "samples_ctf" / "samples.npz")
    assert npz["arr_0"].shape == (10, 32, 32, 3) and npz["arr_0"].dtype == np.uint8
    assert npz["labels"].tolist() == list(range(10))


def test_demo_uses_shipped_tokenizer_parallel_stages_and_forced_fp32(demo):
    out, report = demo
    assert report["tokenizer"]["source"].startswith("shipped")
    assert (out / "tokenizer" / "model.safetensors").read_bytes() == (asset_dir() / "tokenizer" / "model.safetensors").read_bytes()
    assert report["stage_workers"] == 3  # asked for: one one-thread process per stage
    for stage in ("coarse", "fine", "baseline"):
        assert (out / stage / "train.log").is_file()
        # whatever this CPU has, the stages ran with ATEN_CPU_CAPABILITY=avx2: fp32
        assert report["models"][stage]["dtype"] == "float32"
    # fewer cores than stages (CI's two): the longest stage, the baseline, keeps its priority and the CTF stages
    # run niced, so that it gets a core to itself instead of 2/3 of one (the colour demo took ~31 min, not ~26)
    nice = {s: report["models"][s]["nice"] for s in ("coarse", "fine", "baseline")}
    later = LATER_STAGES_NICE if len(os.sched_getaffinity(0)) < 3 else 0
    assert nice["coarse"] - nice["baseline"] == later and nice["fine"] - nice["baseline"] == later, nice
    cpu = report["cpu"]
    # torch read ATEN_CPU_CAPABILITY when this process started it, before the fixture set it
    assert cpu["kernels"] == torch.backends.cpu.get_cpu_capability()
    assert cpu["kind"] in ("AVX512-BF16", "AVX512 without BF16", "AVX2-only", "no AVX2", "unknown")
    assert f"CPU: {cpu['model']}, {cpu['kind']} (torch kernels {cpu['kernels']})" in (out / "report.md").read_text()


def test_stage_workers_one_per_stage_from_two_cores(monkeypatch):
    from coarse2fine.apps.demo import stage_workers

    for cores, auto in ((1, 1), (2, 3), (16, 3)):
        monkeypatch.setattr("os.sched_getaffinity", lambda pid, n=cores: set(range(n)), raising=False)
        assert stage_workers(DemoPlan()) == auto
    assert stage_workers(DemoPlan(workers=2)) == 2 and stage_workers(DemoPlan(workers=9)) == 3


def test_demo_precision_honours_capped_kernels(monkeypatch):
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert demo_precision("auto") == "fp32" and demo_precision("bf16") == "bf16"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    from coarse2fine.precision import bf16_pays_off

    # uncapped: "auto" stays for the trainer to resolve where bf16 is native, else fp32
    assert demo_precision("auto") == ("auto" if bf16_pays_off("cpu") else "fp32")


def test_progress_lines_give_elapsed_and_remaining():
    lines = []
    bar = Progress(DemoPlan(), log=lines.append)
    bar.start("tokenizer", "tokenizer")
    bar.end()
    bar.start("codes", "codes")
    bar.update(0.5, "half")
    assert all("elapsed" in ln and "left" in ln for ln in lines) and lines[0].startswith("1/6")
    # the later phases' expected minutes are in the estimate: at least the models' share
    assert bar.remaining(0.5) >= Progress.EXPECTED["models"] * 0.25


def test_shipped_assets_match_manifest_and_load():
    from coarse2fine.checkpoint import load_vq
    from coarse2fine.eval.classifier import load_classifier

    m = json.loads((asset_dir() / "manifest.json").read_text())
    for rel, sha in m["sha256"].items():
        assert hashlib.sha256((asset_dir() / rel).read_bytes()).hexdigest() == sha, rel
    assert load_vq(asset_dir() / "tokenizer").cfg.codebook_size == 4096
    assert load_classifier(asset_dir() / "classifier")[1]["test"]["accuracy"] > 0.8
    total = sum(f.stat().st_size for f in asset_dir().rglob("*") if f.is_file())
    assert total < 8 * 2**20  # "a few MB"


def test_make_demo_assets_is_reproducible(tmp_path):
    spec = importlib.util.spec_from_file_location("make_demo_assets", ROOT / "scripts" / "make_demo_assets.py")
    mda = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mda)
    n = torch.get_num_threads()
    try:
        a = mda.build(tmp_path / "a", vq_steps=4, clf_epochs=1, limit_per_class=8, log=lambda m: None)
        b = mda.build(tmp_path / "b", vq_steps=4, clf_epochs=1, limit_per_class=8, log=lambda m: None)
        # --classifier-only: the tokenizer kept byte for byte, the classifier retrained to the same weights
        c = mda.build(tmp_path / "c", clf_epochs=1, limit_per_class=8, log=lambda m: None,
                      tokenizer_from=tmp_path / "a")
    finally:
        torch.set_num_threads(n)
        torch.use_deterministic_algorithms(False)
    assert a == b and mda.same_assets(tmp_path / "a", tmp_path / "b") == []
    assert c["sha256"] == a["sha256"] and mda.same_assets(tmp_path / "a", tmp_path / "c") == []


def test_sample_cli_is_seeded_and_checks_labels(demo, capsys):
    out, _ = demo
    args = ["sample", "--coarse", str(out / "coarse"), "--fine", str(out / "fine"), "--classes", "1,3",
            "--per-class", "2"]
    assert main(args + ["--out", str(out / "s1")]) == 0
    assert main(args + ["--out", str(out / "s2")]) == 0
    a, b = np.load(out / "s1" / "samples.npz"), np.load(out / "s2" / "samples.npz")
    assert np.array_equal(a["arr_0"], b["arr_0"]) and a["labels"].tolist() == [1, 1, 3, 3]
    assert main(["sample", "--baseline", str(out / "baseline"), "--classes", "10", "--out", str(out / "s3")]) == 2
    assert "out of range" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # refused while parsing, naming the flag
        main(["sample", "--baseline", str(out / "baseline"), "--temperature", "0", "--out", str(out / "s3")])
    assert e.value.code == 2 and "argument --temperature: must be a finite number > 0" in capsys.readouterr().err
    # a run of the wrong stage is refused by name
    assert main(["sample", "--coarse", str(out / "baseline"), "--fine", str(out / "fine"), "--out", str(out / "s4")]) == 2
    assert "holds a baseline model" in capsys.readouterr().err
    assert main(["sample", "--baseline", str(out / "nowhere"), "--out", str(out / "s5")]) == 2


def test_cluster_cli_and_redundancy(demo, capsys):
    out, _ = demo
    assert main(["cluster", "--tokenizer", str(out / "tokenizer"), "--clusters", "64", "--out",
                 str(out / "cm64")]) == 0
    assert "4096 codes -> 64 clusters" in capsys.readouterr().out
    assert main(["redundancy", "--tokenizer", str(out / "tokenizer"), "--coarse-map", str(out / "cm64"),
                 "--num-images", "16", "--out", str(out / "red")]) == 0
    assert (out / "red" / "redundancy.png").is_file()


def test_ctf_decodings_without_stage2_network(demo, capsys):
    """The peer decodings (random member as MASC, centroid member) sample from stage 1 alone; the codes
    stay inside the predicted clusters; redraw keeps the coarse maps and changes the details."""
    from coarse2fine.pipeline import CTFPipeline

    out, _ = demo
    labels = torch.arange(4)
    net = CTFPipeline.from_runs(out / "coarse", out / "fine")
    alone = CTFPipeline.from_runs(out / "coarse")
    assert alone.decodings == ("random-member", "centroid-member")
    ref = net(labels, seed=5)
    for how in ("random-member", "centroid-member"):
        o = alone(labels, seed=5, fine_decoding=how)
        assert torch.equal(o.coarse, ref.coarse)  # stage 1 draws the same maps for the same seed
        assert torch.equal(alone.cmap.phi[o.codes], o.coarse)
        assert o.images.shape == ref.images.shape
    r1 = net.redraw(ref.coarse, labels, seed=6)
    r2 = net.redraw(ref.coarse, labels, seed=7)
    assert torch.equal(r1.coarse, ref.coarse) and not torch.equal(r1.codes, r2.codes)
    assert main(["sample", "--coarse", str(out / "coarse"), "--fine-decoding", "centroid-member",
                 "--per-class", "1", "--out", str(out / "s_centroid")]) == 0
    assert main(["sample", "--coarse", str(out / "coarse"), "--out", str(out / "s_x")]) == 2
    assert "--fine-decoding" in capsys.readouterr().err
    assert main(["sample", "--baseline", str(out / "baseline"), "--fine-decoding", "random-member",
                 "--out", str(out / "s_y")]) == 2


def test_emoji64_assets_match_manifest_and_load():
    """`demo --data emoji64` ships its own colour tokenizer (VQ-64-f8, L2) and the
    Lite0-probe classifier's head, each as its manifest says."""
    from coarse2fine.checkpoint import load_vq
    from coarse2fine.eval.classifier import load_classifier

    d = asset_dir("emoji64")
    m = json.loads((d / "manifest.json").read_text())
    for rel, sha in m["sha256"].items():
        assert hashlib.sha256((d / rel).read_bytes()).hexdigest() == sha, rel
    vq = load_vq(d / "tokenizer")
    assert vq.cfg.image_size == 64 and vq.cfg.codebook_size == 4096
    cfg = json.loads((d / "tokenizer" / "config.json").read_text())
    # the plain L2 settings, given whole (scripts/make_demo_assets.py says why not the cpu64 recipe)
    assert cfg["train"]["perceptual_weight"] == 0 and cfg["train"]["batch_size"] == 32
    assert cfg["train"]["steps"] == m["vq_steps"] >= 1000
    clf = load_classifier(d / "classifier")[1]
    assert clf["arch"]["type"] == "lite0-probe" and clf["test"]["accuracy"] > 0.70
    # it has seen what the shipped tokenizer makes: trained on its reconstructions too, and it reads them
    # (the earlier classifier, trained on originals only, read 0.457 on them and capped every sample score)
    from coarse2fine.tokenizer.vq import codebook_fingerprint

    fp = codebook_fingerprint(vq)
    assert clf["train"]["reconstructions_of"]["fingerprint"] == clf["test_reconstructed"]["fingerprint"] == fp
    assert clf["test_reconstructed"]["accuracy"] > 0.65
    assert sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) < 8 * 2**20


def test_plan_for_data_picks_the_colour_recipe_and_shipped_tokenizer():
    from coarse2fine.apps.demo import COLOUR

    grey, colour, other = DemoPlan.for_data(), DemoPlan.for_data("emoji64"), DemoPlan.for_data("fashion-mnist")
    assert (grey.resolution, grey.vq_preset, grey.tokenizer) == (32, "VQ-tiny", "shipped")
    assert (colour.resolution, colour.vq_preset, colour.tokenizer) == (64, "VQ-64-f8", "shipped")
    assert colour.gpt_preset == COLOUR["gpt_preset"] and colour.steps == COLOUR["steps"]
    assert (other.resolution, other.tokenizer) == (32, "train")  # no shipped tokenizer: trained here
    q = DemoPlan.quick("emoji64")
    assert q.resolution == 64 and q.tokenizer == "shipped" and q.steps == 12


def test_colour_demo_quick_runs_in_colour_and_scores_with_its_classifier(tmp_path, monkeypatch):
    """The colour path end to end at smoke size: 64 px RGB samples, the emoji64 classifier's scores,
    and the page's coarse maps in the clusters' own colours."""
    from coarse2fine.apps.app import Explorer

    torch.set_num_threads(1)
    monkeypatch.setenv("COARSE2FINE_CACHE", str(tmp_path / "cache"))
    plan = DemoPlan.quick("emoji64")
    plan.limit_per_class, plan.per_class, plan.eval_per_class, plan.workers = 12, 1, 2, 1
    report = run_demo(tmp_path / "demo", plan, progress=False)
    assert report["tokenizer"]["source"].startswith("shipped") and report["tokenizer"]["K"] == 4096
    npz = np.load(tmp_path / "demo" / "samples_ctf" / "samples.npz")
    assert npz["arr_0"].shape == (18, 64, 64, 3)
    for name in ("ctf", "baseline"):
        assert 0.0 <= report["evaluation"][name]["class_accuracy"] <= 1.0
    clf = report["evaluation"]["classifier"]
    assert clf["dir"] == str(asset_dir("emoji64") / "classifier") and clf["trained_on"] == "emoji64"
    colours = Explorer.from_demo(tmp_path / "demo").cluster_colors().int()
    assert (colours.max(1).values - colours.min(1).values).max() > 20  # not grey (0 there): clusters have hues
