"""The shape of the code (DESIGN.md rules 1 and 3): no import circles, no reflex in the library.

The import graph is read from the source with the standard library's :mod:`ast`, so
every import counts: module level, inside functions, and under ``if TYPE_CHECKING:``
(an import hidden from the interpreter is still a dependency of the design).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("backend_core", "rxapp")
# Reflex ships as several distributions (reflex, reflex_base, reflex_components_*).
REFLEX_ROOTS = ("reflex",)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


def imported_names(name: str, path: Path) -> Iterator[tuple[str, int]]:
    """Every dotted name ``path`` imports (``from a import b`` gives ``a.b``), with its line."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                # A package's own name is its anchor for level 1; a module's is its package.
                keep = len(anchor) - node.level + (1 if is_package else 0)
                base = ".".join([*anchor[:keep], *([base] if base else [])])
            for alias in node.names:
                yield f"{base}.{alias.name}" if alias.name != "*" else base, node.lineno
                yield base, node.lineno


def resolve(dotted: str, modules: dict[str, Path]) -> str | None:
    """The most specific module of ours that ``dotted`` names (``a.b.func`` -> ``a.b``)."""
    parts = dotted.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def import_graph() -> dict[str, set[str]]:
    modules = source_modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for dotted, _ in imported_names(name, path):
            target = resolve(dotted, modules)
            # A package is not a dependency of its own modules just because they live in it.
            if target is not None and target != name and not name.startswith(f"{target}."):
                graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_reader_sees_every_kind_of_import() -> None:
    graph = import_graph()
    # A plain import, a from-import of a module, and a from-import of a name.
    assert "backend_core.clock" in graph["backend_core.health"]
    assert "backend_core.api" in graph["rxapp.rxapp"]
    assert len(graph) > 20


def test_the_cycle_finder_finds_a_circle_through_three_modules() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_in_backend_core_and_rxapp() -> None:
    found = cycles(import_graph())
    assert found == [], "import cycles (TYPE_CHECKING imports count): " + "; ".join(" <-> ".join(c) for c in found)


def test_backend_core_never_imports_reflex() -> None:
    offenders = []
    for name, path in source_modules().items():
        if not name.startswith("backend_core"):
            continue
        for dotted, line in imported_names(name, path):
            root = dotted.split(".")[0]
            if root in REFLEX_ROOTS or root.startswith("reflex_"):
                offenders.append(f"{path.relative_to(ROOT)}:{line} imports {dotted}")
    assert offenders == []
