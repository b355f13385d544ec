"""The code's shape (issue #22): no import circles, no non-test module over 400 lines.

Imports are read statically (ast), function-level ones included: a lazy import is still a dependency,
and a circle through it is still a circle for the reader.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("mf_backend", "blender_addon")
MAX_LINES = 400


def _modules(package: str) -> dict[str, Path]:
    """Dotted module name → file, for every .py of the package."""
    out = {}
    for path in sorted((REPO / package).rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that `name` imports (a name imported from a package counts as its submodule
    when there is one, else as the package)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return circles


def test_no_module_imports_one_that_imports_it_back():
    for package in PACKAGES:
        modules = _modules(package)
        assert len(modules) > 5, f"{package}: no modules found under {REPO}"
        graph = {name: _imports(name, path, modules) for name, path in modules.items()}
        circles = _circles(graph)
        detail = ["; ".join(f"{a} -> {sorted(graph[a] & set(c))}" for a in c) for c in circles]
        assert not circles, f"import circles in {package}: " + " | ".join(detail)


def test_circle_finder_finds_a_circle():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _circles({"a": {"b"}, "b": set()}) == []


def test_no_non_test_module_is_over_400_lines():
    skip = {"tests", "node_modules", "build", "dist"}
    files = [p for p in REPO.rglob("*.py")
             if not any(part in skip or part.startswith(".") for part in p.relative_to(REPO).parts[:-1])]
    assert any(p.name == "edit.py" for p in files)
    over = {str(p.relative_to(REPO)): n for p in sorted(files) if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines: {over}"
