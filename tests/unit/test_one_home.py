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


def _precision_spellings():
    """(file:line, name) of every public function parameter or class field spelling a precision otherwise
    than `dtype`."""
    import ast

    bad = []
    for path in sorted((REPO / "src" / "coarse2fine").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
                names = [a.arg for a in node.args.args + node.args.kwonlyargs]
            elif isinstance(node, ast.ClassDef):
                names = [s.target.id for s in node.body
                         if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)]
            bad += [f"{path.relative_to(REPO)}:{node.lineno} {n}" for n in names if n in ("precision", "bf16")]
    return bad


def test_one_precision_spelling_in_the_python_api():
    """dtype = "auto" | "fp32" | "bf16" or a torch dtype, everywhere (it was precision: str, bf16: bool and
    dtype); runs saved with `precision` still resume."""
    import torch

    from coarse2fine.config import TokenizerTrainConfig, TrainConfig
    from coarse2fine.precision import resolve_dtype

    assert _precision_spellings() == []
    assert TrainConfig.upgrade({"precision": "fp32", "lr": 1.0}) == {"dtype": "fp32", "lr": 1.0}
    assert TokenizerTrainConfig.upgrade({"precision": "bf16"})["dtype"] == "bf16"
    assert resolve_dtype("fp32", "cpu") is torch.float32 and resolve_dtype(torch.bfloat16, "cpu") is torch.bfloat16


def test_makefile_phony_targets_exist():
    """Every target .PHONY names has a rule (it once listed bench-speed and bench-quality, which had none)."""
    text = (REPO / "Makefile").read_text()
    phony = re.search(r"^\.PHONY:(.*)$", text, re.M).group(1).split()
    rules = set(re.findall(r"^([A-Za-z0-9_.-]+):(?!=)", text, re.M))
    assert phony and set(phony) <= rules, sorted(set(phony) - rules)


def test_docstrings_cite_files_that_exist():
    """A docstring or comment that sends the reader to a repository page names one that is there (a test cited
    a design guide kept outside the repository). A bare name counts when it is at the top or in docs/."""
    missing = []
    for path in [*(REPO / "src").rglob("*.py"), *(REPO / "tests").rglob("*.py")]:
        for name in set(re.findall(r"(?<![\w/.-])((?:[\w.-]+/)*[A-Z][A-Za-z_]*\.md)\b", path.read_text())):
            if not any((REPO / d / name).exists() for d in ("", "docs")) and name != "README.md":
                missing.append(f"{path.relative_to(REPO)}: {name}")
    assert not missing, missing
