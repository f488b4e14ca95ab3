"""The README's main job at smoke-test size: every step runs and writes what it promises."""
import numpy as np
import pytest
import torch

from coarse2fine.cli import main
from coarse2fine.apps.demo import DemoPlan, run_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("demo")
    plan = DemoPlan.quick()
    plan.vq_steps, plan.limit_per_class, plan.per_class = 10, 12, 1
    report = run_demo(out, plan, progress=False)
    return out, report


def test_demo_writes_report_grid_and_runs(demo):
    out, report = demo
    for f in ["report.md", "report.json", "samples_ctf_vs_baseline.png", "coarse/model.safetensors",
              "fine/model.safetensors", "baseline/model.safetensors", "tokenizer/model.safetensors"]:
        assert (out / f).is_file(), f
    text = (out / "report.md").read_text()
    assert "stage 2 given the true coarse labels" in text and "baseline (next-token)" in text
    for stage in ("coarse", "fine", "baseline"):
        h = report["models"][stage]["heldout"]
        assert 0.0 <= h["acc"] <= 1.0 and h["count"] == 120
    npz = np.load(out / "samples_ctf" / "samples.npz")
    assert npz["arr_0"].shape == (10, 32, 32, 3) and npz["arr_0"].dtype == np.uint8
    assert npz["labels"].tolist() == list(range(10))


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
