"""The first quality study, kept as a record (benchmarks/quality/archive/): its driver still loads on the
maintained study core, and its report renderer still turns the committed results.json into the committed
report.md, so those results keep the code that made them."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARCHIVE = ROOT / "benchmarks" / "quality" / "archive"


def _load(monkeypatch, name: str):
    monkeypatch.syspath_prepend(str(ARCHIVE.parent))
    monkeypatch.syspath_prepend(str(ARCHIVE))
    spec = importlib.util.spec_from_file_location(f"c2f_archive_{name}", ARCHIVE / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, mod)  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_archived_driver_loads_on_the_study_core(monkeypatch, capsys):
    study = _load(monkeypatch, "study")
    import study_core

    assert issubclass(study.FirstStudy, study_core.Study) and study.Plan is study_core.Plan
    with pytest.raises(SystemExit) as exit_:
        study.main(["--help"])
    assert exit_.value.code == 0 and "not maintained" in capsys.readouterr().out  # --help says what it is


def test_archived_report_renders_the_committed_report_from_its_results(monkeypatch, tmp_path):
    report = _load(monkeypatch, "study_report")
    committed = ROOT / "benchmarks" / "results" / "quality_fashionmnist"
    report.render(json.loads((committed / "results.json").read_text()), tmp_path)
    assert (tmp_path / "report.md").read_text() == (committed / "report.md").read_text()
    assert (tmp_path / "convergence.png").stat().st_size > 0
