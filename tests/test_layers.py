"""The house rules of the code: layers, no import cycle, imports at the top, short modules."""
import ast
from pathlib import Path

import grimp
import pytest
from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*ROOT.glob("zoo/**/*.py"), *ROOT.glob("backbones/*.py"), *ROOT.glob("heads/*.py")])
# modules that pull a slow optional library (matplotlib, wandb, fastapi/uvicorn, PyAV, onnx)
# may be imported where they are used; every other import of zoo sits at the top of its module
LAZY = ("zoo.report.plots", "zoo.report.wandb_log", "zoo.serve", "zoo.data.video", "zoo.model.export")
MAX_LINES = 420


def test_layers_contract_holds():
    """pyproject.toml's import-linter contract: cli -> serve -> evaluate -> dedup -> index ->
    embed | report -> model -> metrics -> data -> io/registry/... -> errors."""
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True) == 0


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_strongly_connected_finds_a_planted_cycle():
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_modules():
    """Module by module, function-level imports included (grimp reads them all)."""
    graph = grimp.build_graph("zoo")
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    assert strongly_connected(edges) == []


def zoo_imports(path: Path):
    """(line, imported module, at top level?) of each import of zoo in ``path``."""
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name == "zoo" or name.startswith("zoo."):
                yield node.lineno, name, id(node) in top


def test_imports_of_zoo_sit_at_the_top_of_modules():
    late = [f"{p.relative_to(ROOT)}:{line} {name}" for p in SOURCES for line, name, top in zoo_imports(p)
            if not top and not any(name == m or name.startswith(m + ".") for m in LAZY)]
    assert late == []


def test_backbones_and_heads_use_only_the_registry_layer():
    """Plugins (built-in and third-party) need only the registry, file helpers, weights and errors."""
    allowed = ("zoo.errors", "zoo.io", "zoo.registry", "zoo.weights", "zoo.backbones", "zoo.heads")
    bad = [f"{p.relative_to(ROOT)}:{line} {name}" for p in SOURCES if p.parent.name in ("backbones", "heads")
           for line, name, _ in zoo_imports(p) if not any(name == m or name.startswith(m + ".") for m in allowed)]
    assert bad == []


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_stay_short(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{lines} lines: split this module by idea"
