"""`coarse2fine sample`, flag by flag, on the session's tiny runs: every flag does what it says."""
from __future__ import annotations

import argparse

import numpy as np
import pytest

from coarse2fine.cli import build_parser, main


def _sample(tiny_runs, out, *flags, mode="ctf"):
    base = {"ctf": ["--coarse", str(tiny_runs["coarse"]), "--fine", str(tiny_runs["fine"])],
            "baseline": ["--baseline", str(tiny_runs["baseline"])],
            "pipeline": ["--pipeline", str(tiny_runs["release"])]}[mode]
    argv = ["sample", *base, "--classes", "0,3", "--per-class", "2", "--device", "cpu", "--threads", "1",
            "--out", str(out), *flags]
    assert main(argv) == 0, argv
    with np.load(out / "samples.npz") as z:
        return z["arr_0"], z["labels"]


@pytest.fixture(scope="module")
def ref(tiny_runs, tmp_path_factory, one_thread):
    d = tmp_path_factory.mktemp("ref")
    return {"ctf": _sample(tiny_runs, d / "ctf"), "baseline": _sample(tiny_runs, d / "b", mode="baseline")}


# flag -> (extra argv, mode, expectation): "differs" = other images than the reference run of that mode,
# "same" = identical images (the flag only changes where/how fast), ("like", argv) = identical to a run
# with argv instead, or a callable on (images, labels).
CASES = {
    "--seed": (["--seed", "7"], "ctf", "differs"),
    "--batch-size": (["--batch-size", "1"], "ctf", "differs"),  # batch b is seeded with seed + b
    "--classes": (["--classes", "1"], "ctf", lambda im, lab: lab.tolist() == [1, 1]),
    "--per-class": (["--per-class", "3"], "ctf", lambda im, lab: lab.tolist() == [0, 0, 0, 3, 3, 3]),
    "--device": (["--device", "cpu"], "ctf", "same"),
    # another thread count may reorder float reductions, so the draws may differ in rare tokens
    "--threads": (["--threads", "2"], "ctf", lambda im, lab: im.shape == (4, 32, 32, 3) and lab.tolist() == [0, 0, 3, 3]),
    "--dtype": (["--dtype", "bf16"], "ctf", lambda im, lab: im.shape == (4, 32, 32, 3)),
    "--tokenizer": ([], "ctf", "same"),  # filled in by the test: the runs' own tokenizer
    "--cfg": (["--cfg", "20"], "ctf", "differs"),
    # guidance on the first 0 tokens = no guidance at all
    "--cfg-interval": (["--cfg", "20", "--cfg-interval", "0"], "ctf", ("like", ["--cfg", "1.0"])),
    "--temperature": (["--temperature", "0.3"], "ctf", "differs"),
    "--top-k": (["--top-k", "1"], "ctf", "differs"),
    "--top-p": (["--top-p", "0.05"], "ctf", "differs"),
    "--cfg-2": (["--cfg-2", "20"], "ctf", "differs"),
    "--temperature-2": (["--temperature-2", "0.3"], "ctf", "differs"),
    "--top-k-2": (["--top-k-2", "1"], "ctf", "differs"),
    "--top-p-2": (["--top-p-2", "0.05"], "ctf", "differs"),
    "--baseline": ([], "baseline", lambda im, lab: lab.tolist() == [0, 0, 3, 3]),
    "--coarse": ([], "ctf", "same"),
    "--fine": ([], "ctf", "same"),
    "--fine-decoding": (["--fine-decoding", "network"], "ctf", "same"),  # the no-network ones: test_demo_quick
    "--out": ([], "ctf", "same"),
    "--pipeline": ([], "pipeline", "same"),  # the export of the same runs: the same images
    "--compile": (["--compile"], "ctf", "same"),  # torch.compile of the decode step: the same codes in fp32
}


def test_table_covers_every_sample_flag():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["sample"]
    flags = {s for a in sub._actions for s in a.option_strings if s.startswith("--") and s != "--help"}
    assert flags == set(CASES), flags ^ set(CASES)


@pytest.mark.parametrize("flag", sorted(CASES))
def test_sample_flag(tiny_runs, ref, tmp_path, flag):
    extra, mode, want = CASES[flag]
    if flag == "--tokenizer":
        extra = ["--tokenizer", str(tiny_runs["tok"])]
    images, labels = _sample(tiny_runs, tmp_path / "s", *extra, mode=mode)
    ref_images, ref_labels = ref["ctf" if mode == "pipeline" else mode]
    if isinstance(want, tuple):
        other, _ = _sample(tiny_runs, tmp_path / "other", *want[1], mode=mode)
        assert np.array_equal(images, other)
        assert not np.array_equal(images, _sample(tiny_runs, tmp_path / "cfg", "--cfg", "20", mode=mode)[0])
    elif want == "same":
        assert np.array_equal(images, ref_images) and np.array_equal(labels, ref_labels)
    elif want == "differs":
        assert images.shape == ref_images.shape and np.array_equal(labels, ref_labels)
        assert not np.array_equal(images, ref_images), f"{flag} changed nothing"
    else:
        assert want(images, labels), (images.shape, labels)


def test_sample_out_is_written_fresh(tiny_runs, tmp_path, capsys):
    """Finding 7: a reused --out kept the older, larger run's PNGs, and `eval --samples` scored the mixture."""
    from coarse2fine.data.sample_folder import read_samples

    out = tmp_path / "s"
    _sample(tiny_runs, out, "--per-class", "5")  # 10 images
    images, labels = _sample(tiny_runs, out)  # 4 images into the same folder
    assert sorted(f.name for f in out.iterdir()) == [  # .lock: the folder's lock, as in a run directory
        ".lock", "000000_c0.png", "000001_c0.png", "000002_c3.png", "000003_c3.png", "grid.png", "samples.npz"]
    loaded, loaded_labels, _ = read_samples(out)
    assert np.array_equal(loaded, images) and loaded_labels.tolist() == [0, 0, 3, 3]
    (out / "mine.txt").write_text("keep")
    assert main(["sample", "--baseline", str(tiny_runs["baseline"]), "--device", "cpu", "--out", str(out)]) == 2
    assert "did not write" in capsys.readouterr().err and (out / "mine.txt").read_text() == "keep"


def test_sample_from_a_baseline_release_folder(tiny_runs, ref, tmp_path, capsys):
    """`--pipeline` takes a baseline export too (its model_index.json says which), samples what --baseline
    samples, and refuses the stage-2 flags and the flags a release folder already answers."""
    out = tmp_path / "b"
    assert main(["sample", "--pipeline", str(tiny_runs["release_baseline"]), "--classes", "0,3", "--per-class", "2",
                 "--device", "cpu", "--threads", "1", "--out", str(out)]) == 0
    with np.load(out / "samples.npz") as z:
        assert np.array_equal(z["arr_0"], ref["baseline"][0])
    for extra, said in ((["--cfg-2", "2"], "--cfg-2 applies to the CTF stage 2 only"),
                        (["--tokenizer", str(tiny_runs["tok"])], "--tokenizer comes from the release folder")):
        assert main(["sample", "--pipeline", str(tiny_runs["release_baseline"]), "--device", "cpu",
                     "--out", str(tmp_path / "x"), *extra]) == 2
        assert said in capsys.readouterr().err
    assert main(["sample", "--pipeline", str(tiny_runs["tok"]), "--device", "cpu", "--out", str(tmp_path / "y")]) == 2
    assert "holds no model_index.json" in capsys.readouterr().err


def test_sample_fid_from_a_release_folder(tiny_runs, tmp_path, one_thread):
    """`sample-fid --pipeline` samples what the runs it was exported from sample, with the folder's own
    sampling defaults, and records the folder as its source."""
    import json

    common = ["--num-samples", "10", "--batch-size", "5", "--device", "cpu", "--no-progress"]
    assert main(["sample-fid", "--coarse", str(tiny_runs["coarse"]), "--fine", str(tiny_runs["fine"]), *common,
                 "--out", str(tmp_path / "runs")]) == 0
    assert main(["sample-fid", "--pipeline", str(tiny_runs["release"]), *common, "--out", str(tmp_path / "rel")]) == 0
    with np.load(tmp_path / "runs" / "samples.npz") as a, np.load(tmp_path / "rel" / "samples.npz") as b:
        assert np.array_equal(a["arr_0"], b["arr_0"]) and np.array_equal(a["labels"], b["labels"])
    settings = json.loads((tmp_path / "rel" / "fid_run.json").read_text())["settings"]
    assert settings["runs"] == {"pipeline": str(tiny_runs["release"].resolve())} and settings["kind"] == "ctf"
    assert settings["stage1"] == json.loads((tmp_path / "runs" / "fid_run.json").read_text())["settings"]["stage1"]


def test_eval_scores_a_release_folder_as_sample_fid_samples_it(tiny_runs, tmp_path, capsys, one_thread):
    """`eval --pipeline` samples in memory what `sample-fid --pipeline` writes (same seed, default batch), so
    both score the same; a samples folder refuses --seed, and --pipeline needs --num-samples."""
    import json

    rel = str(tiny_runs["release"])
    assert main(["sample-fid", "--pipeline", rel, "--num-samples", "10", "--device", "cpu", "--no-progress",
                 "--out", str(tmp_path / "fid")]) == 0
    score = ["--data", "default", "--ref-count", "12", "--kid-subset-size", "5", "--device", "cpu",
             "--cache-dir", str(tmp_path / "cache")]
    assert main(["eval", "--samples", str(tmp_path / "fid"), *score, "--json", str(tmp_path / "a.json")]) == 0
    assert main(["eval", "--pipeline", rel, "--num-samples", "10", *score, "--json", str(tmp_path / "b.json")]) == 0
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert [(r["metric"], r["value"]) for r in a["rows"]] == [(r["metric"], r["value"]) for r in b["rows"]]
    capsys.readouterr()
    assert main(["eval", "--pipeline", rel, *score]) == 2
    assert "--pipeline needs --num-samples" in capsys.readouterr().err
    assert main(["eval", "--samples", str(tmp_path / "fid"), "--seed", "1", *score]) == 2
    assert "--seed applies to --pipeline only" in capsys.readouterr().err
