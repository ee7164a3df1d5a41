"""``atom-db migrate PATH... [--write]``: the seed guide's Migration Checklist, its
mechanical steps, as a codemod (libcst: formatting and comments kept; a second run
changes nothing).

What it rewrites:

- imports from ``database_manager`` (``core.database_manager``,
  ``sync_compat.database_manager``, relative ones) and from ``core.database`` become
  imports from ``sync_compat``: ``get_db``, ``get_db_session``, ``SessionLocal``,
  ``run_legacy``. The names ``sync_compat`` lacks (``engine``, ``Base``...) stay, under a
  comment ``# atom-db migrate: no sync_compat equivalent for ...``;
- ``get_db_session_for_request`` becomes ``get_db`` (imports and uses, ``Depends(...)``
  included), ``get_monitored_db_session`` becomes ``get_db_session``, and
  ``database_manager.get_db_session()`` becomes ``get_db_session()``;
- ``db.close()`` right after ``db.commit()`` at the end of a ``with get_db_session() as db:``
  block goes;
- ``db = SessionLocal()`` + ``try: ... db.commit()`` + ``finally: db.close()`` (an ``except``
  that only rolls back and re-raises allowed) becomes
  ``with get_db_session(independent=True) as db:`` (a session of its own, as
  ``SessionLocal()`` gave, also inside a caller's session), when no path leaves the body
  before its final commit and ``db`` is not used after it.

What it leaves, deliberately: any ``db.close()`` or ``try``/``finally`` where the rewrite
could change what is committed (an early ``return``, a body that does not end with
``db.commit()``, a generator, an ``except`` that does more); star imports; an import
sharing its line with another statement; a module named ``database_manager.py`` (the
deprecated module itself, whose names code not yet migrated imports). The module docstring of
``atom_async_db._migrate._sessions`` states the rules exactly.

Without ``--write`` it prints a unified diff and changes nothing (``--check`` says so
explicitly). Needs the ``migrate`` extra: ``pip install 'atom_async_db[migrate]'``.
"""

from __future__ import annotations

import argparse

from ._command import EXIT_USAGE, Command, fail

__all__ = ["COMMAND"]

_EPILOG = """\
exit status:
  0   nothing to change, or --write changed the files
  1   without --write: files would change (the diff is printed)
  2   a file could not be read or parsed (reported; the others were migrated)
  64  bad usage, or libcst is missing: pip install 'atom_async_db[migrate]'

examples:
  atom-db migrate app/                  # the diff, nothing written
  atom-db migrate app/ > migrate.diff   # review it, then: patch -p0 < migrate.diff
  atom-db migrate --write app/ tests/   # rewrite the files"""

_INSTALL = "pip install 'atom_async_db[migrate]'"


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="files and directories (*.py, recursively)"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the files in place")
    mode.add_argument(
        "--check",
        action="store_true",
        help="print the diff and change nothing (the default)",
    )


def _run(args: argparse.Namespace) -> int:
    try:
        from .._migrate import _files  # (libcst: the migrate extra)
    except ImportError as error:
        if (error.name or "").partition(".")[0] != "libcst":
            raise
        return fail("migrate", f"needs libcst: {_INSTALL}", EXIT_USAGE)
    return _files.run(args.paths, write=args.write)


COMMAND = Command(
    name="migrate",
    help="rewrite legacy session code (database_manager, core.database) for sync_compat",
    description=(__doc__ or "").strip(),
    add_arguments=_add_arguments,
    run=_run,
    epilog=_EPILOG,
)
