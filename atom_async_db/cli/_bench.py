"""``atom-db bench``: the repository's benchmarks (``python -m benchmarks``), run from
the current directory with the arguments given, which are the benchmarks' own.

The benchmarks live in the source checkout, beside the package, and are not part of an
installed wheel: run ``atom-db bench`` from the checkout's root.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import os
import subprocess
import sys
from pathlib import Path

from ._command import EXIT_USAGE, Command, fail

__all__ = ["COMMAND"]

_EPILOG = """\
every argument goes to 'python -m benchmarks'; its options follow when it is found.

exit status: the benchmarks' own (0 done, 1 lost writes, 2 a usage error of theirs), or
  64  the benchmarks are not here: run it from the source checkout's root

examples:
  atom-db bench --quick                          # under a minute, embedded SQLite
  atom-db bench --url postgresql://postgres@127.0.0.1/test --full --out results/"""

_NOT_HERE = (
    "the benchmarks live in the source checkout, not in the installed package: "
    "'python -m benchmarks' finds no benchmarks package from {cwd}. Clone the repository "
    "and run 'atom-db bench' (or 'python -m benchmarks', or 'make bench') from its root "
    "(pip install -e '.[postgres,bench]' there for everything they compare)."
)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    # (no arguments of its own: main() hands every one to run(), in order)
    parser.usage = "%(prog)s [ARGS ...]"


def _benchmarks_here() -> bool:
    """Whether ``python -m benchmarks`` from here would find a runnable package: the
    current directory first, as ``-m`` puts it on the path, then the path (PYTHONPATH).
    """
    spec = importlib.machinery.PathFinder.find_spec("benchmarks", [os.getcwd(), *sys.path])
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    return any((Path(location) / "__main__.py").is_file() for location in locations)


def _run(args: argparse.Namespace) -> int:
    arguments: list[str] = args.passthrough
    wants_help = any(argument in ("-h", "--help") for argument in arguments)
    here = _benchmarks_here()
    if wants_help:
        args.command_parser.print_help()
        if not here:
            print(f"\n{_NOT_HERE.format(cwd=os.getcwd())}")
            return 0
        print(flush=True)
    elif not here:
        return fail("bench", _NOT_HERE.format(cwd=os.getcwd()), EXIT_USAGE)
    try:
        status = subprocess.run([sys.executable, "-m", "benchmarks", *arguments]).returncode
    except KeyboardInterrupt:  # (the benchmarks got the Ctrl-C too, and stopped)
        return 130
    return 128 - status if status < 0 else status  # killed by a signal: 128 + its number


COMMAND = Command(
    name="bench",
    help="run the repository's benchmarks (python -m benchmarks ARGS)",
    description=(__doc__ or "").strip(),
    add_arguments=_add_arguments,
    run=_run,
    epilog=_EPILOG,
    passthrough=True,
)
