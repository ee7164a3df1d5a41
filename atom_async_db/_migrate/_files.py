"""The file runner: which files a run covers, the unified diff it prints or the files it
writes, the problems it reports, and its exit status.

Directories are searched for ``*.py`` files (in sorted order, skipping hidden folders and
``__pycache__``); a file named on the command line is taken whatever its name. A file
that cannot be read or parsed is reported on stderr and left alone, and the run goes on.
"""

from __future__ import annotations

import difflib
import io
import sys
import tokenize
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import libcst as cst

from ._codemod import MigrationError, migrate

__all__ = ["EXIT_CHANGES", "EXIT_FAILED", "EXIT_OK", "Run", "diff", "python_files", "run"]

EXIT_OK = 0
#: Without ``--write``: at least one file would change.
EXIT_CHANGES = 1
#: At least one file could not be read, parsed or rewritten.
EXIT_FAILED = 2

_SKIPPED = {"__pycache__"}


@dataclass
class Run:
    """What a run found."""

    changed: list[Path] = field(default_factory=list)
    failed: list[Path] = field(default_factory=list)


_THE_SHIM = "database_manager.py"


def python_files(paths: Sequence[str]) -> Iterator[Path]:
    """The files ``paths`` name: each file itself, each directory's ``*.py`` files, each
    file once (a path that does not exist is yielded as is, for the caller to report).

    Raises:
        Nothing: a path that does not exist is yielded, for the caller to report.
    """
    seen: set[Path] = set()
    for given in paths:
        path = Path(given)
        found = [path]
        if path.is_dir():
            found = [
                file
                for file in sorted(path.rglob("*.py"))
                if file.is_file()
                and not any(
                    part.startswith(".") or part in _SKIPPED
                    for part in file.relative_to(path).parts[:-1]
                )
            ]
        for file in found:
            key = file.resolve()
            if key not in seen:  # (a file named twice, or in two of the paths: once)
                seen.add(key)
                yield file


def diff(name: str, before: str, after: str) -> str:
    """The unified diff from ``before`` to ``after``, both called ``name`` (``patch -p0``
    applies it).

    Raises:
        Nothing.
    """
    lines = difflib.unified_diff(
        before.splitlines(keepends=True),
        after.splitlines(keepends=True),
        fromfile=name,
        tofile=name,
    )
    return "".join(
        line if line.endswith("\n") else f"{line}\n\\ No newline at end of file\n" for line in lines
    )


def run(
    paths: Sequence[str],
    *,
    write: bool,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Migrate the files ``paths`` name: print the diff (``write=False``) or write the
    files; return the exit status (:data:`EXIT_OK`, :data:`EXIT_CHANGES` when files would
    change without ``write``, :data:`EXIT_FAILED` when a file failed, whatever else
    happened).

    Raises:
        Nothing: a file that cannot be read, parsed or written is reported on ``err``.
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    outcome = Run()
    for path in python_files(paths):
        if path.name == _THE_SHIM:
            # The deprecated module itself: its names are what code not yet migrated
            # imports (it warns, as the guide announces); rewriting it would break that code.
            continue
        problem = _one(path, write, out, err, outcome)
        if problem is not None:
            outcome.failed.append(path)
            print(f"atom-db migrate: {path}: {problem}; left as it is", file=err)
    count = len(outcome.changed)
    files = "file" if count == 1 else "files"
    if count and write:
        print(f"atom-db migrate: {count} {files} migrated", file=err)
    elif count:
        print(f"atom-db migrate: {count} {files} would change; --write changes them", file=err)
    if outcome.failed:
        failed = len(outcome.failed)
        print(f"atom-db migrate: {failed} {'file' if failed == 1 else 'files'} failed", file=err)
        return EXIT_FAILED
    return EXIT_CHANGES if count and not write else EXIT_OK


def _one(path: Path, write: bool, out: TextIO, err: TextIO, outcome: Run) -> str | None:
    """Migrate one file; the problem, if it failed."""
    try:
        source = path.read_bytes()
        encoding = tokenize.detect_encoding(io.BytesIO(source).readline)[0]
        before = source.decode(encoding)
    except (OSError, SyntaxError, UnicodeDecodeError) as error:
        return f"cannot read it ({error})"
    try:
        result = migrate(source, Path(path).resolve().parent.parts[1:])
    except cst.ParserSyntaxError as error:
        return f"syntax error at line {error.raw_line}, column {error.raw_column}: {error.message}"
    except MigrationError as error:
        return str(error)
    if result == source:
        return None
    if write:
        try:
            path.write_bytes(result)
        except OSError as error:
            return f"cannot write it ({error})"
        print(f"atom-db migrate: migrated {path}", file=err)
    else:
        out.write(diff(str(path), before, result.decode(encoding)))
        out.flush()
    outcome.changed.append(path)
    return None
