"""The layer rule of ``pipeline/__init__.py``, checked over every import in the package (an ast walk)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pipeline

PACKAGE = Path(pipeline.__file__).resolve().parent


@dataclass(frozen=True, slots=True)
class Edge:
    source: str  # dotted module names
    target: str
    line: int
    type_only: bool  # inside ``if TYPE_CHECKING:``: never executed, so it cannot close a cycle


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path) -> dict[str, Path]:
    return {module_name(path, root): path for path in sorted(root.rglob("*.py"))}


def edges(root: Path) -> Iterator[Edge]:
    """Every import of one module of the package by another, wherever it stands (functions too)."""
    known = modules(root)
    top = root.name
    for source, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        guarded = {id(node) for block in ast.walk(tree) if _type_checking(block) for node in ast.walk(block)}
        package = source if path.name == "__init__.py" else source.rpartition(".")[0]
        for node in ast.walk(tree):
            for target in _targets(node, package, known, top):
                if target != source:
                    yield Edge(source, target, node.lineno, id(node) in guarded)


def _type_checking(node: ast.AST) -> bool:
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _targets(node: ast.AST, package: str, known: dict[str, Path], top: str) -> Iterator[str]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name == top or alias.name.startswith(top + "."):
                yield _nearest(alias.name, known)
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            parent = package.split(".")
            parent = parent[: len(parent) - node.level + 1]
            base = ".".join([*parent, base] if base else parent)
        if base != top and not base.startswith(top + "."):
            return
        for alias in node.names:
            yield _nearest(f"{base}.{alias.name}", known)


def _nearest(name: str, known: dict[str, Path]) -> str:
    """The module a dotted name lands in: ``pipeline.api.client.X`` -> ``pipeline.api.client``."""
    while name not in known and "." in name:
        name = name.rpartition(".")[0]
    return name


def room(module: str) -> str:
    """The layer unit a module belongs to: its first name below the package (``api``, ``errors``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer_problems(
    found: list[Edge], layers: tuple[frozenset[str], ...], confined: dict[str, frozenset[str]]
) -> list[str]:
    """Imports that point to a higher layer, out of a confined room, or from/to a room with no layer.

    The package facade (``pipeline/__init__.py``) is above every layer: it may import anything and
    nothing may import it.
    """
    level = {name: number for number, names in enumerate(layers) for name in names}
    problems: list[str] = []
    for edge in found:
        src, dst = room(edge.source), room(edge.target)
        where = f"{edge.source} line {edge.line} imports {edge.target}"
        if src == dst or src == "":
            continue
        if dst == "":
            problems.append(f"{where}: the package facade is not for the layers to import")
        elif src in confined and dst not in confined[src]:
            problems.append(f"{where}: {src} may import only {sorted(confined[src])}")
        elif src not in level or dst not in level:
            problems.append(f"{where}: {src if src not in level else dst} has no layer in pipeline._LAYERS")
        elif level[dst] > level[src]:
            problems.append(f"{where}: an upward import ({src} is below {dst})")
    return problems


def cycles(found: list[Edge]) -> list[list[str]]:
    """Loops of imports that run (Tarjan's strongly connected components over non-type-only edges)."""
    graph: dict[str, set[str]] = {}
    for edge in found:
        if not edge.type_only:
            graph.setdefault(edge.source, set()).add(edge.target)
            graph.setdefault(edge.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    loops: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                loops.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return loops


def test_no_module_imports_from_a_higher_layer() -> None:
    """Every import in pipeline/ points to the same layer or a lower one, as pipeline._LAYERS says."""
    problems = layer_problems(sorted(set(edges(PACKAGE)), key=str), pipeline._LAYERS, pipeline._CONFINED)
    assert problems == [], "\n".join(problems)


def test_no_import_cycle() -> None:
    """No modules of pipeline/ import each other in a loop, counting imports inside functions."""
    assert cycles(list(edges(PACKAGE))) == []


def test_every_folder_and_module_has_a_layer() -> None:
    """A new folder or top-level module must be placed in the rule before it can be used."""
    placed = set().union(*pipeline._LAYERS)
    rooms = {room(name) for name in modules(PACKAGE)} - {""}
    assert rooms - placed == set()


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


LOW_HIGH = (frozenset({"low"}), frozenset({"high"}))


def test_the_check_finds_an_upward_import(tmp_path: Path) -> None:
    """A lower layer importing a higher one, even inside a function, is reported with its line."""
    root = _package(
        tmp_path,
        {
            "__init__.py": "",
            "low/__init__.py": "",
            "low/a.py": "def f():\n    from pkg.high.b import g\n    return g\n",
            "high/__init__.py": "",
            "high/b.py": "from pkg.low.a import f\n",
        },
    )
    problems = layer_problems(list(edges(root)), LOW_HIGH, {})
    assert problems == ["pkg.low.a line 2 imports pkg.high.b: an upward import (low is below high)"]


def test_the_check_finds_a_cycle_but_not_a_type_only_one(tmp_path: Path) -> None:
    """Two modules importing each other at run time are a cycle; a TYPE_CHECKING import closes none."""
    root = _package(
        tmp_path,
        {
            "__init__.py": "",
            "low/__init__.py": "",
            "low/a.py": "from . import b\n",
            "low/b.py": "def f():\n    from pkg.low import a\n",
            "low/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.low.a import x\n",
            "low/d.py": "from pkg.low.c import y\n",
        },
    )
    assert cycles(list(edges(root))) == [["pkg.low.a", "pkg.low.b"]]
    (root / "low/c.py").write_text("from pkg.low.d import z\n", encoding="utf-8")
    assert sorted(cycles(list(edges(root)))) == [["pkg.low.a", "pkg.low.b"], ["pkg.low.c", "pkg.low.d"]]
