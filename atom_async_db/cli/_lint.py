"""``atom-db lint PATH...``: find the seed guide's anti-patterns statically (the stdlib's
``ast``; nothing is imported or run), each reported with its fix.

One finding a line, ``path:line:col: CODE message``, sorted by path and line, or a JSON
list with ``--format json``. ``# noqa: ATOM101`` at the end of a line silences that code
there, a bare ``# noqa`` every code. Settings come from ``[tool.atom-db.lint]`` in the
nearest ``pyproject.toml`` that has it, walking up from the first PATH (``select``,
``ignore``: code prefixes; ``exclude``: glob patterns relative to that file's directory);
``--select`` and ``--ignore`` replace the file's lists.
"""

from __future__ import annotations

import argparse
import json

from .._lint import RULES, LintUsageError, lint
from ._command import EXIT_OK, EXIT_USAGE, Command, fail

__all__ = ["COMMAND", "EXIT_FINDINGS"]

#: Something was found (a rule's finding, or a file that cannot be parsed).
EXIT_FINDINGS = 1

_RULE_LINES = "\n".join(f"  {code}  {summary}" for code, summary in RULES.items())
_EPILOG = f"""\
rules:
{_RULE_LINES}

exit status:
  0   nothing found
  1   findings (ATOM000: a file that cannot be read or parsed)
  64  bad usage or configuration: a path that does not exist, an unknown rule code, an
      invalid [tool.atom-db.lint] table

configuration (pyproject.toml):
  [tool.atom-db.lint]
  select = ["ATOM1"]            # code prefixes to report (default: all)
  ignore = ["ATOM108"]          # code prefixes not to report (wins over select)
  exclude = ["migrations"]      # glob patterns, relative to the pyproject.toml

examples:
  atom-db lint .                          # the project, with its pyproject.toml settings
  atom-db lint app --select ATOM101       # the deprecated imports only
  atom-db lint app --format json | jq .   # for tools"""


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="files and directories to check (*.py)"
    )
    parser.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="text: path:line:col: CODE message (default); json: a list of objects",
    )
    parser.add_argument(
        "--select",
        action="append",
        metavar="CODES",
        help="code prefixes to report, comma-separated (replaces the configuration's)",
    )
    parser.add_argument(
        "--ignore",
        action="append",
        metavar="CODES",
        help="code prefixes not to report, comma-separated (replaces the configuration's)",
    )


def _run(args: argparse.Namespace) -> int:
    try:
        report = lint(args.paths, select=args.select, ignore=args.ignore)
    except LintUsageError as error:
        return fail("lint", str(error), EXIT_USAGE)
    if args.format == "json":
        print(json.dumps([item.as_dict() for item in report.findings], indent=2), flush=True)
    elif report.findings:
        print("\n".join(item.as_text() for item in report.findings), flush=True)
    return EXIT_FINDINGS if report.findings else EXIT_OK


COMMAND = Command(
    name="lint",
    help="find the seed guide's session anti-patterns in Python files",
    description=(__doc__ or "").strip(),
    add_arguments=_add_arguments,
    run=_run,
    epilog=_EPILOG,
)
