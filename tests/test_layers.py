"""The package's layers: every import of a uqmerge module points down the layers, and module imports form no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "uqmerge"

LAYERS: tuple[str, ...] = (
    "core",
    "report",
    "checkpoint",
    "tiny",
    "mapping",
    "methods",
    "engine",
    "uq",
    "evaluate",
    "zoo",
    "selection",
    "pipeline",
    "demo",
    "cli",
    "__main__",
)
"""Bottom to top; a module may import its own layer and the layers below it (docs/architecture.md)."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str | None:
    """``uqmerge.engine.plan`` → ``engine``; the package root (``uqmerge``: its version) is below every layer."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _imports(path: Path) -> list[tuple[int, str, bool]]:
    """(line, imported uqmerge module, at module level) for every import in ``path``, in functions too."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            if name == "uqmerge" or name.startswith("uqmerge."):
                found.append((node.lineno, name, id(node) in top_level))
    return found


MODULES = {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _resolve(name: str) -> str | None:
    """The module an import name refers to (``from a.b import c`` names module ``a.b.c`` or attribute ``c``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def test_every_module_belongs_to_a_known_layer() -> None:
    unknown = sorted({_layer(m) for m in MODULES} - {None, *LAYERS})
    assert not unknown, f"add these packages to LAYERS and docs/architecture.md: {unknown}"


def test_no_import_points_up_the_layers() -> None:
    upward = []
    for module, path in MODULES.items():
        own = _layer(module)
        for line, name, _ in _imports(path):
            resolved = _resolve(name)
            target = _layer(resolved) if resolved else None
            if own is None or target is None or target == own:
                continue
            if LAYERS.index(target) > LAYERS.index(own):
                upward.append(f"{path.relative_to(SRC.parent)}:{line} imports {name} ({own} → {target})")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_module_level_imports_form_no_cycle() -> None:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for _, name, top in _imports(path):
            target = _resolve(name)
            if top and target is not None and target != module:
                graph[module].add(target)
    # A package imports its submodules through its __init__; count edges between distinct modules only.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                pytest.fail("import cycle: " + " → ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
