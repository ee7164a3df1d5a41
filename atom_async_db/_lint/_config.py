"""Configuration of ``atom-db lint`` from ``pyproject.toml``: the ``[tool.atom-db.lint]``
table found by walking up from the first path, with ``select``, ``ignore`` and
``exclude`` lists of strings.

    [tool.atom-db.lint]
    select = ["ATOM1"]          # code prefixes to report (default: all)
    ignore = ["ATOM108"]        # code prefixes not to report (wins over select)
    exclude = ["migrations", "scripts/old_*.py"]

The nearest ``pyproject.toml`` that has the table is used (a ``pyproject.toml`` without
it is passed over, as ruff does); its directory is the root that ``exclude`` patterns and
``tests/`` directories are relative to. Without one, the nearest ``pyproject.toml`` (or
else the current directory) is the root and the defaults apply.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from ._model import Config, LintUsageError, parse_codes

__all__ = ["load_config"]

_KEYS = ("select", "ignore", "exclude")


def load_config(start: Path) -> Config:
    """The configuration for a run whose first path is ``start``.

    Raises:
        LintUsageError: a ``pyproject.toml`` on the way that is not valid TOML, or a table
            with an unknown key, a value that is not a list of strings, or an unknown code.
    """
    directory = start.resolve()
    if not directory.is_dir():
        directory = directory.parent
    nearest: Path | None = None
    for folder in (directory, *directory.parents):
        candidate = folder / "pyproject.toml"
        if not candidate.is_file():
            continue
        nearest = nearest or folder
        table = _lint_table(candidate)
        if table is not None:
            return _config(table, candidate)
    return Config(root=nearest or Path.cwd().resolve())


def _lint_table(path: Path) -> dict[str, Any] | None:
    """The ``[tool.atom-db.lint]`` table of ``path``, or None if it has none.

    Raises:
        LintUsageError: the file is not valid TOML, or the table is not a table.
    """
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise LintUsageError(f"{path}: cannot read it: {error}") from error
    tool = document.get("tool", {})
    atom = tool.get("atom-db", {}) if isinstance(tool, dict) else {}
    table = atom.get("lint") if isinstance(atom, dict) else None
    if table is not None and not isinstance(table, dict):
        raise LintUsageError(f"{path}: [tool.atom-db.lint] must be a table")
    return table


def _config(table: dict[str, Any], path: Path) -> Config:
    """The settings of ``table``, read from ``path``.

    Raises:
        LintUsageError: an unknown key, a value that is not a list of strings, an unknown
            code.
    """
    unknown = sorted(set(table) - set(_KEYS))
    if unknown:
        raise LintUsageError(
            f"{path}: [tool.atom-db.lint] has unknown key(s) {', '.join(unknown)} "
            f"(known: {', '.join(_KEYS)})"
        )
    values: dict[str, tuple[str, ...]] = {}
    for key in _KEYS:
        value = table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise LintUsageError(f"{path}: [tool.atom-db.lint] {key} must be a list of strings")
        values[key] = tuple(value)
    where = f"{path} [tool.atom-db.lint]"
    select = parse_codes(values["select"], f"{where} select") if "select" in table else None
    return Config(
        select=select if select is not None else Config.select,
        ignore=parse_codes(values["ignore"], f"{where} ignore"),
        exclude=tuple(pattern.strip().rstrip("/") for pattern in values["exclude"]),
        root=path.parent,
        source=path,
    )
