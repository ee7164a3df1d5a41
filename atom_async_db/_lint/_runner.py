"""Running ``atom-db lint``: the files under the paths, each parsed once, the models of
all of them collected, every rule run on each, then ``select``/``ignore``, the
``# noqa`` comments and the report's order.

Directories are walked for ``*.py`` files, skipping ``.venv``, ``venv``, ``.git``,
``__pycache__``, ``build``, ``dist``, ``node_modules`` (and ``.tox``, ``.nox``,
``*.egg-info``) and what ``exclude`` matches; a file named on the command line is linted
whatever its name, unless ``exclude`` matches it (pre-commit names each file). Test files
(``test_*.py``, ``*_test.py``, ``conftest.py``, anything under a ``tests`` directory of
the root) may create sessions directly (ATOM102); every other rule applies to them.
"""

from __future__ import annotations

import ast
import io
import os
import re
import tokenize
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from fnmatch import fnmatch
from pathlib import Path

from . import _commits, _deprecated, _external_calls, _lifecycle, _relationships, _scopes
from ._config import load_config
from ._facts import Source
from ._mapped import collect_models
from ._model import PARSE_ERROR, Config, Finding, LintUsageError, parse_codes

__all__ = ["Report", "lint"]

_SKIPPED = frozenset(
    {".venv", "venv", ".git", "__pycache__", "build", "dist", "node_modules", ".tox", ".nox"}
)
_CHECKS = (
    _deprecated.check,
    _lifecycle.check,
    _scopes.check,
    _external_calls.check,
    _relationships.check,
    _commits.check,
)
#: A finding that replaces another of the same call: a module-level ``SessionLocal()``
#: is a global session (ATOM103), not also a manual creation (ATOM102).
_SUPERSEDES = {"ATOM103": "ATOM102"}
_NOQA = re.compile(
    r"#\s*noqa(?::\s*(?P<codes>[A-Z]+[0-9]+(?:[\s,]+[A-Z]+[0-9]+)*))?", re.IGNORECASE
)


@dataclass(frozen=True)
class Report:
    """What a run found, in the report's order, and how many files it read."""

    findings: list[Finding]
    files: int
    config: Config


def lint(
    paths: Sequence[str],
    *,
    select: Sequence[str] | None = None,
    ignore: Sequence[str] | None = None,
) -> Report:
    """Lint ``paths`` (files and directories) with the configuration found from the
    first one; ``select`` and ``ignore`` (code prefixes) replace the configuration's.

    Raises:
        LintUsageError: no path, a path that does not exist, an invalid configuration, an
            unknown rule code.
    """
    if not paths:
        raise LintUsageError("no path given")
    for given in paths:
        if not os.path.exists(given):
            raise LintUsageError(f"{given}: no such file or directory")
    config = load_config(Path(paths[0]))
    if select is not None:
        config = replace(config, select=parse_codes(select, "--select"))
    if ignore is not None:
        config = replace(config, ignore=parse_codes(ignore, "--ignore"))
    findings: list[Finding] = []
    parsed: list[tuple[Source, bytes]] = []
    files = list(_files(paths, config))
    for shown, path in files:
        try:
            data = path.read_bytes()
        except OSError as error:
            findings.append(Finding(shown, 1, 1, PARSE_ERROR, f"cannot read: {error.strerror}"))
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # (SyntaxWarning: not ours to report)
                tree = ast.parse(data, filename=shown)
        except SyntaxError as error:
            line, col = error.lineno or 1, error.offset or 1
            message = f"cannot parse: {error.msg}"
            findings.append(Finding(shown, line, max(col, 1), PARSE_ERROR, message))
            continue
        except ValueError as error:  # (null bytes)
            findings.append(Finding(shown, 1, 1, PARSE_ERROR, f"cannot parse: {error}"))
            continue
        parsed.append((Source(shown, tree, is_test=_is_test(path, config)), data))
    models = collect_models((source.path, source.tree) for source, _ in parsed)
    for source, data in parsed:
        source.models = models
        found = [item for check in _CHECKS for item in check(source)]
        found = _superseded([item for item in found if config.enabled(item.code)])
        findings += _unsilenced(found, data)
    return Report(sorted(set(findings)), len(files), config)


def _files(paths: Sequence[str], config: Config) -> Iterator[tuple[str, Path]]:
    """Each file to lint, once, as shown in findings and as a path."""
    seen: set[Path] = set()
    for given in paths:
        start = Path(given)
        candidates = [(given, start)] if start.is_file() else list(_walk(start, config))
        for shown, path in candidates:
            key = path.resolve()
            if key in seen or _excluded(path, config):
                continue
            seen.add(key)
            yield shown, path


def _walk(top: Path, config: Config) -> Iterator[tuple[str, Path]]:
    for folder, dirnames, filenames in os.walk(top):
        base = Path(folder)
        dirnames[:] = sorted(
            name
            for name in dirnames
            if name not in _SKIPPED
            and not name.endswith(".egg-info")
            and not _excluded(base / name, config)
        )
        for name in sorted(filenames):
            if name.endswith(".py"):
                yield str(base / name), base / name


def _relative(path: Path, config: Config) -> Path:
    """``path`` relative to the configuration's root, or as given if outside it."""
    if config.root is not None:
        try:
            return path.resolve().relative_to(config.root.resolve())
        except ValueError:
            pass
    return path


def _excluded(path: Path, config: Config) -> bool:
    if not config.exclude:
        return False
    relative = _relative(path, config)
    for candidate in (relative, *relative.parents):
        text = candidate.as_posix()
        if text in {"", "."}:
            continue
        if any(fnmatch(text, p) or fnmatch(candidate.name, p) for p in config.exclude):
            return True
    return False


def _is_test(path: Path, config: Config) -> bool:
    name = path.name
    if name == "conftest.py" or (name.startswith("test_") or name.endswith("_test.py")):
        return True
    return "tests" in _relative(path, config).parts[:-1]


def _superseded(findings: list[Finding]) -> list[Finding]:
    """``findings`` without those another one of the same place replaces."""
    places = {(item.line, item.col, item.code) for item in findings}
    return [
        item
        for item in findings
        if not any(
            (item.line, item.col, specific) in places
            for specific, general in _SUPERSEDES.items()
            if general == item.code
        )
    ]


def _unsilenced(findings: list[Finding], data: bytes) -> list[Finding]:
    """``findings`` without those a ``# noqa`` comment on their line silences."""
    if not findings:
        return findings
    silenced = _noqa_lines(data)
    kept = []
    for item in findings:
        codes = silenced.get(item.line, set())
        if codes is None or item.code in codes:
            continue
        kept.append(item)
    return kept


def _noqa_lines(data: bytes) -> dict[int, set[str] | None]:
    """Each line with a ``# noqa`` comment: the codes it names, or None (bare: all)."""
    comments: list[tuple[int, str]] = []
    try:
        for token in tokenize.tokenize(io.BytesIO(data).readline):
            if token.type == tokenize.COMMENT:
                comments.append((token.start[0], token.string))
    except (tokenize.TokenError, SyntaxError):
        text = data.decode("utf-8", "replace")
        comments = [(number, line) for number, line in enumerate(text.splitlines(), 1)]
    lines: dict[int, set[str] | None] = {}
    for number, comment in comments:
        match = _NOQA.search(comment)
        if match is None:
            continue
        codes = match.group("codes")
        if codes is None:
            lines[number] = None
        else:
            named = {code.upper() for code in re.split(r"[\s,]+", codes) if code}
            previous = lines.get(number, set())
            lines[number] = None if previous is None else previous | named
    return lines
