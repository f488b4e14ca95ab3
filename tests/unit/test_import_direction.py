"""The layering of DESIGN.md, checked by parsing every import form: low layers never import high ones.

Ranks follow the design's order (config/distributed < layers < tokenizer/models <
stages/data/checkpoint/parallel < sampling < pipeline < training/eval < apps/bench < cli); a module
may import its own rank or lower. The table is the design's, not fitted to the code: a violation is
fixed in the code.
"""
import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "coarse2fine"

RANK = {"config": 0, "distributed": 0, "fileio": 0, "precision": 0,
        "layers": 1,
        "tokenizer": 2, "models": 2,
        "stages": 3, "data": 3, "checkpoint": 3, "parallel": 3,
        "sampling": 4,
        "pipeline": 5,
        "training": 6, "eval": 6,
        "apps": 7, "bench": 7,
        "cli": 8}


def _group(path: Path) -> str:
    return path.relative_to(SRC).with_suffix("").parts[0]


def _package_parts(path: Path) -> list[str]:
    rel = path.relative_to(SRC.parent).with_suffix("").parts
    return list(rel[:-1])  # the package holding the module (for relative imports)


def imported_groups(path: Path):
    """(group, line) for every coarse2fine import of a file, at any depth: `import coarse2fine.X`,
    `from coarse2fine.X import ...`, `from coarse2fine import X`, and relative `from .X import` /
    `from .. import X`."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "coarse2fine" and len(parts) > 1:
                    yield parts[1], node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_parts(path)
                base = base[:len(base) - (node.level - 1)]
                parts = base + (node.module.split(".") if node.module else [])
            else:
                parts = (node.module or "").split(".")
            if not parts or parts[0] != "coarse2fine":
                continue
            if len(parts) > 1:
                yield parts[1], node.lineno
            else:  # from coarse2fine import X, Y: each name is a module group
                for a in node.names:
                    yield a.name, node.lineno


FILES = sorted(p for p in SRC.rglob("*.py") if p.parent != SRC or p.name != "__init__.py")


def test_every_module_has_a_rank():
    groups = {_group(p) for p in FILES}
    assert groups <= set(RANK), sorted(groups - set(RANK))


def test_top_level_stays_small():
    """The core stays flat and small; workflows and tools live in folders by role."""
    modules = sorted(p.name for p in SRC.glob("*.py") if p.name != "__init__.py")
    assert len(modules) <= 10, modules


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_downwards(path):
    own = RANK[_group(path)]
    bad = [(m, line) for m, line in imported_groups(path) if RANK.get(m, -1) > own]
    assert not bad, f"{path.relative_to(SRC)} imports higher layers: {bad}"


@pytest.mark.parametrize("path", [p for p in FILES if _group(p) in ("layers", "models")],
                         ids=lambda p: str(p.relative_to(SRC)))
def test_networks_stay_free_of_io_and_distributed(path):
    text = path.read_text()
    assert "torch.distributed" not in text
    assert not [m for m, _ in imported_groups(path) if m in ("data", "checkpoint", "training", "distributed")]


def test_inference_never_imports_the_trainer():
    for name in ("pipeline.py", "sampling.py", "checkpoint.py", "stages.py"):
        groups = {m for m, _ in imported_groups(SRC / name)}
        assert "training" not in groups, name


def test_parser_sees_every_import_form(tmp_path):
    """The checker itself: each import form is reported (so a new form cannot slip past it)."""
    pkg = SRC / "apps"
    probe = pkg / "_probe_import_forms.py"
    probe.write_text("import coarse2fine.cli\nfrom coarse2fine import cli\nfrom coarse2fine.cli import main\n"
                     "from ..cli import main\nfrom .. import cli\ndef f():\n    import coarse2fine.cli.data\n")
    try:
        assert [m for m, _ in imported_groups(probe)] == ["cli"] * 6
    finally:
        probe.unlink()
