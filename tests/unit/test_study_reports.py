"""The colour curve's and the convergence study's reports (benchmarks/quality/): rows scored by different
classifiers are never mixed, a rerun lane rescores under a new classifier, and the convergence tables are seed
means with the sample std and per-seed counts."""
import json
from pathlib import Path

import pytest

QUALITY = Path(__file__).resolve().parents[2] / "benchmarks" / "quality"


@pytest.fixture
def quality(monkeypatch):
    monkeypatch.syspath_prepend(str(QUALITY))
    import colour_curve_report
    import convergence_report

    return colour_curve_report, convergence_report


def _row(acc: float, clf: dict | None, **kw) -> dict:
    r = {"preset": "GPT-tiny", "steps": 1000, "seed": 0, "pipeline": "ctf", "temperature": 0.9, "cfg": 5.0,
         "train_cpu_s": 300.0, "class_accuracy": acc, "fd": 2000.0, **kw}
    if clf is not None:
        r["classifier"] = clf
    return r


def test_colour_curve_rows_of_two_classifiers_stay_apart(quality, tmp_path, monkeypatch):
    """The shipped classifier was retrained (0.789 -> 0.747 on real test images); the report had put the old
    rows under the new one's ceiling and target. A row now records its classifier, a rescored row does not
    replace the old one, and each table says which classifier scored it."""
    ccr, _ = quality
    new = {"test_accuracy": 0.7469, "test_reconstructed_accuracy": 0.686, "trained_on": "originals and their reconstructions"}
    monkeypatch.setattr(ccr, "shipped_classifier", lambda: new)
    rows = [_row(0.349, None), _row(0.498, new)]
    (tmp_path / "points.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = ccr.load(tmp_path)
    assert sorted(r["class_accuracy"] for r in loaded) == [0.349, 0.498]  # both kept: different instruments
    ccr.render(tmp_path)
    md = (tmp_path / "report.md").read_text()
    current, earlier = md.split("Scored by the earlier classifier")
    assert "0.498" in current and "0.349" not in current and "0.747" in current and "0.598" in current
    assert "0.349" in earlier and "0.498" not in earlier and "0.789" in earlier


def test_convergence_tables_are_seed_means_with_counts(quality, tmp_path):
    _, cr = quality
    km = cr.KM
    runs, entries = {}, {}
    for s, (fd_b, fd_c) in {0: (2400.0, 2300.0), 1: (2420.0, 2200.0), 2: (2380.0, 2450.0)}.items():
        runs[f"baseline_s{s}"] = {"stage": "baseline", "seed": s, "map": None, "heldout": {"100": {"nll": 6.0}},
                                  "cpu_s": {"100": 60.0}}
        for stage in ("coarse", "fine"):
            runs[f"{stage}_{km}_s{s}"] = {"stage": stage, "seed": s, "map": km, "heldout": {"100": {"nll": 3.0}},
                                          "cpu_s": {"100": 20.0}}
        for kind, fd in (("baseline", fd_b), ("ctf", fd_c)):
            entries[f"head/{kind}/100/s{s}"] = {"metrics": {"FD": fd, "KID": 1.0, "ClassAcc": 0.5}}
    db = {"runs": runs, "entries": entries}
    cur = cr.mean_curves(db, [0, 1, 2])
    ctf, base = cur["ctf"][0], cur["baseline"][0]
    assert ctf["FD"] == pytest.approx(2316.667, abs=1e-3) and ctf["FD_sd"] == pytest.approx(125.83, abs=0.01)
    assert base["FD"] == pytest.approx(2400.0) and base["cpu_s"] == 60.0 and ctf["cpu_s"] == 40.0
    lines = cr.matched_section(cur, "## t")
    row = next(ln for ln in lines if "(baseline's)" in ln)
    assert "2317 ± 126" in row and row.endswith("| 2/3, 0/3 |")  # CTF's FD lower in seeds 0 and 1 only


def test_sampling_sweep_settings_parse_and_refuse_unknown_knobs(monkeypatch):
    """`colour_sampling_sweep.py --settings` is how a second point is swept; a mistyped knob must stop the
    sweep before any sampling instead of being dropped (a silently default top-p row would mislabel a table)."""
    monkeypatch.syspath_prepend(str(QUALITY))
    import colour_sampling_sweep as sweep

    got = sweep.parse_settings("t=0.9 cfg=3; t=0.8 cfg=3 k=16 p=0.8 cfg2=2;")
    assert got == [{"t": 0.9, "cfg": 3.0}, {"t": 0.8, "cfg": 3.0, "k": 16, "p": 0.8, "cfg2": 2.0}]
    assert sweep.key(got[1]) == "t=0.8 cfg=3.0 k=16 p=0.8 cfg2=2.0"
    with pytest.raises(SystemExit, match="unknown knob 'topp'"):
        sweep.parse_settings("t=0.9 cfg=3 topp=0.8")
    with pytest.raises(SystemExit, match="needs t= and cfg="):
        sweep.parse_settings("t=0.9")
