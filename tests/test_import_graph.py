"""The house stays standing: no import cycle inside a package, and no module over ``MAX_LINES`` lines.

Cycles are found on grimp's import graph (the one import-linter checks), which sees every import, those
inside functions included: a cycle hidden by a function-local import is still a cycle. An import of
``a.b.c`` from outside ``a.b`` also runs ``a/b/__init__.py`` first, so it counts as an import of ``a.b``
too; a package's own modules importing each other do not re-run it.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]

PACKAGES = ["adprune_core", "study", "reports", "followup", "adprune"]  # every package of the house
MAX_LINES = 450


def _ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def direct_imports(package: str) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports itself (grimp's graph)."""
    graph = grimp.build_graph(package)
    return {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}


def with_parent_packages(direct: dict[str, set[str]]) -> dict[str, set[str]]:
    """``direct`` plus, for each import of ``a.b.c``, the packages ``a`` and ``a.b`` that importing it runs
    first, unless the importer is inside that package (its package is already being imported)."""
    edges: dict[str, set[str]] = {}
    for importer, imported in direct.items():
        targets = set(imported)
        for module in imported:
            targets.update(p for p in _ancestors(module) if p in direct and not importer.startswith(p + "."))
        edges[importer] = targets - {importer}
    return edges


def _shortest_path(edges: dict[str, set[str]], start: str, goal: str) -> list[str] | None:
    came_from: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        if node == goal:
            path = [node]
            while (prev := came_from[path[-1]]) is not None:
                path.append(prev)
            return path[::-1]
        for nxt in sorted(edges[node]):
            if nxt not in came_from:
                came_from[nxt] = node
                queue.append(nxt)
    return None


def find_cycles(edges: dict[str, set[str]]) -> list[tuple[str, ...]]:
    """Every shortest cycle through each import edge, each once (rotated to start at its least module)."""
    cycles = set()
    for module in sorted(edges):
        for imported in sorted(edges[module]):
            back = _shortest_path(edges, imported, module)
            if back is not None:
                cycle = (module, *back[:-1])
                first = cycle.index(min(cycle))
                cycles.add(cycle[first:] + cycle[:first])
    return sorted(cycles, key=lambda c: (len(c), c))


def test_the_cycle_finder_finds_each_cycle_once_and_counts_parent_packages():
    assert find_cycles({"x": {"y"}, "y": set()}) == []
    assert find_cycles({"x": {"y"}, "y": {"z"}, "z": {"x"}}) == [("x", "y", "z")]
    # c imports p.a, which runs p/__init__ first; p.a importing its package's p.b runs nothing more
    direct = {"c": {"p.a"}, "p": {"p.a", "p.b"}, "p.a": {"c", "p.b"}, "p.b": set()}
    edges = with_parent_packages(direct)
    assert edges == {"c": {"p", "p.a"}, "p": {"p.a", "p.b"}, "p.a": {"c", "p.b"}, "p.b": set()}
    assert find_cycles(edges) == [("c", "p.a"), ("c", "p", "p.a")]


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle(package):
    cycles = find_cycles(with_parent_packages(direct_imports(package)))
    shown = "\n".join("  " + " -> ".join((*c, c[0])) for c in cycles)
    assert not cycles, (f"{len(cycles)} import cycle(s) in {package}; move the shared piece down into a module "
                        f"both sides import (a function-local import does not break a cycle):\n{shown}")


def test_no_module_is_over_the_line_limit():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines())
             for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}
    assert len(sizes) > 80  # the packages were found (a wrong ROOT would check nothing)
    over = {path: n for path, n in sizes.items() if n > MAX_LINES}
    assert not over, (f"modules over {MAX_LINES} lines: "
                      f"{', '.join(f'{p} ({n})' for p, n in sorted(over.items()))}; split each by job")
