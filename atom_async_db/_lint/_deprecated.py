"""ATOM101, the deprecated ``database_manager`` module: its imports, and each use of its
functions, with the replacement the guide names.

- ``from core.database_manager import get_db_session`` becomes
  ``from core.database import get_db_session``;
- ``get_db_session_for_request`` becomes ``get_db``, ``get_monitored_db_session``
  becomes ``get_db_session``;
- ``sync_compat.database_manager``'s replacement is ``sync_compat`` itself.

A file named ``database_manager.py`` is the deprecated module itself (or the shim the
README recommends, ``from sync_compat.database_manager import *``): it is not checked, nor
is ``from . import database_manager`` in a package's ``__init__.py`` (its own module).
Of the module's attributes, only the three functions are reported.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import PurePath

from ._facts import Source, dotted
from ._model import Finding, finding

__all__ = ["check"]

CODE = "ATOM101"
_MODULE = "database_manager"
#: The deprecated functions' replacements (the guide's "Deprecation Warnings").
RENAMES = {
    "get_db_session": "get_db_session",
    "get_db_session_for_request": "get_db",
    "get_monitored_db_session": "get_db_session",
}
_REMOVED = "database_manager is deprecated (removed in 2.0)"


def replacement_module(module: str) -> str:
    """The module that replaces a ``...database_manager`` module.

    Raises:
        Nothing.
    """
    if module.lstrip(".") == "sync_compat.database_manager":
        return module[: -len(".database_manager")]
    return module[: -len(_MODULE)] + "database"


def check(source: Source) -> Iterator[Finding]:
    """The deprecated imports and uses of ``database_manager`` in ``source``.

    Raises:
        Nothing.
    """
    name = PurePath(source.path).name
    if name == f"{_MODULE}.py":
        return
    package = name == "__init__.py"  # (``from . import database_manager``: its own module)
    for node in ast.walk(source.tree):
        if isinstance(node, ast.ImportFrom):
            if package and node.level == 1 and not node.module:
                continue
            message = _import_from(node)
            if message:
                yield finding(source.path, node, CODE, message)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[-1] == _MODULE:
                    new = replacement_module(alias.name)
                    as_part = f" as {alias.asname}" if alias.asname else ""
                    message = f"{_REMOVED}: `import {new}{as_part}` instead"
                    yield finding(source.path, node, CODE, message + _renames_note())
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Load)
            and node.attr in RENAMES
        ):
            module = source.qualify(node.value)
            if module.split(".")[-1] == _MODULE:
                old = dotted(node) or node.attr
                new = RENAMES[node.attr]
                yield finding(
                    source.path,
                    node,
                    CODE,
                    f"`{old}` is deprecated (removed in 2.0): use `{new}` "
                    f"(from {replacement_module(module)} import {new})",
                )


def _import_from(node: ast.ImportFrom) -> str:
    """The message for a deprecated ``from ... import``, or ``""``."""
    module = "." * node.level + (node.module or "")
    if module.split(".")[-1] == _MODULE:
        new_module = replacement_module(module)
        names = []
        for alias in node.names:
            new = RENAMES.get(alias.name, alias.name)
            names.append(f"{new} as {alias.asname}" if alias.asname else new)
        renamed = [
            f"{alias.name} → {RENAMES[alias.name]}"
            for alias in node.names
            if RENAMES.get(alias.name, alias.name) != alias.name
        ]
        note = f" ({', '.join(renamed)})" if renamed else ""
        statement = f"from {new_module} import {', '.join(dict.fromkeys(names))}"
        return f"{_REMOVED}: `{statement}` instead{note}"
    if any(alias.name == _MODULE for alias in node.names):
        full = module + ("" if module.endswith(".") else ".") + _MODULE
        new = replacement_module(full)
        if new == module:  # sync_compat: the functions are the package's own
            fix = f"`from {module} import get_db_session, get_db`"  # (no module to import)
        else:
            fix = f"`from {module} import database`"
        return f"{_REMOVED}: {fix} instead{_renames_note()}"
    return ""


def _renames_note() -> str:
    return "; get_db_session_for_request → get_db, get_monitored_db_session → get_db_session"
