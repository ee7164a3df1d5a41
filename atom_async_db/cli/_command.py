"""What one subcommand of ``atom-db`` is (:class:`Command`), and the exit statuses and
error reporting every subcommand shares.

A subcommand lives in a private module of this package that defines ``COMMAND``; the
package's ``SUBCOMMANDS`` names the modules, in the order ``--help`` lists them.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "PROG",
    "Command",
    "fail",
    "positive_seconds",
]

PROG = "atom-db"

#: It ran: for ``check``, connected (the warnings it found are printed, not failures).
EXIT_OK = 0
#: The database, or the application's ``/metrics``, could not be reached.
EXIT_UNAVAILABLE = 2
#: Bad usage or configuration (BSD's ``EX_USAGE``): an unknown argument, an invalid
#: setting (a :class:`~atom_async_db.ConfigurationError`), a missing extra.
EXIT_USAGE = 64


@dataclass(frozen=True)
class Command:
    """A subcommand: its name, its help, how it adds its arguments and how it runs."""

    name: str
    help: str
    """One line, for ``atom-db --help``."""
    description: str
    """The subcommand's ``--help`` text, above its arguments."""
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    """Runs the parsed arguments; returns the exit status."""
    epilog: str = ""
    """Below the arguments in ``--help``: the exit statuses, examples."""
    passthrough: bool = False
    """Arguments the parser does not know (``-h`` included) are passed on to ``run`` as
    ``args.passthrough`` instead of being an error."""


def fail(command: str, message: str, status: int) -> int:
    """Print ``message`` on stderr as ``atom-db COMMAND: message``; return ``status``."""
    print(f"{PROG} {command}: {message}", file=sys.stderr, flush=True)
    return status


def positive_seconds(text: str) -> float:
    """An argument that is a finite number of seconds above 0 (argparse's ``type``).

    Raises:
        argparse.ArgumentTypeError: it is not (argparse reports it as a usage error).
    """
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value
