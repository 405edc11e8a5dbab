#!/usr/bin/env python3
"""Check that m2msec's imports follow the layers of docs/architecture.md.

Every ``import`` / ``from ... import`` in every module under ``src/m2msec`` counts,
wherever it stands: at the top, inside a function (a "lazy" import), or under
``if TYPE_CHECKING``. Hiding an import in a function does not hide a dependency.

Two rules:

1. Between layers, imports go only downward (``LAYERS`` below, bottom first). Units
   that share a layer do not import each other.
2. No import cycle between modules, inside a unit either.

``ALLOWED`` lists the edges that break a rule today, each with the branch that removes
it; the list is meant to be empty. Exit status 0 when clean, 1 with one line per
violation otherwise.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "src"
PACKAGE = "m2msec"

# Bottom first. A unit is a top-level module or sub-package of m2msec; keep this in
# step with the table in docs/architecture.md.
LAYERS: list[list[str]] = [
    ["errors", "paths", "m2mtime", "logs", "__init__"],
    ["ids", "app_rules"],
    ["keyids"],
    ["crypto"],
    ["store"],
    ["tls"],
    ["pki"],
    ["bindings"],
    ["service"],
    ["gba", "maf"],
    ["mef"],
    ["frameworks"],
    ["sa"],
    ["config"],
    ["servers"],
    ["acme"],
    ["demo"],
    ["cli"],
]

# (importer, imported) module pairs tolerated while another branch removes them.
ALLOWED: dict[tuple[str, str], str] = {}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, modules: set[str], root: Path = ROOT) -> list[tuple[str, int]]:
    """Every m2msec module `path` imports, with the line, lazy ones included."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                # `from m2msec import m2mtime` imports the submodule m2msec.m2mtime.
                sub = f"{target}.{alias.name}"
                found.append((sub if sub in modules else target, node.lineno))
    return [(t, line) for t, line in found if t == PACKAGE or t.startswith(PACKAGE + ".")]


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
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
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def check(root: Path = ROOT) -> list[str]:
    """One line per violation in the tree `root` (the directory holding m2msec/)."""
    layer_of = {unit: i for i, units in enumerate(LAYERS) for unit in units}
    paths = sorted((root / PACKAGE).rglob("*.py"))
    modules = {module_name(p, root) for p in paths}
    problems: list[str] = []
    edges: dict[str, set[str]] = defaultdict(set)
    used_allowances: set[tuple[str, str]] = set()
    for path in paths:
        importer = module_name(path, root)
        src_unit = unit_of(importer)
        if src_unit not in layer_of:
            problems.append(f"{importer}: unit {src_unit!r} has no layer in LAYERS")
            continue
        for imported, line in imports_of(path, modules, root):
            if imported == importer:
                continue
            if (importer, imported) in ALLOWED:
                used_allowances.add((importer, imported))
                continue
            edges[importer].add(imported)
            dst_unit = unit_of(imported)
            if dst_unit == src_unit:
                continue
            where = f"{path.relative_to(root)}:{line}"
            if dst_unit not in layer_of:
                problems.append(f"{where}: {imported} has no layer in LAYERS")
            elif layer_of[dst_unit] >= layer_of[src_unit]:
                problems.append(f"{where}: {importer} imports {imported} (not a lower layer)")
    for component in cycles(edges):
        problems.append("import cycle: " + " <-> ".join(component))
    if root == ROOT:
        for edge in sorted(set(ALLOWED) - used_allowances):
            problems.append(f"stale allow-list entry {edge[0]} -> {edge[1]} ({ALLOWED[edge]})")
    return problems


def main() -> int:
    problems = check()
    for line in problems:
        print(line)
    if not problems:
        print("layers ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
