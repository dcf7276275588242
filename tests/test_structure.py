"""The package's import structure: no import circles, no private names taken across modules, every module imports.

The graph is read from the source (an AST walk), as installed: ``train/`` is ``reward_edit_pipeline.train``, ``hub/``
is ``reward_edit_pipeline.hub`` and ``comfy_nodes/`` is ``reward_edit_pipeline.comfy_nodes`` (pyproject's
``package-dir``). Imports inside functions count too: a local import only hides a circle until someone moves it.
Imports under ``if TYPE_CHECKING:`` do not run and do not count.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "reward_edit_pipeline"
PACKAGE_FOLDERS = {PACKAGE: ROOT / PACKAGE, f"{PACKAGE}.train": ROOT / "train", f"{PACKAGE}.hub": ROOT / "hub"}
PACKAGE_FOLDERS[f"{PACKAGE}.comfy_nodes"] = ROOT / "comfy_nodes"


def module_files() -> dict[str, Path]:
    """``{dotted module name: file}`` for every module of the installed package."""
    modules: dict[str, Path] = {}
    for package, folder in PACKAGE_FOLDERS.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


MODULES = module_files()


def is_type_checking_block(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run (module level and inside functions), not under ``TYPE_CHECKING``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if is_type_checking_block(child):
                for orelse in child.orelse:  # type: ignore[attr-defined]
                    visit(orelse)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append(child)
            visit(child)

    visit(tree)
    return found


def absolute_target(module: str, node: ast.ImportFrom) -> str:
    """The absolute module named by a ``from ... import`` statement of `module`."""
    if node.level == 0:
        return node.module or ""
    is_package = MODULES[module].name == "__init__.py"
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def owning_module(name: str) -> str | None:
    """The longest module of the package that `name` (a module or ``module.attribute``) lies in."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def import_edges() -> dict[str, set[str]]:
    """``{module: modules of the package it imports}``. ``from package import name`` depends on ``package.name``
    when that is a module, else on the package itself; importing a module also runs its parent packages.
    Edges from a module up to its own parent packages are left out: every module imports its parents on the way in,
    so those are how Python works, not a circle between parts."""
    edges: dict[str, set[str]] = {module: set() for module in MODULES}
    for module, path in MODULES.items():
        for node in runtime_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = absolute_target(module, node)
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names
                ]
            for target in targets:
                owner = owning_module(target)
                if owner is None or owner == module or owner in parent_packages(module):
                    continue
                edges[module].add(owner)
                # importing a.b.c first runs the __init__ of a and of a.b
                edges[module].update(parent_packages(owner) - parent_packages(module) - {module})
    return edges


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                connect(target)
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
                components.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return components


def parent_packages(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


# --------------------------------------------------------------------------------------------- the checker itself
def test_find_cycles_reports_a_circle_and_ignores_a_chain():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_runtime_imports_see_local_imports_but_not_type_checking_ones():
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from .b import B\n"
        "def f():\n    from .c import C\n    return C\n"
    )
    assert [node.module for node in runtime_imports(tree)] == ["typing", "c"]


def test_module_list_covers_the_mapped_folders():
    assert f"{PACKAGE}.judge.base" in MODULES
    assert f"{PACKAGE}.train.data" in MODULES and MODULES[f"{PACKAGE}.train.data"] == ROOT / "train" / "data.py"
    assert f"{PACKAGE}.hub.push_dataset" in MODULES
    assert f"{PACKAGE}.comfy_nodes" in MODULES


# ------------------------------------------------------------------------------------------------ the package
def test_no_import_circles_inside_the_package():
    edges = import_edges()
    cycles = find_cycles(edges)
    assert not cycles, "import circles (each line: modules that import each other, directly or around a loop):\n" + (
        "\n".join(" <-> ".join(cycle) for cycle in cycles)
    )


def test_no_private_names_imported_from_another_module():
    offenders = []
    for module, path in MODULES.items():
        for node in runtime_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            target = absolute_target(module, node)
            if owning_module(target) is None:
                continue  # third-party code: its private names are its own business
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: from {target} import {alias.name}")
    assert not offenders, "private names imported across modules (make them public where they belong):\n" + (
        "\n".join(offenders)
    )


NEEDS_COMFYUI = {f"{PACKAGE}.comfy_nodes.v3"}  # imports `comfy_api`, present only inside a ComfyUI build
PROGRAMS = {module for module in MODULES if module.endswith(".__main__")}  # importing one runs the program


@pytest.mark.parametrize("module", sorted(set(MODULES) - NEEDS_COMFYUI - PROGRAMS))
def test_every_module_imports(module):
    importlib.import_module(module)
