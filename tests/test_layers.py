"""The package's structure: no import cycles, layers import downwards only, `import clipprobe` stays light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "clipprobe"

# Layers from the bottom up; a module may import its own layer and the layers below it. The base
# (errors, _io, config, runinfo, hub, data) is below everything.
LAYERS = [
    {"errors", "_io", "config", "runinfo", "hub", "data", "clipprobe", "_jitcache", "doctor", "figstyle"},
    {"faces", "models", "embeddings", "resources"},
    {"analysis"},
    {"captions"},
    {"report"},
    {"pipeline"},
    {"api"},
    {"world"},
    {"cli"},
]
# Known sideways imports inside the middle layer, each with its reason.
ALLOWED = {
    ("resources", "faces"),     # an association test's stimulus set can be a selection of a face dataset
}


def _modules() -> dict[str, Path]:
    out = {}
    for p in PACKAGE.rglob("*.py"):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _imports(path: Path, known: set[str]) -> set[str]:
    """clipprobe modules imported anywhere in a file (functions included), except under TYPE_CHECKING."""
    found: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node):
            test = node.test
            name = getattr(test, "id", None) or getattr(test, "attr", None)
            if name == "TYPE_CHECKING":
                for child in node.orelse:
                    self.visit(child)
                return
            self.generic_visit(node)

        def visit_Import(self, node):
            found.update(a.name for a in node.names if a.name.startswith("clipprobe"))

        def visit_ImportFrom(self, node):
            if node.module and node.module.startswith("clipprobe"):
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known)

    Visitor().visit(ast.parse(path.read_text(encoding="utf-8")))
    return {m for m in found if m in known}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {m: _imports(p, known) - {m} for m, p in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def _layer(module: str) -> tuple[int, str]:
    part = module.split(".")[1] if "." in module else "clipprobe"
    for rank, names in enumerate(LAYERS):
        if part in names:
            return rank, part
    raise AssertionError(f"{module} is in no layer: add its folder to LAYERS")


def test_layers_import_downwards():
    bad = []
    for module, deps in _graph().items():
        rank, part = _layer(module)
        for dep in deps:
            dep_rank, dep_part = _layer(dep)
            if dep_part == part or dep_rank < rank or (rank == dep_rank == 0) or (part, dep_part) in ALLOWED:
                continue
            bad.append(f"{module} -> {dep}")
    assert bad == []


def test_analysis_has_no_io():
    """The analysis layer computes on arrays: no file writes, models or datasets."""
    forbidden = ("clipprobe._io", "clipprobe.models", "clipprobe.embeddings", "clipprobe.pipeline",
                 "clipprobe.report", "torch", "open_clip", "faiss")
    for path in (PACKAGE / "analysis").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        for name in forbidden:
            assert f"import {name}" not in text and f"from {name} " not in text and f"from {name}." not in text, (
                f"{path.name} imports {name}")


@pytest.mark.parametrize("statement", ["import clipprobe", "import clipprobe.cli"])
def test_import_stays_light(statement):
    code = (f"import sys\n{statement}\n"
            "heavy = [m for m in ('torch', 'open_clip', 'faiss', 'matplotlib', 'numpy', 'pandas', 'pyarrow', "
            "'huggingface_hub', 'datasets') if m in sys.modules]\nprint(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_public_api_resolves_lazily():
    import clipprobe

    for name in clipprobe.__all__:
        assert getattr(clipprobe, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        clipprobe.nonsense  # noqa: B018
