"""The `coarse2fine` command as a whole: help everywhere, one flag vocabulary, one-line errors."""
from __future__ import annotations

import argparse
import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from coarse2fine.cli import build_parser, main

REPO = Path(__file__).resolve().parents[2]


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("coarse2fine",)):
    """(command path, parser) for the top-level parser and every (nested) subcommand."""
    yield path, parser
    # help lines as --help shows them: the developer tools are a second view of the same subparsers action
    shown = [a for g in parser._action_groups for a in g._group_actions if isinstance(a, argparse._SubParsersAction)]
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            helps = {c.dest: c.help for view in shown for c in view._choices_actions}
            for name, sub in a.choices.items():
                assert helps.get(name), f"{' '.join(path)} {name} has no help line"
                yield from _walk(sub, path + (name,))


def _flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in parser._actions for s in a.option_strings if s.startswith("--")}


def test_every_flag_of_every_subcommand_has_help():
    missing = [f"{' '.join(path)} {a.option_strings or a.dest}" for path, p in _walk(build_parser())
               for a in p._actions if not isinstance(a, argparse._SubParsersAction) and not (a.help or "").strip()]
    assert not missing, missing


# Old names of one concept, removed in favour of the docs/cli.md vocabulary.
RETIRED = {"--root": "--data-root", "--batch": "--batch-size", "--precision": "--dtype", "--bf16": "--dtype",
           "--no-bf16": "--dtype", "--resolution": "--image-size", "--no-ema": "--ema-decay", "--warmup": "--untimed-rounds", "--num-coarse": "--clusters", "--n": "--num-images", "--eval-n": "--num-images", "--limit": "--max-sequences"}


def test_one_name_per_concept():
    for path, p in _walk(build_parser()):
        flags = _flags(p)
        assert not set(flags) & set(RETIRED), (path, sorted(set(flags) & set(RETIRED)))
        # the tokenizer architecture is --vq-preset wherever a tokenizer is read or trained
        if "--preset" in flags and path[-1] in ("train-tokenizer", "reconstruct", "extract-codes", "cluster",
                                                "redundancy"):
            pytest.fail(f"{' '.join(path)} names the tokenizer architecture --preset; use --vq-preset")
        if "--device" in flags:  # one device default everywhere: cuda when available
            assert flags["--device"].default is None, path
        if "--dtype" in flags:  # bench compares named precisions (one or several), so has no 'auto'
            want = {"fp32", "bf16"} if path[1] == "bench" else {"auto", "fp32", "bf16"}
            assert set(flags["--dtype"].choices) == want, path


# One flag per meaning (docs/cli.md): concept -> (its flag, spellings that must never become a flag). The
# synonyms are the names such a flag takes elsewhere (argparse, LlamaGen, torchrun scripts, our own past).
SYNONYMS = {
    "image size in px": ("--image-size", ["--resolution", "--img-size", "--image-resolution", "--size", "--res"]),
    "images / sequences per batch": ("--batch-size", ["--batch", "--bs", "--global-batch-size", "--per-proc-batch-size"]),
    "precision": ("--dtype", ["--precision", "--bf16", "--fp32", "--amp", "--mixed-precision"]),
    "data location": ("--data-root", ["--root", "--data-dir", "--data-path", "--dataset-root"]),
    "data set name": ("--data", ["--dataset", "--data-name"]),
    "number of coarse clusters C": ("--clusters", ["--num-coarse", "--n-clusters", "--num-clusters", "--k"]),
    "how many generated samples": ("--num-samples", ["--n-samples", "--num-fid-samples", "--samples-count"]),
    "how many data images are measured": ("--num-images", ["--n", "--n-images", "--eval-n"]),
    "CPU threads": ("--threads", ["--num-threads", "--nthreads", "--omp-threads"]),
    "output": ("--out", ["--output", "--out-dir", "--output-dir", "--results-dir"]),
    "learning-rate warm-up": ("--warmup-steps", ["--warmup", "--warmup-iters"]),
    # import-llamagen --ema (pick a file's stored EMA weights) is another meaning, so not listed here
    "EMA of the released weights": ("--ema-decay", ["--no-ema", "--ema-rate", "--ema-beta"]),
    "classifier-free guidance scale": ("--cfg", ["--cfg-scale", "--guidance-scale", "--guidance"]),
    "a release folder": ("--pipeline", ["--release", "--export", "--pretrained", "--model-dir"]),
}


def synonyms_in(parser: argparse.ArgumentParser) -> list[str]:
    """'<command>: <synonym> (say <flag>)' for every refused spelling a (sub)command defines."""
    found = []
    for path, p in _walk(parser):
        flags = _flags(p)
        for concept, (flag, others) in SYNONYMS.items():
            found += [f"{' '.join(path)}: {s} (say {flag}: {concept})" for s in others if s in flags]
    return found


def test_no_synonym_of_a_documented_flag():
    assert synonyms_in(build_parser()) == []
    doc = (REPO / "docs" / "cli.md").read_text()
    for concept, (flag, _) in SYNONYMS.items():  # the page states every concept's one flag
        assert f"`{flag}" in doc, (concept, flag)


def test_a_new_synonym_cannot_pass():
    """The check above fails on a subcommand that adds a synonym, here the classifier's old --resolution."""
    from coarse2fine.cli._args import Parser

    parser = Parser(prog="coarse2fine")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("train-classifier", help="x").add_argument("--resolution", type=int)
    assert synonyms_in(parser) == ["coarse2fine train-classifier: --resolution (say --image-size: image size in px)"]


def test_help_lists_the_pipeline_in_order_and_developer_tools_apart(capsys):
    """`coarse2fine --help`: the user's commands in the order a run goes through them, every subcommand
    placed, and the developer tools after them in a group of their own."""
    import re

    from coarse2fine.cli import DEVELOPER_TOOLS, PIPELINE_ORDER

    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    user, tools = text.split("commands, in pipeline order:")[1].split("developer tools")
    listed = lambda block: re.findall(r"^    ([a-z][a-z-]+)", block, re.M)  # noqa: E731
    assert listed(user) == list(PIPELINE_ORDER) and listed(tools) == list(DEVELOPER_TOOLS)
    parser = build_parser()
    names = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(names) == set(PIPELINE_ORDER) | set(DEVELOPER_TOOLS)
    assert list(PIPELINE_ORDER).index("train") < list(PIPELINE_ORDER).index("sample") < \
        list(PIPELINE_ORDER).index("eval")


HEAVY = ["train", "train-tokenizer", "extract-codes", "extract-codes-imagenet", "reconstruct", "cluster", "sample",
         "sample-fid", "eval", "eval-tokens", "train-classifier", "redundancy", "bench sample", "bench train",
         "bench bound"]


def test_heavy_subcommands_take_threads():
    found = {" ".join(path[1:]): _flags(p) for path, p in _walk(build_parser())}
    for cmd in HEAVY:
        assert "--threads" in found[cmd], cmd
        assert found[cmd]["--threads"].default is None, cmd


def test_threads_flag_configures_torch(monkeypatch):
    seen = []
    monkeypatch.setattr("coarse2fine.distributed.configure_threads", lambda n=None: seen.append(n) or 1)
    # parses, then fails on the missing run: prepare() has run by then
    assert main(["eval-tokens", "--run", "/nonexistent", "--codes", "/nonexistent", "--threads", "3",
                 "--device", "cpu"]) == 2
    assert seen == [3]


def _one_line_error(capsys, argv: list[str], *needles: str) -> str:
    """argparse errors exit via SystemExit(2); run-time errors return 2. Either way: one stderr line."""
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2, (argv, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)
    return err


NUMBERS = [  # (argv, text the one line must contain); every one tracebacked or ran on the old code
    (["train", "--stage", "baseline", "--codes", "c", "--out", "o", "--lr", "-1"], "--lr"),
    (["train", "--stage", "baseline", "--codes", "c", "--out", "o", "--steps", "0"], "--steps"),
    (["train", "--stage", "baseline", "--codes", "c", "--out", "o", "--ema-decay", "1"], "--ema-decay"),
    (["train", "--stage", "baseline", "--codes", "c", "--out", "o", "--grad-clip", "nan"], "--grad-clip"),
    (["sample", "--baseline", "b", "--out", "o", "--batch-size", "0"], "--batch-size"),
    (["sample", "--baseline", "b", "--out", "o", "--cfg", "nan"], "--cfg"),
    (["sample", "--baseline", "b", "--out", "o", "--cfg", "inf"], "--cfg"),
    (["sample", "--baseline", "b", "--out", "o", "--temperature", "inf"], "--temperature"),
    (["sample", "--baseline", "b", "--out", "o", "--top-p", "0"], "--top-p"),
    (["sample", "--baseline", "b", "--out", "o", "--top-k", "-2"], "--top-k"),
    (["sample", "--baseline", "b", "--out", "o", "--cfg-interval", "-5"], "--cfg-interval"),
    (["sample", "--baseline", "b", "--out", "o", "--per-class", "0"], "--per-class"),
    (["sample-fid", "--baseline", "b", "--out", "o", "--num-samples", "-10"], "--num-samples"),
    (["train-tokenizer", "--out", "o", "--steps", "0"], "--steps"),
    (["train-tokenizer", "--out", "o", "--lr", "inf"], "--lr"),
    (["train-tokenizer", "--out", "o", "--time-budget", "-1"], "--time-budget"),
    (["reconstruct", "--tokenizer", "t", "--batch-size", "0"], "--batch-size"),
    (["extract-codes", "--tokenizer", "t", "--out", "o", "--batch-size", "-1"], "--batch-size"),
    (["extract-codes-imagenet", "--tokenizer", "t", "--data-root", "d", "--out", "o", "--workers", "-1"], "--workers"),
    (["cluster", "--tokenizer", "t", "--out", "o", "--clusters", "-3"], "--clusters"),
    (["eval", "--samples", "s", "--num-samples", "0"], "--num-samples"),
    (["eval", "--samples", "s", "--threads", "0"], "--threads"),
    (["eval-tokens", "--run", "r", "--codes", "c", "--max-sequences", "0"], "--max-sequences"),
    (["train-classifier", "--out", "o", "--epochs", "0"], "--epochs"),
    (["redundancy", "--tokenizer", "t", "--out", "o", "--num-images", "0"], "--num-images"),
    (["data", "show", "default", "--image-size", "nan"], "--image-size"),
    (["bench", "sample", "--repeats", "0"], "--repeats"),
    (["bench", "bound", "--mem-gbps", "-1"], "--mem-gbps"),
    (["presets", "--vocab", "0"], "--vocab"),
]


@pytest.mark.parametrize("argv,flag", NUMBERS, ids=[" ".join(a[:1] + a[-2:]) for a, _ in NUMBERS])
def test_bad_numbers_name_the_flag(capsys, argv, flag):
    _one_line_error(capsys, argv, f"argument {flag}", "must be")


@pytest.mark.parametrize("argv", [
    ["train-tokenizer", "--out", "o", "--preset", "VQ-tiny"],
    ["data", "show", "default", "--root", "x"],
    ["eval", "--samples", "s", "--root", "x"],
    ["bench", "sample", "--batch", "2"],
    ["sample", "--baseline", "b", "--out", "o", "--bf16"],
    ["train", "--stage", "coarse", "--codes", "c", "--out", "o", "--precision", "fp32"],
    ["eval-tokens", "--run", "r", "--codes", "c", "--limit", "3"],
    ["reconstruct", "--tokenizer", "t", "--n", "4"],
    ["redundancy", "--tokenizer", "t", "--out", "o", "--n", "4"],
])
def test_retired_names_are_rejected(capsys, argv):
    _one_line_error(capsys, argv, "unrecognized arguments")


def test_mode_ignored_flags_are_refused(capsys, tmp_path):
    for flag, value in [("--cfg-2", "3"), ("--temperature-2", "0.5"), ("--top-k-2", "4"), ("--top-p-2", "0.5"),
                        ("--fine", "f")]:
        _one_line_error(capsys, ["sample", "--baseline", "b", "--out", str(tmp_path / "s"), flag, value],
                        f"{flag} applies to the CTF stage 2 only; drop it with --baseline")
        _one_line_error(capsys, ["sample-fid", "--baseline", "b", "--out", str(tmp_path / "s"), flag, value],
                        f"{flag} applies to the CTF stage 2 only")
    _one_line_error(capsys, ["sample", "--coarse", "c", "--out", str(tmp_path / "s")], "--coarse needs --fine")
    _one_line_error(capsys, ["train", "--stage", "baseline", "--codes", "c", "--out", "o", "--coarse-map", "m"],
                    "--coarse-map applies to the coarse and fine stages (and the baseline with --cluster-loss-weight) only")
    _one_line_error(capsys, ["train", "--stage", "coarse", "--codes", "c", "--out", "o", "--head", "full"],
                    "--head applies to --stage fine only")
    _one_line_error(capsys, ["cluster", "--tokenizer", str(tmp_path), "--vq-preset", "VQ-16", "--out", "o"],
                    "--vq-preset applies to LlamaGen .pt files only")
    _one_line_error(capsys, ["redundancy", "--tokenizer", "t", "--coarse-map", "m", "--clusters", "4", "--out",
                             str(tmp_path / "r")], "--clusters applies when clustering here")


def test_wrong_kind_paths(capsys, tmp_path):
    f = tmp_path / "a_file"
    f.write_text("x")
    _one_line_error(capsys, ["sample", "--baseline", "b", "--out", str(f)], "is an existing file")
    _one_line_error(capsys, ["train", "--stage", "baseline", "--codes", str(tmp_path), "--out", str(f)],
                    "is an existing file")
    _one_line_error(capsys, ["reconstruct", "--tokenizer", str(tmp_path / "none")], "does not exist")
    _one_line_error(capsys, ["data", "show", "default", "--out", str(tmp_path)], "is a directory")
    _one_line_error(capsys, ["eval-tokens", "--run", str(tmp_path / "none"), "--codes", str(tmp_path),
                             "--device", "cpu"])
    _one_line_error(capsys, ["eval", "--samples", str(tmp_path / "none.npz"), "--device", "cpu"], "not found")


def test_device_errors(capsys):
    _one_line_error(capsys, ["eval-tokens", "--run", "r", "--codes", "c", "--device", "gpu0"], "is not a device")
    if not torch.cuda.is_available():
        _one_line_error(capsys, ["eval-tokens", "--run", "r", "--codes", "c", "--device", "cuda"],
                        "torch sees no CUDA device")


def test_full_disk_is_one_line(capsys, tmp_path, monkeypatch):
    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "p.png"))

    monkeypatch.setattr("coarse2fine.cli.data.save_grid", full)
    _one_line_error(capsys, ["data", "show", "default", "--image-size", "8", "--per-class", "1", "--out",
                             str(tmp_path / "p.png")], "No space left on device", "p.png", "another --out")


def test_sample_out_refuses_foreign_files(capsys, tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    _one_line_error(capsys, ["sample", "--baseline", "b", "--out", str(out)], "did not write", "notes.txt")
    assert (out / "notes.txt").read_text() == "mine"


def test_eval_never_scores_a_mixture(tmp_path):
    """A folder where an earlier, larger run left PNGs beside a new samples.npz (finding 7: N=39 for 10)."""
    from PIL import Image

    from coarse2fine.config import UserError
    from coarse2fine.data.sample_folder import read_samples

    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "samples.npz", arr_0=imgs, labels=np.arange(10))
    for i in range(39):  # the first 10 are the npz's images (the new run), the rest an earlier run's
        img = imgs[i] if i < 10 else rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(img).save(tmp_path / f"{i:06d}_c{i % 10}.png")
    with pytest.raises(UserError, match="mixes samples: 39 numbered PNGs but samples.npz holds 10"):
        read_samples(tmp_path)
    for i in range(10, 39):
        (tmp_path / f"{i:06d}_c{i % 10}.png").unlink()
    images, labels, note = read_samples(tmp_path)  # consistent: read from the npz
    assert np.array_equal(images, imgs) and labels.tolist() == list(range(10)) and "samples.npz" in note


def test_errors_through_the_real_entry_point():
    """python -m coarse2fine.cli: exit code 2, one stderr line, no traceback (argparse and run-time)."""
    env = {**os.environ, "PYTHONPATH": os.environ.get("C2F_TEST_SRC", str(REPO / "src")), "OMP_NUM_THREADS": "1"}
    for argv in (["sample", "--baseline", "b", "--out", "o", "--cfg-2", "3"],):  # one start: torch import costs ~5 s
        r = subprocess.run([sys.executable, "-m", "coarse2fine.cli", *argv], capture_output=True, text=True,
                           env=env, timeout=120)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert r.stderr.startswith("coarse2fine sample: error: ")


def test_help_of_every_subcommand_works(capsys):
    for path, _ in _walk(build_parser()):
        with pytest.raises(SystemExit) as e:
            main([*path[1:], "--help"])
        assert e.value.code == 0, path
        assert "usage: coarse2fine" in capsys.readouterr().out


def test_readme_commands_parse():
    """The command lines of the README and of docs/usage.md use the current flag names (argparse would
    reject a retired one)."""
    import shlex

    for page, least in (("README.md", 8), ("docs/usage.md", 15)):
        lines = [ln.split("  #")[0].strip() for ln in (REPO / page).read_text().splitlines()]
        cmds = [shlex.split(ln)[1:] for ln in lines if ln.startswith("coarse2fine ")]
        assert len(cmds) >= least, page
        parser = build_parser()
        for argv in cmds:
            args = parser.parse_args(argv)
            assert callable(args.func), (page, argv)


def test_readme_is_a_front_page():
    """README.md stays a front page: about 150 lines, one result table, and every relative link resolves
    (its numbers point at the docs/ page holding their evidence)."""
    import re

    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 160
    tables = [b for b in text.split("\n\n") if b.lstrip().startswith("|") and re.search(r"\d\.\d", b)]
    assert len(tables) == 1, "one headline result table; the studies live in docs/results.md"
    for page in ["README.md", *(f"docs/{p.name}" for p in (REPO / "docs").glob("*.md"))]:
        body = (REPO / page).read_text()
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", body):
            if not target.startswith("http"):
                assert ((REPO / page).parent / target).exists(), (page, target)
    assert "min" not in "".join(ln for ln in text.splitlines() if ln.startswith("|")), "no timing table"


@pytest.mark.parametrize("field,value", [("cfg_scale", float("nan")), ("cfg_scale", float("inf")),
                                         ("temperature", float("inf")), ("temperature", float("nan")),
                                         ("cfg_interval", -4)])
def test_library_sampling_rejects_non_finite(field, value):
    """The library checks too (sample-fid and the demo build StageSampling without the CLI converters)."""
    from coarse2fine.config import UserError
    from coarse2fine.sampling import StageSampling

    with pytest.raises(UserError):
        StageSampling(**{field: value}).validate(16, "stage 1")


def test_more_one_line_errors(capsys, tmp_path):
    """Found by trying every subcommand with odd input; each was a traceback before."""
    from coarse2fine.cli.models import parse_classes
    from coarse2fine.config import UserError

    with pytest.raises(UserError, match="names no class"):
        parse_classes(",", 10, 1)  # torch.cat of nothing
    _one_line_error(capsys, ["bench", "sample", "--compile", "weird"], "argument --compile")
    _one_line_error(capsys, ["bench", "bound", "--json", str(tmp_path)], "--json", "is a directory")
    _one_line_error(capsys, ["eval", "--samples", "s.npz", "--json", str(tmp_path)], "--json", "is a directory")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model.safetensors").write_bytes(b"")
    _one_line_error(capsys, ["extract-codes", "--tokenizer", "t", "--out", str(tmp_path / "run")],
                    "holds other files and no code extraction")


@pytest.mark.parametrize("argv", [["sample", "--baseline", "b", "--out", "o"], ["eval-tokens", "--run", "r", "--codes", "c"],
                                  ["train", "--stage", "coarse", "--codes", "c", "--out", "o"],
                                  ["bench", "sample"], ["eval", "--samples", "s"]])
def test_device_default_is_cuda_when_available(monkeypatch, argv):
    """sample and eval-tokens used to default to the CPU on a GPU machine while the rest chose CUDA."""
    from coarse2fine.cli._args import prepare

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr("coarse2fine.distributed.configure_threads", lambda n=None: 1)
    args = build_parser().parse_args(argv)
    prepare(args)
    assert args.device == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = build_parser().parse_args(argv)
    prepare(args)
    assert args.device == "cpu"


def test_app_opens_the_colour_demo_when_it_is_the_only_one(tmp_path, monkeypatch):
    """`coarse2fine app` with no runs opens runs/demo, or runs/demo_emoji64 when only the colour demo ran
    (it used to look for runs/demo only and fail)."""
    from coarse2fine.cli.app import default_demo_dir

    monkeypatch.chdir(tmp_path)
    assert default_demo_dir() == "runs/demo"  # nothing yet: the README's demo, whose error names it
    (tmp_path / "runs" / "demo_emoji64").mkdir(parents=True)
    assert default_demo_dir() == "runs/demo_emoji64"
    (tmp_path / "runs" / "demo").mkdir()
    assert default_demo_dir() == "runs/demo"


def test_demo_sampling_flags_reach_the_plan_and_default_per_data(monkeypatch):
    """At 2000 steps the colour demo's CFG 5 scored 0.449 where CFG 3 scored 0.598: a user who trains longer
    needs --cfg. The flags set stage 1's and the baseline's temperature and CFG; left out, each data set keeps
    its own default (CFG 3 and tau 0.9 grey, CFG 3 and tau 0.8 emoji64)."""
    import coarse2fine.cli.demo as demo_cli

    plans = []
    monkeypatch.setattr(demo_cli, "run_demo", lambda out, plan, progress: plans.append(plan))
    assert main(["demo", "--data", "emoji64", "--preset", "GPT-small", "--steps", "2000", "--cfg", "3",
                 "--temperature", "0.8", "--out", "unused"]) == 0
    assert (plans[-1].cfg_scale, plans[-1].temperature, plans[-1].gpt_preset, plans[-1].steps) == (3.0, 0.8, "GPT-small", 2000)
    assert main(["demo", "--data", "emoji64", "--out", "unused"]) == 0
    assert (plans[-1].cfg_scale, plans[-1].temperature) == (3.0, 0.8)
    assert main(["demo", "--out", "unused"]) == 0
    assert plans[-1].cfg_scale == 3.0


def test_demo_regularisation_flags_reach_the_models_and_long_runs_checkpoint(monkeypatch, capsys):
    """GPT-small past 2000 steps over-fits emoji64 without regularisation: `demo --dropout --ema-decay` train what
    colour_curve.py measured, and a long demo writes a train state every 500 steps so that a stop resumes
    there (it wrote one only at its last step)."""
    import coarse2fine.cli.demo as demo_cli
    from coarse2fine.apps.demo import demo_train_config

    plans = []
    monkeypatch.setattr(demo_cli, "run_demo", lambda out, plan, progress: plans.append(plan))
    assert main(["demo", "--data", "emoji64", "--steps", "3000", "--dropout", "0.1", "--ema-decay", "0.998",
                 "--out", "unused"]) == 0
    plan = plans[-1]
    assert (plan.dropout, plan.ema) == (0.1, 0.998)
    tcfg = demo_train_config(plan, "fp32")
    assert tcfg.ema_decay == 0.998 and tcfg.ckpt_every == 500 and tcfg.steps == 3000
    assert main(["demo", "--out", "unused"]) == 0  # left out: the grey defaults, no dropout and no EMA
    assert (plans[-1].dropout, plans[-1].ema) == (0.0, 0.0)
    assert demo_train_config(plans[-1], "fp32").ckpt_every == plans[-1].steps  # a short run: once, at its end
    # the colour demo trains regularised by default (GPT-tiny 3000: 0.607 with, 0.544 at 2000 without), and 0
    # turns either off
    assert main(["demo", "--data", "emoji64", "--out", "unused"]) == 0
    assert (plans[-1].dropout, plans[-1].ema, plans[-1].steps) == (0.1, 0.998, 3000)
    assert demo_train_config(plans[-1], "fp32").ema_decay == 0.998
    assert main(["demo", "--data", "emoji64", "--dropout", "0", "--ema-decay", "0", "--out", "unused"]) == 0
    assert (plans[-1].dropout, plans[-1].ema) == (0.0, 0.0)
    _one_line_error(capsys, ["demo", "--ema-decay", "1", "--out", "unused"], "--ema-decay")
    _one_line_error(capsys, ["demo", "--dropout", "-0.1", "--out", "unused"], "--dropout")
