"""The layering of DESIGN.md, checked by parsing imports: low layers never import high ones."""
import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "coarse2fine"

# module group -> rank; a module may import only groups of a lower or equal rank. checkpoint.py holds
# the generic, model-agnostic file helpers (strict key checks, safetensors, train state), so the
# tokenizer and the model loaders may use it.
RANK = {"config": 0, "fileio": 0, "distributed": 0, "layers": 1, "tokenizer": 2, "models": 2, "losses": 2,
        "checkpoint": 1, "sampling": 3, "data": 3, "parallel": 3, "train": 4, "train_tokenizer": 4,
        "evaluate": 4, "eval": 4, "pipeline": 5, "analysis": 5, "interop": 5, "sample_at_scale": 6, "bench": 6,
        "bench_runs": 6, "demo": 6, "cli": 7}


def _group(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    return rel.parts[0]


def _imports(path: Path):
    """Top-level and function-level `coarse2fine.X` imports of a file (lazy ones count too)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("coarse2fine."):
            yield node.module.split(".")[1], node.lineno
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("coarse2fine."):
                    yield a.name.split(".")[1], node.lineno


FILES = sorted(p for p in SRC.rglob("*.py") if _group(p) in RANK)


def test_every_module_has_a_rank():
    groups = {_group(p) for p in SRC.rglob("*.py") if p.name != "__init__.py" or p.parent != SRC}
    assert groups - {"__init__"} <= set(RANK), sorted(groups - set(RANK))


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_downwards(path):
    own = RANK[_group(path)]
    bad = [(m, line) for m, line in _imports(path) if m in RANK and RANK[m] > own]
    assert not bad, f"{path.relative_to(SRC)} imports higher layers: {bad}"


@pytest.mark.parametrize("path", [p for p in FILES if _group(p) in ("layers", "models")],
                         ids=lambda p: str(p.relative_to(SRC)))
def test_networks_stay_free_of_io_and_distributed(path):
    text = path.read_text()
    assert "torch.distributed" not in text
    assert not [m for m, _ in _imports(path) if m in ("data", "checkpoint", "train", "distributed")]
