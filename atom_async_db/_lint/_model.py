"""Findings and rules of ``atom-db lint``: what a finding is, the rule codes with their
summaries, and which codes a run reports (``select``, ``ignore``).

The codes are prefixes as in ruff: ``ATOM1`` selects every ``ATOM1xx`` rule, ``ATOM``
all of them. ``ATOM000`` (a file that cannot be read or parsed) is always reported.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["PARSE_ERROR", "RULES", "Config", "Finding", "LintUsageError", "finding", "parse_codes"]

#: The code of a file that cannot be read or parsed; never filtered out.
PARSE_ERROR = "ATOM000"

#: Each rule's code and summary (``atom-db lint --help`` lists them), by the guide's
#: section names where it has one.
RULES: dict[str, str] = {
    PARSE_ERROR: "cannot read or parse the file (always reported)",
    "ATOM101": "deprecated database_manager import or call",
    "ATOM102": "manual session creation: SessionLocal() used directly outside tests",
    "ATOM103": "global session: stored at module level or on a long-lived object",
    "ATOM104": "manual cleanup: db.close() or try/finally around a session",
    "ATOM105": "mixing patterns: a second session in a function that receives one",
    "ATOM106": "the sync session API inside async def (blocks the event loop)",
    "ATOM107": "long transaction with external calls: HTTP or sleep in an open session",
    "ATOM108": "N+1 queries: a lazy relationship read in a loop over query results",
    "ATOM109": "missing commit in a route on get_async_db (or get_db) that writes",
}


class LintUsageError(Exception):
    """A bad path, an invalid configuration or an unknown rule code: exit status 64."""


@dataclass(frozen=True, order=True)
class Finding:
    """One problem: where it is, its rule's code, and what is wrong with the fix."""

    path: str
    line: int
    col: int
    """1-based, as flake8 and ruff count."""
    code: str
    message: str

    def as_text(self) -> str:
        """The flake8 form: ``path:line:col: CODE message``.

        Raises:
            Nothing.
        """
        return f"{self.path}:{self.line}:{self.col}: {self.code} {self.message}"

    def as_dict(self) -> dict[str, object]:
        """The ``--format json`` form.

        Raises:
            Nothing.
        """
        return {
            "path": self.path,
            "line": self.line,
            "col": self.col,
            "code": self.code,
            "message": self.message,
        }


def finding(path: str, node: ast.AST, code: str, message: str) -> Finding:
    """A finding at ``node``'s start (its ``lineno`` and 0-based ``col_offset``).

    Raises:
        Nothing.
    """
    line = getattr(node, "lineno", 1)
    col = getattr(node, "col_offset", 0)
    return Finding(path, line, col + 1, code, message)


def parse_codes(entries: Iterable[str], where: str) -> tuple[str, ...]:
    """``entries`` upper-cased and checked: each must be a code or a prefix of one.

    Args:
        entries: codes or prefixes (``ATOM101``, ``ATOM1``); each may hold several,
            separated by commas (``--select ATOM101,ATOM102``).
        where: where they come from, for the error message (``--select``, a file).

    Raises:
        LintUsageError: an entry that is no code's prefix.
    """
    codes: list[str] = []
    for entry in entries:
        for part in entry.split(","):
            code = part.strip().upper()
            if not code:
                continue
            if not any(known.startswith(code) for known in RULES):
                known_codes = ", ".join(sorted(RULES))
                raise LintUsageError(f"{where}: unknown rule code {part.strip()!r} ({known_codes})")
            codes.append(code)
    return tuple(codes)


@dataclass(frozen=True)
class Config:
    """What a run reports, and where its paths are relative to.

    ``select`` and ``ignore`` are code prefixes (``ignore`` wins); ``exclude`` holds
    glob patterns matched against a path relative to ``root`` and against its name.
    """

    select: tuple[str, ...] = ("ATOM",)
    ignore: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    root: Path | None = None
    """The directory of the configuration's ``pyproject.toml`` (else of the nearest one):
    ``exclude`` patterns and ``tests/`` directories are relative to it."""
    source: Path | None = field(default=None, compare=False)
    """The ``pyproject.toml`` the settings came from, if any."""

    def enabled(self, code: str) -> bool:
        """Whether findings of ``code`` are reported.

        Raises:
            Nothing.
        """
        if code == PARSE_ERROR:
            return True
        if any(code.startswith(prefix) for prefix in self.ignore):
            return False
        return any(code.startswith(prefix) for prefix in self.select)
