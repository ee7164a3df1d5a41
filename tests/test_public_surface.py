"""The public surface: each public module's ``__all__`` names every public name it has,
once each, sorted, and each one imports."""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import importlib
import inspect
import re
from pathlib import Path
from types import ModuleType

import pytest

PUBLIC_MODULES = (
    "atom_async_db",
    "atom_async_db.alembic",
    "atom_async_db.cli",
    "atom_async_db.exceptions",
    "atom_async_db.fastapi",
    "atom_async_db.otel",
    "atom_async_db.prometheus",
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


def public_callables() -> dict[str, object]:
    """Every public function, and every public method and constructor of a public class
    defined by the library itself (not inherited from SQLAlchemy), by qualified name."""
    found: dict[str, object] = {}
    for name in PUBLIC_MODULES:
        module = importlib.import_module(name)
        for attribute in module.__all__:
            value = getattr(module, attribute)
            if inspect.isfunction(value):
                found[f"{name}.{attribute}"] = value
            elif inspect.isclass(value) and not issubclass(value, (BaseException, Warning)):
                if dataclasses.is_dataclass(value):
                    continue  # a record: its generated __init__ raises nothing of ours
                if "__init__" in vars(value):  # the class documents its constructor
                    found[f"{name}.{attribute}"] = value
                for member, member_value in vars(value).items():
                    if not member.startswith("_") and inspect.isfunction(member_value):
                        found[f"{name}.{attribute}.{member}"] = member_value
    return found


_RAISES_ENTRY = re.compile(r"^    ([A-Za-z_][\w.]*): ", re.MULTILINE)


def raises_section(doc: str) -> str | None:
    """The text of a Google-style ``Raises:`` section, without its heading."""
    match = re.search(r"^Raises:\n((?:    .*\n?|\n)+)", doc, re.MULTILINE)
    return match.group(1) if match else None


def resolves_to_an_exception(name: str) -> bool:
    import builtins

    import sqlalchemy.exc

    import atom_async_db.exceptions

    for namespace in (atom_async_db.exceptions, builtins, sqlalchemy.exc, asyncio):
        value = getattr(namespace, name.rpartition(".")[2], None)
        if isinstance(value, type) and issubclass(value, BaseException):
            return True
    return False


@pytest.mark.parametrize("name", sorted(public_callables()))
def test_documents_what_it_raises(name: str) -> None:
    """Each public callable has a Raises section (ruff's DOC501 checks the exceptions a
    function raises itself); every exception it names exists."""
    doc = inspect.cleandoc(getattr(public_callables()[name], "__doc__", None) or "")
    section = raises_section(doc)
    assert section is not None, f"{name}: its docstring has no 'Raises:' section"
    for entry in _RAISES_ENTRY.findall(section):
        if entry not in {"Nothing"}:
            assert resolves_to_an_exception(entry), f"{name}: Raises names {entry!r}"
