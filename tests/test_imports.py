"""The packages' imports form no cycle, and no import hides in a function to dodge one.

Read from the source (ast), not by importing: module-level imports only, `from . import
x` included, the `if TYPE_CHECKING:` blocks left out (they never run). An import inside a
function is allowed only where LAZY says why (an optional, heavy part loaded on demand).
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("server", "client", "testkit")

# (module, imported module): the imports inside functions that are on purpose.
LAZY = {
    # the demo starts a local SSH server: loaded only with --demo
    ("server.main", "server.demo"),
    # `scout mcp` needs the optional mcp extra (the SDK): loaded only by that command
    ("client.cli", "client.mcpserver"),
    ("client.cli", "client.mcptools"),
    # a redis:// outcome store needs the optional redis extra: loaded only for such a URL
    ("server.durablestore", "server.redisstore"),
}


def _modules(package: str) -> dict[str, ast.Module]:
    return {
        f"{package}.{path.stem}": ast.parse(path.read_text(), str(path))
        for path in sorted((ROOT / package).glob("*.py"))
        if path.stem != "__init__"
    }


def _imported(node: ast.stmt, module: str, known: set[str]) -> set[str]:
    """The package modules one import statement names."""
    names: set[str] = set()
    if isinstance(node, ast.Import):
        names = {alias.name for alias in node.names}
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            package = module.rsplit(".", node.level)[0]
            base = f"{package}.{base}" if base else package
        names = {base} | {f"{base}.{alias.name}" for alias in node.names}
    return names & known


def _is_type_checking(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _top_level(body: list[ast.stmt]) -> list[ast.stmt]:
    """The statements that run at import: into if/try blocks, not into TYPE_CHECKING."""
    out: list[ast.stmt] = []
    for node in body:
        if _is_type_checking(node):
            continue
        out.append(node)
        if isinstance(node, ast.If):
            out += _top_level(node.body) + _top_level(node.orelse)
        elif isinstance(node, ast.Try):
            out += _top_level(node.body) + _top_level(node.orelse) + _top_level(node.finalbody)
            for handler in node.handlers:
                out += _top_level(handler.body)
    return out


@pytest.mark.parametrize("package", PACKAGES)
def test_module_imports_form_no_cycle(package: str) -> None:
    modules = _modules(package)
    known = set(modules)
    graph = {
        name: set().union(*(_imported(n, name, known) for n in _top_level(tree.body))) - {name}
        for name, tree in modules.items()
    }
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle in {package}/: {' -> '.join(exc.args[1])}")


def test_no_import_inside_a_function_but_the_lazy_ones() -> None:
    modules = {name: tree for package in PACKAGES for name, tree in _modules(package).items()}
    known = set(modules)
    found = set()
    for name, tree in modules.items():
        for func in ast.walk(tree):
            if isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                for node in ast.walk(func):
                    if isinstance(node, ast.Import | ast.ImportFrom):
                        found |= {(name, target) for target in _imported(node, name, known)}
    assert found == LAZY
