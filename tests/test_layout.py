"""The tree's shape: data flows one way between modules, so no module imports one that imports it back."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def imports() -> dict[str, set[str]]:
    """Each module of the package and the modules of the package it imports (type-only imports too)."""
    mods = {}
    for path in (SRC / "cryo_ingest").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or not (node.level or (node.module or "").startswith("cryo_ingest")):
                continue
            if node.level:
                anchor = package[: len(package) - node.level + 1]
                base = ".".join([*anchor, node.module] if node.module else anchor)
            else:
                base = str(node.module)
            for alias in node.names:
                target = f"{base}.{alias.name}" if f"{base}.{alias.name}" in mods else base
                if target in mods and target != name:
                    graph[name].add(target)
    return graph


def test_no_import_cycles() -> None:
    graph = imports()
    assert graph["cryo_ingest.gateway.pool"] >= {"cryo_ingest.gateway.logs"}  # the walk sees imports at all
    try:
        list(TopologicalSorter(graph).static_order())
    except CycleError as err:
        raise AssertionError(f"import cycle: {' -> '.join(err.args[1])}") from None
