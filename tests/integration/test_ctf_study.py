"""The seeded CTF study (benchmarks/quality/ctf_study.py): its compute bookkeeping, and a --small run of
every phase, the speed phase split over two processes as the README's commands do."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

QUALITY = Path(__file__).resolve().parents[2] / "benchmarks" / "quality"


@pytest.fixture
def ctf_study(monkeypatch):
    monkeypatch.syspath_prepend(str(QUALITY))
    spec = importlib.util.spec_from_file_location("c2f_ctf_study", QUALITY / "ctf_study.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "c2f_ctf_study", mod)
    spec.loader.exec_module(mod)
    return mod


class _Clock:
    """A process clock that advances by `per_step` seconds for every training step run."""

    def __init__(self):
        self.now, self.per_step = 0.0, 2.0

    def process_time(self):
        return self.now

    def time(self):
        return self.now


def test_resumed_segment_counts_the_compute_of_its_steps_once(ctf_study, tmp_path, monkeypatch):
    """A run stopped mid-segment and resumed from its last checkpoint must record the compute of the
    segment's steps: not only the steps the resuming process ran (it under-counted), nor the repeats."""
    import coarse2fine.training.gpt as loop

    clock = _Clock()
    resumed_from = {"step": 0}

    def fake_train(stage, mcfg, tcfg, codes, run, stop_at, **kw):
        ran = stop_at - resumed_from["step"]
        clock.now += ran * clock.per_step
        return {"params": 1, "dtype": "float32", "heldout": {"nll": 1.0, "acc": 0.5}, "loss": 1.0,
                "steps_this_run": ran}

    monkeypatch.setattr(loop, "train", fake_train)
    monkeypatch.setattr(ctf_study, "time", clock)
    plan = ctf_study.make_plan("default", small=True, steps=None)
    st = ctf_study.SeededStudy(plan, tmp_path / "w", tmp_path / "r", None, "test", db_name="results_t.json")
    st.meta = {"codebook_size": 64, "num_classes": 10, "grid": 4}
    monkeypatch.setattr(st, "save", lambda: None)
    st.train_seeded("baseline", 8, 0)
    resumed_from["step"] = 12  # an earlier process got to a checkpoint at 12, then stopped before 16
    st.train_seeded("baseline", 16, 0)
    cpu = st.db["runs"]["baseline_s0"]["cpu_s"]
    assert cpu["8"] == pytest.approx(16.0)
    assert cpu["16"] == pytest.approx(32.0)  # 16 steps at 2 s each, although this process ran only 4


def test_peer_rows_split_over_processes_train_only_their_own_runs(ctf_study, tmp_path, monkeypatch):
    """`--peers iar` beside a process still training the headline must not train the headline's stage 1
    (two processes would write one run dir); each row trains exactly its own runs."""
    plan = ctf_study.make_plan("default", small=True, steps=None)
    st = ctf_study.SeededStudy(plan, tmp_path / "w", tmp_path / "r", None, "test", db_name="results_t.json")
    trained, scored = [], []
    monkeypatch.setattr(st, "cmap", lambda method, d: (f"{method}-{d}", tmp_path / f"{method}-{d}"))
    monkeypatch.setattr(st, "train_seeded", lambda stage, step, seed, name=None, path=None, **kw:
                        trained.append(f"{stage}_{name}{kw.get('tag', '')}") or trained[-1])
    monkeypatch.setattr(st, "score", lambda key, *a, **kw: scored.append(key))
    ctf_study.peers(st, 0, ("iar",))
    assert trained == ["baseline_balanced-32_iar"] and scored == ["peer/iar/s0"]
    trained.clear(), scored.clear()
    ctf_study.peers(st, 0, ("members", "more"))
    assert trained == ["coarse_kmeans-32", "coarse_kmeans-8", "fine_kmeans-8"]
    assert scored == ["peer/random-member/s0", "peer/centroid-member/s0", "peer/map/kmeans-8/s0"]
    with pytest.raises(SystemExit):
        ctf_study.main(["--small", "--data", "default", "--phases", "peers", "--peers", "stage2"])


@pytest.mark.slow
def test_small_ctf_study_runs_every_phase_and_splits_the_speed_phase(ctf_study, tmp_path):
    work, res = tmp_path / "work", tmp_path / "res"
    base = ["--small", "--data", "default", "--out", str(work), "--results", str(res)]
    assert ctf_study.main([*base, "--phases", "setup,headline", "--seeds", "0,1"]) == 0
    assert ctf_study.main([*base, "--phases", "peers", "--seeds", "0", "--peers", "iar"]) == 0
    assert ctf_study.main([*base, "--phases", "peers", "--seeds", "0", "--peers", "members,random,fewer,more"]) == 0
    assert ctf_study.main([*base, "--phases", "speed", "--seeds", "0", "--speed-stages", "fine"]) == 0
    assert "speed" not in json.loads((res / "results_speed_fine_s0.json").read_text())  # waits for the rest
    assert ctf_study.main([*base, "--phases", "speed", "--seeds", "0", "--speed-stages", "coarse,baseline"]) == 0
    sp = json.loads((res / "results_speed_coarse-baseline_s0.json").read_text())["speed"]["rows"]
    assert set(sp) == {"CTF GPT-tiny", "baseline GPT-tiny", "CTF GPT-small", "baseline GPT-small"}
    assert all(r["images_per_s"] > 0 and r["FD"] is not None for r in sp.values())
    assert ctf_study.main([*base, "--phases", "grids", "--seeds", "0"]) == 0
    assert "samples_methods.png" in (res / "report.md").read_text()
    db = ctf_study.ctf_study_report.merge(res)
    for key in ("peer/random-member/s0", "peer/centroid-member/s0", "peer/iar/s0", "peer/map/random-128/s0"):
        assert key in db["entries"], key
    report = (res / "report.md").read_text()
    assert "not run yet" not in report
    for png in ("convergence.png", "quality_vs_speed.png", "samples_methods.png"):
        assert (res / png).stat().st_size > 0


def test_reuse_setup_links_a_matching_setup_and_refuses_another(ctf_study, tmp_path):
    from dataclasses import asdict

    plan = ctf_study.make_plan("default", small=True, steps=None)
    src = tmp_path / "src"
    for name in ("tokenizer", "codes_train", "classifier"):
        (src / name).mkdir(parents=True)
    (src / "plan.json").write_text(json.dumps({**asdict(plan), "steps": 999}))  # another schedule: shareable
    ctf_study.reuse_setup(src, tmp_path / "work", ctf_study.make_plan("default", small=True, steps=32))
    assert (tmp_path / "work" / "codes_train").resolve() == (src / "codes_train").resolve()
    assert not (tmp_path / "work" / "codes_test").exists()  # only what the source has
    (src / "plan.json").write_text(json.dumps({**asdict(plan), "vq_steps": 1}))
    with pytest.raises(SystemExit, match="differs in vq_steps"):
        ctf_study.reuse_setup(src, tmp_path / "other", plan)


def test_flattening_line_says_when_the_held_out_nll_rises(ctf_study):
    """Twemoji's 1.7k images over-fit by step 3000: a negative last-fifth gain must not read as 'not yet
    flat' but say that the held-out NLL rises."""
    rep = ctf_study.ctf_study_report

    def db(nll_1500, nll_3000):
        heldout = {"1500": {"nll": nll_1500}, "3000": {"nll": nll_3000}}
        return {"plan": {"checkpoints": [300, 1500, 3000], "steps": 3000},
                "runs": {rep.run_name("baseline", None, 0): {"heldout": heldout}}}

    assert "over-fits" in rep._flattening(db(6.4, 7.2), [0])
    falling = rep._flattening(db(4.0, 3.7), [0])
    assert "3.00% over the last fifth" in falling and "over-fits" not in falling and "Per seed" not in falling
    two = {"plan": {"checkpoints": [1500, 3000], "steps": 3000}, "runs": {
        rep.run_name("baseline", None, sd): {"heldout": {"1500": {"nll": a}, "3000": {"nll": b}}}
        for sd, (a, b) in enumerate([(4.0, 3.7), (4.0, 3.9)])}}
    assert "Per seed: s0 3.00%, s1 1.00% (2.00 ± 1.41%)." in rep._flattening(two, [0, 1])


def test_merge_keeps_the_coarse_maps_of_every_process(ctf_study, tmp_path):
    """Peer rows split over processes each cluster their own map; the merged setup (which the grids phase
    and the report list methods from) must hold all of them, not only the last file's."""
    for name, maps in (("results_peers_more_s0.json", {"kmeans-512": {"c": 512}}),
                       ("results_peers_random-fewer_s0.json", {"random-128": {"c": 128}, "kmeans-32": {"c": 32}}),
                       ("results_setup.json", {"kmeans-128": {"c": 128}})):
        (tmp_path / name).write_text(json.dumps({"setup": {"maps": maps, "tokenizer": {"psnr": len(name)}}}))
    setup = ctf_study.ctf_study_report.merge(tmp_path)["setup"]
    assert set(setup["maps"]) == {"kmeans-512", "random-128", "kmeans-32", "kmeans-128"}
    assert setup["tokenizer"] == {"psnr": len("results_peers_more_s0.json")}  # other keys: the first file's


def test_score_reuses_another_processes_score(ctf_study, tmp_path, monkeypatch):
    """A restarted process must not re-score a checkpoint another process scored: the run's weights may
    have moved past it since."""
    res = tmp_path / "r"
    res.mkdir()
    theirs = {"kind": "ctf", "metrics": {"FD": 2752.0}}
    (res / "results_headline_s1-2.json").write_text(json.dumps({"entries": {"head/ctf/300/s1": theirs}}))
    plan = ctf_study.make_plan("default", small=True, steps=None)
    st = ctf_study.SeededStudy(plan, tmp_path / "w", res, None, "test", db_name="results_headline_s1.json")
    monkeypatch.setattr(st, "sample", lambda *a, **k: pytest.fail("re-sampled a checkpoint already scored"))
    assert st.score("head/ctf/300/s1", "ctf", ("coarse", "fine"), 8, {})["metrics"]["FD"] == 2752.0


def test_spread_is_shown_to_the_means_precision(ctf_study):
    """'2059 ± 15.32' claims a precision the mean does not show; the std carries the mean's decimals."""
    pm = ctf_study.ctf_study_report._pm
    assert pm(2059.4, 15.32, 3, "FD") == "2059 ± 15"
    assert pm(6.2245, 0.0781, 3, "KID") == "6.22 ± 0.08"
    assert pm(0.3789, 0.0011, 3, "ClassAcc") == "0.379 ± 0.001"
    assert pm(577.0, float("nan"), 1, "FD") == "577"
    assert pm(1234.0, 56.0, 3, "KID") == "1.23e+03 ± 56"


def test_a_later_seed_does_not_redraw_seed_0s_sample_grid(ctf_study, tmp_path, monkeypatch):
    """Seeds run in separate processes: whichever finished last used to redraw samples_ctf_vs_baseline.png
    from its own seed, so the committed grid's seed depended on timing. Seed 0 draws it; another seed only
    while none exists."""
    plan = ctf_study.make_plan("default", small=True, steps=None)
    st = ctf_study.SeededStudy(plan, tmp_path / "w", tmp_path / "r", None, "test", db_name="results_t.json")
    drawn = []
    monkeypatch.setattr(st, "cmap", lambda method, d: (f"{method}-{d}", tmp_path / f"{method}-{d}"))
    monkeypatch.setattr(st, "train_seeded", lambda stage, *a, **kw: stage)
    monkeypatch.setattr(st, "score", lambda *a, **kw: None)
    monkeypatch.setattr(ctf_study.study_core, "sample_grid", lambda st, suffix: drawn.append(suffix) or
                        (st.res / "samples_ctf_vs_baseline.png").write_bytes(b"png"))
    st.res.mkdir(parents=True, exist_ok=True)
    ctf_study.headline(st, [1])  # no grid yet: seed 1 draws one
    ctf_study.headline(st, [2])  # a grid exists: seed 2 leaves it
    ctf_study.headline(st, [0])  # seed 0 always draws
    assert drawn == ["_s1", "_s0"]


@pytest.mark.parametrize("folder, data, steps", [("ctf_study_fashionmnist", "fashion-mnist", None),
                                                 ("ctf_study_twemoji", "twemoji", None),
                                                 ("ctf_study_fashionmnist_6000", "fashion-mnist", 6000)])
def test_plan_is_the_one_the_committed_runs_were_made_with(ctf_study, folder, data, steps):
    """Work dirs pin their plan (plan.json) and processes resume from them: the plan built from the same
    command line must stay the one recorded in the committed results, field for field."""
    from dataclasses import asdict

    res = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / folder
    plan = json.loads(json.dumps(asdict(ctf_study.make_plan(data, small=False, steps=steps))))
    recorded = [json.loads(f.read_text())["plan"] for f in sorted(res.glob("results_*.json"))]
    assert recorded and all(r == plan for r in recorded)
