"""The documentation site: its Python examples run, and it builds with ``--strict``.

Every ```` ```python ```` block of ``docs/*.md`` (and of ``README.md``, once it marks its
blocks: see :func:`pages`) is run as a script of its own: a fresh
interpreter (this file, with ``--run-example``), an empty temporary directory as the
working directory, ``DATABASE_URL`` and the ``ATOM_DB_*`` variables unset (so the embedded
SQLite default, ``./atom.db``, is used), warnings as errors. A block with a top-level
``await`` runs in an event loop (``asyncio.run``). Line numbers in a failure's traceback
are the Markdown file's.

An HTML comment on the line before a fence marks the block (docs/developing.md):

- ``<!-- docs-test: setup -->``: runs before every later block of the page;
- ``<!-- docs-test: continue -->``: runs after the block before it, in its namespace;
- ``<!-- docs-test: skip REASON -->``: not run (the test is skipped with REASON).

A fence whose only line is a snippet, ``--8<-- "examples/quickstart.py"``, runs that file.
The blocks run in parallel (one process per CPU); the site's build is one more test, which
needs the ``docs`` extra: without it the test skips, and fails under ``CI=true``.
"""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import inspect
import json
import os
import re
import subprocess
import sys
import traceback
import warnings
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
IN_CI = os.environ.get("CI", "").lower() == "true"
EXAMPLE_TIMEOUT = 60  # seconds, per block (they take about 1 s each)
BUILD_TIMEOUT = 180

FENCE = re.compile(r"^(?P<indent>[ ]*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*(?P<kind>[\w-]+)\s*(?P<reason>.*?)\s*-->\s*$")
SNIPPET = re.compile(r'^\s*-+8<-+\s+"(?P<path>[^"]+)"\s*$')
KINDS = {"setup", "continue", "skip"}


@dataclass(frozen=True)
class Block:
    """A ```` ```python ```` block of a page."""

    page: str  # "docs/patterns.md"
    line: int  # the line of its opening fence
    code: str
    source: str  # the file its code comes from (the page, or a snippet's file)
    first_line: int  # the line of the code's first line in that file
    kind: str | None  # setup, continue, skip, or None
    reason: str = ""

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def parse_page(path: Path) -> tuple[list[Block], list[str]]:
    """The page's Python blocks, and what is wrong with its markers."""
    page = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.name
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    problems: list[str] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence = len(opening["indent"]), opening["fence"]
        language = (opening["info"].split() or [""])[0].lstrip(".").lower()
        end = i + 1
        while end < len(lines):
            closing = lines[end].strip()
            if closing.startswith(fence[0] * len(fence)) and not closing.strip(fence[0]):
                break
            end += 1
        body = [line[indent:] if not line[:indent].strip() else line for line in lines[i + 1 : end]]
        previous = next((line for line in reversed(lines[:i]) if line.strip()), "")
        marker = MARKER.match(previous)
        if language in {"python", "py"}:
            kind = marker["kind"] if marker else None
            reason = marker["reason"] if marker else ""
            where = f"{page}:{i + 1}"
            if kind is not None and kind not in KINDS:
                problems.append(f"{where}: unknown marker 'docs-test: {kind}' (known: {KINDS})")
            if kind == "skip" and not reason:
                problems.append(f"{where}: 'docs-test: skip' needs a reason")
            snippet = SNIPPET.match(body[0]) if len(body) == 1 else None
            if snippet:
                included = ROOT / snippet["path"]
                source, first_line = str(included), 1
                code = included.read_text(encoding="utf-8")
            else:
                source, first_line, code = str(path), i + 2, "\n".join(body) + "\n"
            blocks.append(Block(page, i + 1, code, source, first_line, kind, reason))
        elif marker:
            problems.append(f"{page}:{i + 1}: a docs-test marker before a {language!r} block")
        i = end + 1
    return blocks, problems


def pages() -> list[Path]:
    """The pages whose examples run: ``docs/**/*.md``, and ``README.md`` once it has opted
    in by marking its blocks (it holds a ``docs-test:`` marker)."""
    found = sorted(DOCS.rglob("*.md"))
    readme = ROOT / "README.md"
    if "<!-- docs-test:" in readme.read_text(encoding="utf-8"):
        found.append(readme)
    return found


def collect(
    paths: list[Path],
) -> tuple[list[Block], dict[str, list[Block]], list[str]]:
    """Every block to run, the blocks each one runs (setups, the blocks it continues,
    itself), and the problems found."""
    runnable: list[Block] = []
    units: dict[str, list[Block]] = {}
    problems: list[str] = []
    for path in paths:
        blocks, page_problems = parse_page(path)
        problems += page_problems
        setups: list[Block] = []
        chain: list[Block] = []
        used_setups = 0
        for block in blocks:
            if block.kind == "setup":
                setups.append(block)
                continue
            if block.kind == "skip":
                runnable.append(block)
                chain = []
                continue
            if block.kind == "continue":
                if not chain:
                    problems.append(f"{block.id}: 'continue' with no run block before it")
                chain = [*chain, block]
            else:
                chain = [block]
            used_setups = len(setups)
            runnable.append(block)
            units[block.id] = [*setups, *chain]
        problems += [
            f"{setup.id}: a setup block with no block after it" for setup in setups[used_setups:]
        ]
    return runnable, units, problems


BLOCKS, UNITS, PROBLEMS = collect(pages())


def test_the_markers_are_valid() -> None:
    assert not PROBLEMS, "\n".join(PROBLEMS)
    assert BLOCKS, "no ```python block found in docs/"


def _example_env() -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if name != "DATABASE_URL" and not name.startswith(("ATOM_DB_", "PYTEST_"))
    }
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _run_example(block: Block, directory: Path) -> subprocess.CompletedProcess[str]:
    units = [[unit.source, unit.first_line, unit.code] for unit in UNITS[block.id]]
    try:
        return subprocess.run(
            [sys.executable, __file__, "--run-example"],
            input=json.dumps(units),
            cwd=directory,
            env=_example_env(),
            capture_output=True,
            text=True,
            timeout=EXAMPLE_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        output = error.stderr if isinstance(error.stderr, str) else ""
        return subprocess.CompletedProcess(
            error.cmd, -1, "", f"timed out after {EXAMPLE_TIMEOUT} s\n{output}"
        )


@pytest.fixture(scope="session")
def example_runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Future[subprocess.CompletedProcess[str]]]]:
    """Starts every selected example at once, a process per CPU; each test waits for its own."""
    selected = [
        item.callspec.params["block"]
        for item in request.session.items
        if getattr(item, "originalname", None) == "test_example"
        and hasattr(item, "callspec")
        and item.callspec.params["block"].kind != "skip"
    ]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        yield {
            block.id: pool.submit(_run_example, block, tmp_path_factory.mktemp("docs-example"))
            for block in selected
        }


@pytest.mark.parametrize("block", BLOCKS, ids=[block.id for block in BLOCKS])
def test_example(
    block: Block, example_runs: dict[str, Future[subprocess.CompletedProcess[str]]]
) -> None:
    if block.kind == "skip":
        pytest.skip(f"{block.id}: {block.reason}")
    result = example_runs[block.id].result()
    problem = result.returncode != 0 or "Exception ignored" in result.stderr
    if problem:
        ran = ", ".join(unit.id for unit in UNITS[block.id])
        pytest.fail(
            f"the example at {block.id} failed (ran, in order: {ran})\n{result.stderr}",
            pytrace=False,
        )


def _load_rest_roles() -> ModuleType:
    if importlib.util.find_spec("griffe") is None:
        if IN_CI:
            pytest.fail("griffe is not installed; CI=true requires the docs extra")
        pytest.skip("the docs extra is not installed (pip install -e '.[docs]')")
    spec = importlib.util.spec_from_file_location("rest_roles", DOCS / "_ext" / "rest_roles.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rest_roles_become_links_code_or_fenced_blocks() -> None:
    rest_roles = _load_rest_roles()
    import griffe

    package = griffe.load("atom_async_db", search_paths=[str(ROOT)])
    default = package["_default"]
    assert rest_roles.convert(default, ":func:`configure`") == (
        "[``configure()``][atom_async_db.configure]"
    )
    assert rest_roles.convert(default, ":class:`~atom_async_db.Database`") == (
        "[``Database``][atom_async_db.Database]"
    )
    assert rest_roles.convert(
        default, ":meth:`Database.pool_stats() <atom_async_db.Database.pool_stats>`"
    ) == ("[``Database.pool_stats()``][atom_async_db.Database.pool_stats]")
    # Another project's object: code. A private one of ours: linked only if documented.
    assert rest_roles.convert(default, ":class:`~sqlalchemy.engine.URL`") == "``URL``"
    assert "optional" in rest_roles.convert(package["_stats"], ":data:`BOUNDS`")
    # Names nothing: left to autorefs, which fails the strict build on it.
    assert rest_roles.convert(default, ":func:`confgure`") == "[``confgure()``][confgure]"
    assert rest_roles.convert(default, "Like this::\n\n    x = 1\n\nDone.") == (
        "Like this:\n\n```python\nx = 1\n```\n\nDone."
    )
    assert rest_roles.convert(default, "Raises:\n    ValueError: bad.\n    What f raises.") == (
        "Raises:\n    ValueError: bad.\n    : What f raises."
    )


def _mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec("mkdocs") is None:
        if IN_CI:
            pytest.fail("mkdocs is not installed; CI=true requires the docs extra")
        pytest.skip("the docs extra is not installed (pip install -e '.[docs]')")
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )


def test_the_site_builds_strict(tmp_path: Path) -> None:
    result = _mkdocs_build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "site" / "api" / "atom_async_db" / "index.html").exists()


def test_a_broken_cross_reference_fails_the_build(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text(
        '"""A package."""\n\n\ndef good() -> None:\n    """See :func:`goood`."""\n'
    )
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text("::: pkg\n")
    config = tmp_path / "mkdocs.yml"
    config.write_text(
        "site_name: t\nplugins:\n  - autorefs\n  - mkdocstrings:\n      handlers:\n"
        f"        python:\n          paths: [{tmp_path}]\n          options:\n"
        "            extensions:\n"
        f"              - {DOCS / '_ext' / 'rest_roles.py'}:RestRoles:\n"
        "                  packages: [pkg]\n"
    )
    result = _mkdocs_build(config, tmp_path / "site")
    assert result.returncode != 0
    assert "Could not find cross-reference target 'goood'" in result.stderr


def test_the_benchmark_tables_are_copied_unchanged() -> None:
    """docs/benchmarks.md shows tables of benchmarks/README.md: each row as it stands there."""
    source = (ROOT / "benchmarks" / "README.md").read_text(encoding="utf-8").splitlines()
    rows = [
        line
        for line in (DOCS / "benchmarks.md").read_text(encoding="utf-8").splitlines()
        if line.startswith("|")
    ]
    assert rows
    assert [row for row in rows if row not in source] == []


# --- the example runner (a process of its own per block) ----------------------------------


def run_units(units: list[tuple[str, int, str]]) -> None:
    """Runs the blocks in one namespace, the module ``__main__`` (as a script's: SQLAlchemy
    and pydantic look string annotations up there); sync code as it is, code with a
    top-level ``await`` in a new event loop."""
    warnings.simplefilter("error")
    main = ModuleType("__main__")
    sys.modules["__main__"] = main
    namespace = main.__dict__
    for source, first_line, code in units:
        compiled = compile(
            "\n" * (first_line - 1) + code,
            source,
            "exec",
            flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
            dont_inherit=True,
        )
        if compiled.co_flags & inspect.CO_COROUTINE:
            asyncio.run(eval(compiled, namespace))
        else:
            exec(compiled, namespace)


if __name__ == "__main__" and sys.argv[1:] == ["--run-example"]:
    sys.path[0] = os.getcwd()  # as for a script in the example's directory, not tests/
    try:
        run_units(json.load(sys.stdin))
    except BaseException:
        traceback.print_exc()
        sys.exit(1)
