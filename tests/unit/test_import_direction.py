"""The layering of docs/usage.md (Layout), checked by parsing every import form: low layers never import high ones.

Ranks follow the design's order (config/distributed < layers < tokenizer/models < sampling <
stages/data/checkpoint/parallel < pipeline/release < training/eval < apps/bench < cli); a module
may import its own rank or lower. The table is the design's, not fitted to the code: a violation is
fixed in the code.
"""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "coarse2fine"

RANK = {"config": 0, "distributed": 0, "fileio": 0, "precision": 0,
        "layers": 1,
        "tokenizer": 2, "models": 2,
        "sampling": 3,
        "stages": 4, "data": 4, "checkpoint": 4, "parallel": 4,
        "pipeline": 5, "release": 5,
        "training": 6, "eval": 6,
        "apps": 7, "bench": 7,
        "cli": 8}


def _group(path: Path) -> str:
    return path.relative_to(SRC).with_suffix("").parts[0]


def _package_parts(path: Path, root: Path) -> list[str]:
    rel = path.relative_to(root).with_suffix("").parts
    return list(rel[:-1])  # the package holding the module (for relative imports)


def imported_names(path: Path, root: Path = SRC.parent):
    """(dotted name parts after coarse2fine, line) for every coarse2fine import of a file, at any depth:
    `import coarse2fine.X.Y`, `from coarse2fine.X import Y` (-> X, Y: Y may be a module),
    `from coarse2fine import X`, and relative `from .X import` / `from .. import X`. `root` holds the
    coarse2fine package."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "coarse2fine" and len(parts) > 1:
                    yield parts[1:], node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_parts(path, root)
                base = base[:len(base) - (node.level - 1)]
                parts = base + (node.module.split(".") if node.module else [])
            else:
                parts = (node.module or "").split(".")
            if not parts or parts[0] != "coarse2fine":
                continue
            for a in node.names:  # each imported name may itself be a module
                yield parts[1:] + [a.name], node.lineno


def imported_groups(path: Path, root: Path = SRC.parent):
    """(group, line) for every coarse2fine import of a file (see imported_names)."""
    for parts, line in imported_names(path, root):
        yield parts[0], line


def module_of(parts: list[str], pkg_root: Path) -> str | None:
    """The longest prefix of `parts` that is a module file under pkg_root (coarse2fine/), dotted."""
    for n in range(len(parts), 0, -1):
        base = pkg_root.joinpath(*parts[:n])
        if base.with_suffix(".py").is_file() or (base / "__init__.py").is_file():
            return ".".join(parts[:n])
    return None


def cycles_within_groups(pkg_root: Path) -> list[list[str]]:
    """Import cycles among the modules of one group (package), any import depth: [[a, b, ..., a]]."""
    graph: dict[str, set[str]] = {}
    for f in sorted(pkg_root.rglob("*.py")):
        rel = f.relative_to(pkg_root).with_suffix("").parts
        name = ".".join(rel[:-1] if rel[-1] == "__init__" else rel)
        if not name:
            continue
        deps = {module_of(p, pkg_root) for p, _ in imported_names(f, pkg_root.parent)}
        graph[name] = {d for d in deps if d and d != name and d.split(".")[0] == name.split(".")[0]
                       and not name.startswith(d + ".")}  # a package's own __init__ is no cycle
    found, state = [], {}

    def visit(n: str, stack: list[str]) -> None:
        state[n] = 1
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                found.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d, stack + [d])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    return found


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
    pkg = tmp_path / "coarse2fine" / "apps"
    pkg.mkdir(parents=True)
    probe = pkg / "_probe_import_forms.py"
    probe.write_text("import coarse2fine.cli\nfrom coarse2fine import cli\nfrom coarse2fine.cli import main\n"
                     "from ..cli import main\nfrom .. import cli\ndef f():\n    import coarse2fine.cli.data\n")
    assert [m for m, _ in imported_groups(probe, tmp_path)] == ["cli"] * 6


def test_no_import_cycle_inside_a_package():
    assert cycles_within_groups(SRC) == []


def cycles_between_groups(files: list[Path], pkg_root: Path = SRC) -> list[tuple[str, str]]:
    """Pairs of groups (top-level modules or packages) that import each other, at any import depth: a
    same-rank pair passes the downward rule but is still a circle (config and fileio were one)."""
    edges = {(f.relative_to(pkg_root).with_suffix("").parts[0], g)
             for f in files for g, _ in imported_groups(f, pkg_root.parent)}
    return sorted((a, b) for a, b in edges if a < b and (b, a) in edges)


def test_no_two_groups_import_each_other():
    assert cycles_between_groups(FILES) == []


def test_a_planted_circle_between_groups_is_caught(tmp_path):
    pkg = tmp_path / "coarse2fine"
    pkg.mkdir()
    (pkg / "config.py").write_text("def f():\n    from coarse2fine.fileio import atomic_write_bytes\n")
    (pkg / "fileio.py").write_text("from coarse2fine.config import UserError\n")
    assert cycles_between_groups(sorted(pkg.glob("*.py")), pkg) == [("config", "fileio")]


def test_a_planted_cycle_inside_a_package_is_caught(tmp_path):
    """The cycle check itself, on a copy of the layout with apps/a.py <-> apps/b.py (one import at
    function depth, as the old apps/demo.py <-> apps/demo_report.py cycle had)."""
    pkg = tmp_path / "coarse2fine"
    (pkg / "apps").mkdir(parents=True)
    for f in (pkg / "__init__.py", pkg / "apps" / "__init__.py", pkg / "config.py"):
        f.write_text("")
    (pkg / "apps" / "a.py").write_text("from coarse2fine.config import x\nfrom coarse2fine.apps.b import g\n")
    (pkg / "apps" / "b.py").write_text("def g():\n    from coarse2fine.apps import a\n")
    assert cycles_within_groups(pkg) == [["apps.a", "apps.b", "apps.a"]]


def test_the_sampler_imports_no_data_or_checkpoint():
    """docs/usage.md (Layout): the sampler needs only networks and tensors, so it imports cheaply -- importing it loads
    neither the code store (data/), nor checkpoint I/O, nor the stages' data side."""
    code = ("import sys, coarse2fine.sampling; "
            "print(sorted(m for m in sys.modules if m.startswith(('coarse2fine.data', 'coarse2fine.checkpoint', "
            "'coarse2fine.stages', 'coarse2fine.training', 'coarse2fine.pipeline'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(SRC.parent)})
    assert out.stdout.strip() == "[]", out.stdout
