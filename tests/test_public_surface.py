"""The public surface: each public module's ``__all__`` names every public name it has,
once each, sorted, and each one imports."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path
from types import ModuleType

import pytest

PUBLIC_MODULES = (
    "atom_async_db",
    "atom_async_db.exceptions",
    "atom_async_db.fastapi",
    "atom_async_db.testing",
    "sync_compat",
    "sync_compat.database_manager",
)


def isort_style(name: str) -> tuple[int, list[object]]:
    """The order ruff's RUF022 keeps: CONSTANTS, then Classes, then functions; natural."""
    group = 0 if name.isupper() else 1 if name[:1].isupper() else 2
    return group, [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def public_names(module: ModuleType) -> set[str]:
    """The names a module offers: what it defines at its top level (classes, functions,
    assignments), and for a package what it imports from its own private modules."""
    tree = ast.parse(Path(str(module.__file__)).read_text())
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif (
            isinstance(node, ast.ImportFrom)
            and module.__name__ == module.__package__  # a package's __init__
            and node.level == 1
            and (node.module or "").startswith("_")
        ):
            names.update(alias.asname or alias.name for alias in node.names)
    return {name for name in names if not name.startswith("_")}


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_is_complete_sorted_and_importable(name: str) -> None:
    module = importlib.import_module(name)
    exported = list(module.__all__)
    assert len(set(exported)) == len(exported), "a name twice in __all__"
    assert exported == sorted(exported, key=isort_style), "__all__ is not sorted"
    star: dict[str, object] = {}
    exec(f"from {name} import *", star)
    assert set(star) - {"__builtins__"} == set(exported)  # each one imports
    missing = public_names(module) - set(exported)
    assert not missing, f"public but not in __all__: {sorted(missing)}"
