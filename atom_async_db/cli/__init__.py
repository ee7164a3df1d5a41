"""The ``atom-db`` console script: an argparse parser whose subcommands are private
modules of this package, one each, listed in :data:`SUBCOMMANDS`.

    atom-db check [--url URL] [--timeout S]   # connect, and report what may go wrong
    atom-db stats URL [--once] [--interval S] # an application's pools, from its /metrics
    atom-db lint PATH...                      # the seed guide's anti-patterns (ATOM1xx)
    atom-db migrate PATH... [--write]         # its migration checklist, as a codemod
    atom-db bench [ARGS...]                   # the repository's benchmarks

A new subcommand is a module here that defines ``COMMAND`` (a ``_command.Command``),
added to :data:`SUBCOMMANDS`. ``import atom_async_db`` never imports this package.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import NoReturn

from .. import __version__
from . import _command

__all__ = ["SUBCOMMANDS", "main"]

#: The modules of the subcommands, in the order ``atom-db --help`` lists them.
SUBCOMMANDS: tuple[str, ...] = ("_check", "_stats", "_lint", "_migrate", "_bench")

_DESCRIPTION = (
    "atom_async_db's command line: check a database with the application's settings, "
    "watch an application's connection pools, run the benchmarks."
)
_EPILOG = """\
exit status:
  0   done (check: connected; the warnings it found are printed; lint: nothing found)
  1   lint found something; migrate: files would change (without --write)
  2   the database, or the application's /metrics, could not be reached
  64  bad usage or configuration (the message says which setting)

'atom-db COMMAND --help' describes each command."""


class _Parser(argparse.ArgumentParser):
    """A parser whose usage errors exit with :data:`EXIT_USAGE` (64), not argparse's 2,
    which ``atom-db`` keeps for a database it cannot reach.
    """

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(_command.EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _commands() -> list[_command.Command]:
    commands = []
    for module in SUBCOMMANDS:
        command = importlib.import_module(f"{__name__}.{module}").COMMAND
        assert isinstance(command, _command.Command), f"{module}.COMMAND is not a Command"
        commands.append(command)
    return commands


def _parser() -> _Parser:
    parser = _Parser(
        prog=_command.PROG,
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(
        title="commands", dest="command_name", metavar="COMMAND", required=True
    )
    for command in _commands():
        subparser = subparsers.add_parser(
            command.name,
            help=command.help,
            description=command.description.replace("``", ""),  # (reST to plain text)
            epilog=command.epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            add_help=not command.passthrough,
        )
        command.add_arguments(subparser)
        subparser.set_defaults(atom_command=command, command_parser=subparser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``atom-db`` with ``argv`` (default: ``sys.argv[1:]``); return its exit status.

    Errors are reported on stderr and by the exit status: 0 done, 2 unreachable, 64 bad
    usage or configuration (``atom-db --help``). Ctrl-C ends ``stats`` with 0, and any
    other command with 130; a reader that closes the pipe (``| head``) with 0.

    Raises:
        Nothing: every failure becomes a message and an exit status (``--help`` and
            ``--version`` too return 0 instead of raising ``SystemExit``).
    """
    parser = _parser()
    try:
        args, extra = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
        command: _command.Command = args.atom_command
        if extra and not command.passthrough:
            args.command_parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.passthrough = extra
        return command.run(args)
    except SystemExit as leaving:  # --help, --version, usage errors
        code = leaving.code
        return code if isinstance(code, int) else 0 if code is None else _command.EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # (`atom-db stats URL | head`: the reader has what it wanted)
        # Python flushes stdout again at exit; point it where that cannot fail.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return _command.EXIT_OK
