"""Every default has one home. A copy of a default's literal in another file fails here, because copies drift
(the demo's warm-up rounding, a benchmark's cluster count and the studies' sampling knobs all did).

The patterns are the spellings the copies took; the home is the one file allowed to hold each.
"""
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# (pattern, the one file that may hold it, what to call instead)
HOMES = [
    (r"//\s*32\b", "src/coarse2fine/tokenizer/clustering.py",
     "the default cluster count C = K/32: call tokenizer.clustering.default_num_coarse(K)"),
    (r"//\s*20\b", "-",
     "a warm-up of 5% of the steps: the preset's recipe holds it, call config.train_recipe(preset, steps)"),
    (r"warmup_frac", "src/coarse2fine/config.py",
     "the recipes' warm-up fractions: call config.train_recipe(preset, steps)"),
    (r"StageSampling\([^)]*(temperature\s*=\s*1\.1|cfg_scale\s*=\s*2\.0)", "src/coarse2fine/sampling.py",
     "the sampling defaults: import sampling.CTF_COARSE_DEFAULT / CTF_FINE_DEFAULT / BASELINE_DEFAULT, or ask "
     "pipe.defaults()"),
    (r"[\"']temperature[\"']\s*:\s*1\.1|[\"']cfg_scale[\"']\s*:\s*2\.0", "src/coarse2fine/sampling.py",
     "the sampling defaults as a dict: build it from sampling's defaults"),
    (r"(top_k|top_p|cfg_interval)\s*=\s*(0|1\.0|-1)\s*,\s*(top_p|cfg_interval)", "src/coarse2fine/sampling.py",
     "stage-1 filter defaults re-applied with replace(): take them from pipe.defaults()"),
]


def _files():
    for base in ("src", "benchmarks", "scripts"):
        for path in sorted((REPO / base).rglob("*.py")):
            if "results" not in path.relative_to(REPO).parts:
                yield path


def offenders(pattern: str, home: str) -> list[str]:
    rx = re.compile(pattern)
    found = []
    for path in _files():
        rel = str(path.relative_to(REPO))
        if rel == home:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if rx.search(line.split("#")[0]):  # comments may name a default; code may not restate it
                found.append(f"{rel}:{n}: {line.strip()}")
    return found


@pytest.mark.parametrize("pattern,home,instead", HOMES, ids=[h[2].split(":")[0] for h in HOMES])
def test_default_literal_lives_in_its_home(pattern, home, instead):
    found = offenders(pattern, home)
    assert not found, f"{instead}; found:\n" + "\n".join(found)


def test_the_check_catches_a_copy(tmp_path, monkeypatch):
    """The scan is not vacuous: each pattern matches the copy it was written against."""
    copies = ["C = sb.num_coarse or max(2, K // 32)", "warmup_steps=max(1, p.steps // 20)",
              "    TRAIN_RECIPES = dict(warmup_frac=0.05)",
              "s1 = StageSampling(temperature=1.1, cfg_scale=2.0)",
              'CTF_OPTS = {"s1": {"temperature": 1.1, "cfg_scale": 2.0}}',
              "s1 = replace(first, top_k=0, top_p=1.0, cfg_interval=-1)"]
    for (pattern, _, _), copy in zip(HOMES, copies):
        assert re.search(pattern, copy), (pattern, copy)


def test_train_config_is_a_named_recipe():
    """TrainConfig() is LlamaGen's recipe, not a third one; the CPU presets' recipe comes from train_recipe."""
    from coarse2fine.config import TrainConfig, train_recipe

    assert TrainConfig() == TrainConfig(**train_recipe("GPT-B"))
    assert TrainConfig(steps=400) == TrainConfig(**train_recipe("GPT-L", 400))
    cpu = TrainConfig(**train_recipe("GPT-tiny", 400))
    assert (cpu.recipe, cpu.steps, cpu.warmup_steps, cpu.schedule) == ("cpu", 400, 20, "cosine")


def test_one_default_cluster_count():
    """C = K/32, at least one: the paper's 16384 -> 512 (bench/runs.py once had its own max(2, K // 32))."""
    from coarse2fine.tokenizer.clustering import default_num_coarse

    assert [default_num_coarse(k) for k in (16, 4096, 16384)] == [1, 128, 512]
