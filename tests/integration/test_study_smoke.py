"""The quality study's --small run end to end on the embedded data (minutes on 2 CPU cores: slow)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

STUDY = Path(__file__).resolve().parents[2] / "benchmarks" / "quality" / "study.py"


@pytest.mark.slow
def test_small_study_writes_every_table_and_resumes(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("c2f_study", STUDY)
    study = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "c2f_study", study)  # dataclasses look their module up there
    spec.loader.exec_module(study)
    work, res = tmp_path / "work", tmp_path / "res"
    args = ["--small", "--data", "default", "--out", str(work), "--results", str(res)]
    assert study.main(args) == 0
    db = json.loads((res / "results.json").read_text())
    steps = db["plan"]["checkpoints"]
    for k in steps:
        for kind in ("ctf", "baseline"):
            m = db["entries"][f"conv/{kind}/{k}"]["metrics"]
            assert {"FD", "KID", "Precision", "Recall", "IS", "ClassAcc"} <= set(m)
    for key in ("abl/default", "abl/map/random-128", "abl/map/balanced-128", "abl/head/restricted",
                "abl/topk/1", "abl/t2/0.9", "abl/s2size/GPT-small"):
        assert key in db["entries"], key
    # stage-2 rows that reuse the default stage-1 samples differ from it only by the stage-2 knob
    assert db["entries"]["abl/topk/1"]["metrics"] != db["entries"]["abl/default"]["metrics"]
    report = (res / "report.md").read_text()
    assert "Status: partial" not in report and "(not run)" not in report
    for png in ("convergence.png", "redundancy.png", "samples_ctf_vs_baseline.png"):
        assert (res / png).stat().st_size > 0
    # a rerun reuses every finished run and score: nothing is trained or sampled again
    entries = db["entries"]
    written = {p: p.stat().st_mtime_ns for p in work.rglob("*") if p.suffix in (".safetensors", ".pt", ".npy", ".npz")}
    assert written
    assert study.main(args) == 0
    again = json.loads((res / "results.json").read_text())
    assert again["entries"] == entries and len(again["invocations"]) == 2
    # no weights, train state, codes or samples were written again
    assert {p: p.stat().st_mtime_ns for p in written} == written
