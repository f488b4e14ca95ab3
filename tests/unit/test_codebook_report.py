"""The codebook study's report (benchmarks/quality/codebook_report.py): the gap is CTF minus the baseline
per seed, summarised as mean ± sample std; CTF's NLL is stage 1 + stage 2; missing K are skipped."""
import json
from pathlib import Path

import pytest

QUALITY = Path(__file__).resolve().parents[2] / "benchmarks" / "quality"


@pytest.fixture
def report(monkeypatch):
    monkeypatch.syspath_prepend(str(QUALITY))
    import codebook_report

    return codebook_report


def _results(res: Path, k: int, rows: dict[int, tuple[float, float, float, float]]) -> None:
    """rows: seed -> (FD baseline, FD CTF, NLL baseline, NLL stage 1 = stage 2) at step 600."""
    km, runs, entries = f"kmeans-{k // 32}", {}, {}
    for s, (fd_b, fd_c, nll_b, nll_c) in rows.items():
        runs[f"baseline_s{s}"] = {"stage": "baseline", "seed": s, "map": None,
                                  "heldout": {"600": {"nll": nll_b}}, "cpu_s": {"600": 100.0}}
        for stage in ("coarse", "fine"):
            runs[f"{stage}_{km}_s{s}"] = {"stage": stage, "seed": s, "map": km,
                                          "heldout": {"600": {"nll": nll_c}}, "cpu_s": {"600": 30.0}}
        for kind, fd in (("baseline", fd_b), ("ctf", fd_c)):
            entries[f"head/{kind}/600/s{s}"] = {"metrics": {"FD": fd, "KID": 1.0, "ClassAcc": 0.5, "IS": 1.0,
                                                            "Precision": 0.1, "Recall": 0.1}}
    d = res / f"K{k}"
    d.mkdir(parents=True)
    (d / "results_headline.json").write_text(json.dumps({
        "plan": {"steps": 600}, "runs": runs, "entries": entries, "setup": {"classifier": {"accuracy": 0.7}},
        "invocations": [{"machine": "test box", "cpu_s": 60.0}]}))


def test_gap_is_ctf_minus_baseline_per_seed(report, tmp_path):
    _results(tmp_path, 1024, {0: (100.0, 90.0, 4.0, 2.5), 1: (100.0, 70.0, 4.0, 2.5)})
    _results(tmp_path, 16384, {0: (300.0, 200.0, 8.0, 3.0)})
    r = report.per_k(tmp_path, 1024)
    assert r["seeds"] == [0, 1]
    m, sd, n = report.gap(r, "FD")
    assert (m, n) == (-20.0, 2) and sd == pytest.approx(14.142, abs=1e-3)  # -10 and -30
    assert report.gap(r, "NLL")[0] == pytest.approx(1.0)  # CTF: 2.5 + 2.5 against 4.0
    report.render(tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "| 1024 | 32 | 0,1 | 100 ± 0 | 80.00 ± 14.14 | -20 ± 14 |" in text
    assert "| 16384 | 512 | 0 | 300 | 200 | -100 |" in text and "4096" not in text.split("## The gap")[1].split("##")[0]
    assert (tmp_path / "codebook_gap.png").is_file()
