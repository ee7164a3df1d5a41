"""The legacy API: which modules the seed's code takes its sessions from, and what each of
their names becomes in ``sync_compat``.

Two kinds of legacy module (:class:`Source`):

- ``database_manager``, deprecated: ``core.database_manager``, ``sync_compat.database_manager``,
  any ``*.core.database_manager`` and any relative ``.database_manager``. Its three
  functions have replacements (:data:`MANAGER_NAMES`, the guide's "Deprecation Warnings").
- ``core.database``: ``core.database``, any ``*.core.database``, and a relative import that
  resolves to a package named ``core`` (``from .database import ...`` in ``core/``). The
  names that ``sync_compat`` provides with the same meaning move (:data:`DATABASE_NAMES`);
  the others (``engine``, ``Base``, ``DATABASE_URL``...) stay where they are.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

__all__ = [
    "DATABASE_NAMES",
    "MANAGER_NAMES",
    "NO_EQUIVALENT",
    "SYNC_COMPAT",
    "Source",
    "classify",
    "replacement",
    "resolve_module",
]

SYNC_COMPAT = "sync_compat"

#: The start of the comment above an import that keeps names ``sync_compat`` lacks.
NO_EQUIVALENT = "# atom-db migrate: no sync_compat equivalent for"

#: ``database_manager``'s deprecated functions, and what replaces each.
MANAGER_NAMES = {
    "get_db_session": "get_db_session",
    "get_db_session_for_request": "get_db",
    "get_monitored_db_session": "get_db_session",
}

#: The names of ``core.database`` that ``sync_compat`` provides, same name and meaning:
#: the seed's API and the README's re-export line (``from sync_compat import SessionLocal,
#: get_db, get_db_session, run_legacy``). Not ``engine``: ``sync_compat`` has none
#: (``get_database().sync_engine`` is the port's).
DATABASE_NAMES = {name: name for name in ("SessionLocal", "get_db", "get_db_session", "run_legacy")}


class Source(enum.Enum):
    """Where an import takes its names from, for the codemod."""

    MANAGER = "database_manager"
    DATABASE = "core.database"
    SYNC_COMPAT = "sync_compat"


def resolve_module(module: str, level: int, directories: Sequence[str]) -> str:
    """The dotted name of the module ``from {'.' * level}{module} import`` names, from a file
    in ``directories`` (its folders' names, the nearest last); as much of it as the folders
    tell (``?`` for a package above them).

    Raises:
        Nothing.
    """
    if level == 0:
        return module
    depth = len(directories) - (level - 1)
    package = directories[depth - 1] if depth >= 1 else "?"
    return f"{package}.{module}" if module else package


def classify(dotted: str, relative: bool) -> Source | None:
    """Which legacy module ``dotted`` is, or ``sync_compat`` itself; ``None`` for others.

    ``relative``: it came from a relative import (any ``.database_manager`` counts then).

    Raises:
        Nothing.
    """
    parts = dotted.split(".")
    if dotted == SYNC_COMPAT:
        return Source.SYNC_COMPAT
    if parts[-1] == "database_manager" and (
        relative or dotted == "sync_compat.database_manager" or parts[-2:-1] == ["core"]
    ):
        return Source.MANAGER
    if parts[-2:] == ["core", "database"]:
        return Source.DATABASE
    return None


def replacement(source: Source, name: str) -> str | None:
    """The ``sync_compat`` name that replaces ``name`` of ``source``; ``None`` if there is
    none (for ``sync_compat`` itself: ``name`` when it is one of the session API's names).

    Raises:
        Nothing.
    """
    if source is Source.MANAGER:
        return MANAGER_NAMES.get(name)
    if source is Source.DATABASE:
        return DATABASE_NAMES.get(name)
    return name if name in DATABASE_NAMES else None
