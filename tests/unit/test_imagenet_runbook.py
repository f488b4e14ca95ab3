"""docs/imagenet.md and its rehearsal (benchmarks/imagenet/rehearse.py) cannot drift apart: the
rehearsal runs the document's own commands, every placeholder it substitutes must be in the document,
and every command the document prints parses with the `coarse2fine` parser of this checkout."""
import importlib.util
import shlex
import sys
from pathlib import Path

import pytest

from coarse2fine.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("rehearse", ROOT / "benchmarks" / "imagenet" / "rehearse.py")
rehearse = importlib.util.module_from_spec(spec)
sys.modules["rehearse"] = rehearse  # dataclasses look their module up there
spec.loader.exec_module(rehearse)
DOC = (ROOT / "docs" / "imagenet.md").read_text()


def _argv(text: str, assigned: dict[str, str]) -> list[str]:
    """The coarse2fine arguments of a run book line: $VAR expanded, the launcher dropped."""
    for k, v in assigned.items():
        text = text.replace(f"${k}", v)
    words = shlex.split(text)
    if words[0] == "coarse2fine":
        return words[1:]
    assert words[0] == "torchrun", text
    return words[words.index("coarse2fine.cli") + 1:]


def test_runbook_commands_join_continuations_in_order():
    doc = "# T\n\n## 1. A\n\nText:\n\n    tool a \\\n        --b c\n    tool d\n\n  - list item\n\n    tool e\n"
    cmds = rehearse.runbook_commands(doc)
    assert [(c.text, c.line, c.section) for c in cmds] == [("tool a --b c", 7, "1. A"), ("tool d", 9, "1. A"),
                                                          ("tool e", 13, "1. A")]
    with pytest.raises(ValueError, match="continuation"):
        rehearse.runbook_commands("x\n\n    tool a \\\n")


def test_rehearsal_runs_every_command_of_the_document_in_order(tmp_path):
    steps, subs = rehearse.plan(DOC, rehearse.Toy(), tmp_path / "imagenet")
    run = [s.run for s in steps if s.run is not None]
    assigned = {}
    order = []
    for text in run:
        m = rehearse.ASSIGN.match(text)
        if m:
            assigned[m.group(1)] = shlex.split(m.group(2))[0]
            continue
        argv = _argv(text, assigned)
        order.append(argv[0] + (f" {argv[argv.index('--stage') + 1]}" if "--stage" in argv else ""))
        if text.startswith("torchrun"):  # the run book's launcher, at two CPU processes
            assert text.startswith("torchrun --standalone --nproc_per_node 2 -m coarse2fine.cli "), text
    # the whole sequence of the issue: import, clusters, ten-crop codes, held-out codes, both stages and
    # the baseline, both FID sample sets, the offline score
    assert order == ["import-llamagen", "import-llamagen", "cluster", "extract-codes-imagenet", "extract-codes",
                     "train coarse", "train fine", "train baseline", "sample-fid", "sample-fid", "eval"]
    assert sorted(assigned) == ["C", "T"]
    assert [s for s in steps if s.kill_and_resume][0].run.count("--stage coarse") == 1
    # what is not run says why, and is only the templates of section 0 and OpenAI's evaluator
    skipped = [s.command.text.split()[0:2] for s in steps if s.run is None]
    assert skipped == [["torchrun", "--standalone"], ["torchrun", "--nnodes"], ["python", "evaluations/evaluator.py"]]
    assert all(s.why_not for s in steps if s.run is None)
    # the paper's settings stay as printed: LlamaGen's VQ-16 file, GPT-B, k-means to 512, both crop ranges
    text = " ".join(run)
    for kept in ("--vq vq_ds16_c2i.pt", "--clusters 512 --n-init 4", "--crop-ranges 1.1 1.05", "--preset GPT-B",
                 "--head full", "--lr 1e-4 --schedule cosine", "--cfg 2.0 --temperature 1.0"):
        assert kept in text, kept


def test_a_placeholder_missing_from_the_document_stops_the_rehearsal(tmp_path):
    # e.g. the paper's step count rewritten in the run book: the rehearsal must not silently run 1e6 steps
    doc = DOC.replace("--steps 1501200", "--steps 1500000")
    with pytest.raises(ValueError, match="--steps 1501200 --batch-size 256"):
        rehearse.plan(doc, rehearse.Toy(), tmp_path)
    with pytest.raises(ValueError, match="stage-1 train command"):
        rehearse.plan(DOC.replace("--stage coarse", "--stage fine"), rehearse.Toy(), tmp_path)
    # bf16 stays where the CPU runs it natively, and becomes fp32 elsewhere
    keep, _ = rehearse.plan(DOC, rehearse.Toy(bf16=True), tmp_path)
    cast, _ = rehearse.plan(DOC, rehearse.Toy(bf16=False), tmp_path)
    assert any("--dtype bf16" in (s.run or "") for s in keep)
    assert not any("--dtype bf16" in (s.run or "") for s in cast)


@pytest.mark.parametrize("toy", [False, True], ids=["as-printed", "rehearsed"])
def test_every_runbook_command_parses_with_the_cli(tmp_path, toy):
    """Flags renamed or removed in the CLI break the run book here, in the fast suite."""
    parser = build_parser()
    if toy:
        texts = [s.run for s in rehearse.plan(DOC, rehearse.Toy(), tmp_path)[0] if s.run is not None]
    else:
        texts = [c.text for c in rehearse.runbook_commands(DOC)
                 if not c.text.startswith(tuple(rehearse.NOT_RUN))]
    assigned = {}
    for text in texts:
        m = rehearse.ASSIGN.match(text)
        if m:
            assigned[m.group(1)] = shlex.split(m.group(2))[0]
            continue
        args = parser.parse_args(_argv(text, assigned))
        assert callable(args.func), text


def test_plan_flag_prints_the_rehearsed_commands(tmp_path, capsys):
    assert rehearse.main(["--work", str(tmp_path / "w"), "--plan"]) == 0
    said = capsys.readouterr().out
    assert "extract-codes-imagenet" in said and "SKIP" in said and not (tmp_path / "w").exists()
