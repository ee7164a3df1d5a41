"""``atom-db lint``: the legacy application's BAD examples found exactly (code and line),
its GOOD ones clean; the output, ``--format json``, exit statuses, ``# noqa``,
``[tool.atom-db.lint]``, unparsable files, the walk, and the pre-commit hook."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tokenize
from collections.abc import Callable
from pathlib import Path

import pytest

from atom_async_db import cli
from atom_async_db._lint import PARSE_ERROR, RULES, lint

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "tests" / "fixtures" / "legacy_app"
ATOM_DB = Path(sys.executable).with_name("atom-db")
EXPECT = re.compile(r"expect:\s*(ATOM\d+(?:\s*,\s*ATOM\d+)*)")

Run = Callable[..., tuple[int, str, str]]


def expectations(folder: Path) -> list[tuple[str, int, str]]:
    """Each ``# expect: CODE, ...`` comment under ``folder``: (file, line, code)."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        with tokenize.open(path) as stream:
            for token in tokenize.generate_tokens(stream.readline):
                match = EXPECT.search(token.string) if token.type == tokenize.COMMENT else None
                if match:
                    for code in match.group(1).split(","):
                        relative = path.relative_to(folder).as_posix()
                        found.append((relative, token.start[0], code.strip()))
    return sorted(found)


def findings(folder: Path) -> list[tuple[str, int, str]]:
    report = lint([str(folder)])
    return sorted(
        (Path(item.path).relative_to(folder).as_posix(), item.line, item.code)
        for item in report.findings
    )


@pytest.fixture
def atom_db(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Run:
    """``atom-db lint ARGS`` through ``cli.main``, with the subcommand registered."""
    if "_lint" not in cli.SUBCOMMANDS:
        monkeypatch.setattr(cli, "SUBCOMMANDS", (*cli.SUBCOMMANDS, "_lint"))

    def run(*args: str) -> tuple[int, str, str]:
        status = cli.main(["lint", *args])
        out, err = capsys.readouterr()
        return status, out, err

    return run


def project(tmp_path: Path, files: dict[str, str], pyproject: str = "") -> Path:
    """A project in ``tmp_path``: its ``pyproject.toml`` makes it the linter's root."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "pyproject.toml").write_text(pyproject)
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def codes_by_file(paths: list[str], **options: list[str]) -> dict[str, list[str]]:
    by_file: dict[str, list[str]] = {}
    for item in lint(paths, **options).findings:  # type: ignore[arg-type]
        by_file.setdefault(Path(item.path).name, []).append(item.code)
    return by_file


# --------------------------------------------------------------- the legacy application


def test_each_bad_example_is_found_once_with_its_code_and_line() -> None:
    expected = expectations(APP / "bad")
    assert len(expected) > 60
    assert findings(APP / "bad") == expected


def test_every_rule_has_bad_examples_and_the_good_ones_are_clean() -> None:
    assert {code for _, _, code in expectations(APP / "bad")} == set(RULES) - {PARSE_ERROR}
    assert expectations(APP / "good") == []
    assert findings(APP / "good") == []
    # the whole application: the bad findings, and nothing from good/ or conftest.py
    whole = [(f"bad/{name}", line, code) for name, line, code in expectations(APP / "bad")]
    assert findings(APP) == whole


def test_the_guide_examples_are_all_in_the_fixture() -> None:
    """Each line of code of the guide's BAD and GOOD examples (its Python blocks but the
    configuration ones) is in the legacy application, as written."""
    guide = Path(os.environ.get("ATOM_SEED_GUIDE", "/work/shared/seed/DATABASE_SESSION_GUIDE.md"))
    if not guide.exists():
        pytest.skip(f"the seed guide is not here ({guide}; set ATOM_SEED_GUIDE)")
    blocks = re.findall(r"```python\n(.*?)```", guide.read_text(), re.DOTALL)
    fixture = "\n".join(path.read_text() for path in APP.rglob("*.py"))
    fixture_lines = {re.sub(r"\s*# expect: .*", "", line).strip() for line in fixture.splitlines()}
    ignored = ("from ", "import ", "#", "@router", "async def", "def ", "pool_size", "max_")
    missing = [
        line.strip()
        for block in blocks
        for line in block.splitlines()
        if line.strip()
        and not line.strip().startswith(ignored)
        and line.strip() not in fixture_lines
    ]
    assert missing == []


# ------------------------------------------------------------------ output and statuses


def test_text_output_is_sorted_by_path_and_line(tmp_path: Path, atom_db: Run) -> None:
    root = project(
        tmp_path,
        {
            "b.py": "def f():\n    db = SessionLocal()\n    db.close()\n",
            "a.py": "from core.database_manager import get_db_session\n",
        },
    )
    status, out, err = atom_db(str(root))
    assert (status, err) == (1, "")
    lines = out.splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == [
        f"{root}/a.py:1:1",
        f"{root}/b.py:2:10",
        f"{root}/b.py:3:5",
    ]
    assert lines[0] == (
        f"{root}/a.py:1:1: ATOM101 database_manager is deprecated (removed in 2.0): "
        "`from core.database import get_db_session` instead"
    )
    assert re.fullmatch(r".*b\.py:2:10: ATOM102 Manual session creation: .*", lines[1])
    assert re.fullmatch(r".*b\.py:3:5: ATOM104 Manual cleanup: .*", lines[2])


def test_clean_files_exit_0_with_no_output(tmp_path: Path, atom_db: Run) -> None:
    root = project(tmp_path, {"ok.py": "with get_db_session() as db:\n    db.query(User).all()\n"})
    assert atom_db(str(root)) == (0, "", "")


def test_json_format(tmp_path: Path, atom_db: Run) -> None:
    root = project(tmp_path, {"app.py": "import os\ndb = SessionLocal()\n"})
    status, out, _ = atom_db(str(root / "app.py"), "--format", "json")
    assert status == 1
    [item] = json.loads(out)
    assert set(item) == {"path", "line", "col", "code", "message"}
    assert (item["path"], item["line"], item["col"], item["code"]) == (
        str(root / "app.py"),
        2,
        6,
        "ATOM103",
    )
    assert item["message"].startswith("Global session: `SessionLocal()` stored at module level")
    clean = project(tmp_path / "clean", {"ok.py": "x = 1\n"})
    assert atom_db(str(clean), "--format", "json") == (0, "[]\n", "")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["does/not/exist.py"], "does/not/exist.py: no such file or directory"),
        (["{root}", "--select", "ATOM999"], "--select: unknown rule code 'ATOM999'"),
        (["{root}", "--ignore", "E501"], "--ignore: unknown rule code 'E501'"),
        (["{root}", "--format", "xml"], "invalid choice: 'xml'"),
        ([], "the following arguments are required: PATH"),
    ],
)
def test_usage_errors_exit_64(tmp_path: Path, atom_db: Run, args: list[str], message: str) -> None:
    root = project(tmp_path, {"ok.py": "x = 1\n"})
    status, out, err = atom_db(*(arg.format(root=root) for arg in args))
    assert (status, out) == (64, "")
    assert message in err


@pytest.mark.parametrize(
    ("pyproject", "message"),
    [
        ("[tool.atom-db.lint\n", "cannot read it"),
        ("[tool.atom-db.lint]\nselct = ['ATOM1']\n", "unknown key(s) selct"),
        ("[tool.atom-db.lint]\nignore = 'ATOM101'\n", "ignore must be a list of strings"),
        ("[tool.atom-db.lint]\nselect = ['ATOM2']\n", "unknown rule code 'ATOM2'"),
    ],
)
def test_invalid_configuration_exits_64(
    tmp_path: Path, atom_db: Run, pyproject: str, message: str
) -> None:
    root = project(tmp_path, {"app.py": "db = SessionLocal()\n"}, pyproject)
    status, out, err = atom_db(str(root))
    assert (status, out) == (64, "")
    assert err.startswith("atom-db lint: ")
    assert message in err


# ------------------------------------------------------------------ noqa and configuration


def test_noqa_silences_the_codes_it_names(tmp_path: Path) -> None:
    root = project(
        tmp_path,
        {
            "app.py": (
                "def f():\n"
                "    a = SessionLocal()  # noqa: ATOM102\n"
                "    b = SessionLocal()  # noqa: ATOM101\n"
                "    c = SessionLocal()  # noqa\n"
                "    d = SessionLocal()  # noqa:E501,atom102 (legacy)\n"
                "    e = SessionLocal(); x = '# noqa'\n"
                "    return a, b, c, d, e\n"
            )
        },
    )
    assert [item.line for item in lint([str(root)]).findings] == [3, 6]


def test_pyproject_select_ignore_and_exclude(tmp_path: Path) -> None:
    root = project(
        tmp_path,
        {
            "app.py": "from core.database_manager import get_db_session\ndb = SessionLocal()\n",
            "work.py": "def f():\n    db = SessionLocal()\n    db.close()\n",
            "legacy/old.py": "db = SessionLocal()\n",
            "scripts/old_fix.py": "db = SessionLocal()\n",
            "scripts/new_fix.py": "db = SessionLocal()\n",
        },
        '[tool.atom-db.lint]\nselect = ["ATOM10"]\nignore = ["ATOM101", "ATOM104"]\n'
        'exclude = ["legacy", "scripts/old_*.py"]\n',
    )
    assert codes_by_file([str(root)]) == {
        "app.py": ["ATOM103"],
        "new_fix.py": ["ATOM103"],
        "work.py": ["ATOM102"],
    }
    # found from the first path, inside the project; exclude applies to named files too
    assert codes_by_file([str(root / "legacy" / "old.py"), str(root / "work.py")]) == {
        "work.py": ["ATOM102"]
    }
    # the command line replaces the file's lists
    assert codes_by_file([str(root / "app.py")], select=["ATOM101,ATOM102"]) == {
        "app.py": ["ATOM102"]  # (ATOM103 not selected: no longer supersedes; ATOM101 ignored)
    }
    assert codes_by_file([str(root / "app.py")], select=["atom101", "ATOM102"], ignore=[""]) == {
        "app.py": ["ATOM101", "ATOM102"]
    }
    assert codes_by_file([str(root / "work.py")], ignore=["ATOM102"]) == {"work.py": ["ATOM104"]}


def test_tests_may_create_sessions_directly(tmp_path: Path) -> None:
    direct = "def f():\n    db = SessionLocal()\n    return db\n"
    root = project(
        tmp_path,
        {
            "test_users.py": direct,
            "users_test.py": direct,
            "conftest.py": direct,
            "tests/factories.py": direct,
            "app/tests/helpers.py": direct,
            "app/services.py": direct,
            "app/test_data/loader.py": direct,
            "closing_test.py": "def f():\n    db = SessionLocal()\n    db.close()\n",
        },
    )
    assert codes_by_file([str(root)]) == {
        "services.py": ["ATOM102"],
        "loader.py": ["ATOM102"],
        "closing_test.py": ["ATOM104"],  # the other rules apply to tests
    }


# ------------------------------------------------------------------- files and the walk


def test_a_file_that_cannot_be_parsed_is_reported_and_the_run_goes_on(
    tmp_path: Path, atom_db: Run
) -> None:
    root = project(
        tmp_path,
        {
            "broken.py": "def f(:\n    pass\n",
            "escape.py": "x = '\\d'\ndb = SessionLocal()\n",  # a SyntaxWarning, not an error
            "nul.py": "x = 1\0\n",
        },
    )
    status, out, _ = atom_db(str(root))
    assert status == 1
    lines = out.splitlines()
    assert lines[0].startswith(f"{root}/broken.py:1:7: ATOM000 cannot parse: ")
    assert lines[1].startswith(f"{root}/escape.py:2:6: ATOM103 ")
    assert lines[2].startswith(f"{root}/nul.py:1:1: ATOM000 cannot parse: ")
    assert len(lines) == 3


def test_directories_skip_environments_and_builds(tmp_path: Path) -> None:
    bad = "db = SessionLocal()\n"
    skipped = [".venv", "venv", ".git", "__pycache__", "build", "dist", "node_modules"]
    root = project(
        tmp_path,
        {
            "app/main.py": bad,
            "app/notes.txt": bad,
            **{f"{folder}/lib/mod.py": bad for folder in skipped},
            "app/build/gen.py": bad,
        },
    )
    report = lint([str(root)])
    assert [item.path for item in report.findings] == [str(root / "app" / "main.py")]
    assert report.files == 1
    # a file named on the command line is linted wherever it is, whatever its name
    named = lint([str(root / ".venv" / "lib" / "mod.py"), str(root / "app" / "notes.txt")])
    assert [item.code for item in named.findings] == ["ATOM103", "ATOM103"]
    # given twice, linted once
    assert len(lint([str(root / "app"), str(root / "app" / "main.py")]).findings) == 1


def test_the_lint_package_imports_only_the_standard_library() -> None:
    package = ROOT / "atom_async_db" / "_lint"
    modules = [*package.glob("*.py"), ROOT / "atom_async_db" / "cli" / "_lint.py"]
    imported = set()
    for path in modules:
        assert len(path.read_text().splitlines()) < 450, path
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    assert imported - sys.stdlib_module_names == set()
    assert {"ast", "tokenize", "tomllib"} <= imported


def test_the_pre_commit_hook() -> None:
    text = (ROOT / ".pre-commit-hooks.yaml").read_text()
    try:
        import yaml
    except ImportError:  # pragma: no cover
        assert "- id: atom-db-lint\n" in text and "  entry: atom-db lint\n" in text
        return
    [hook] = yaml.safe_load(text)
    assert hook["id"] == "atom-db-lint"
    assert hook["entry"] == "atom-db lint"
    assert hook["language"] == "python"
    assert hook["types"] == ["python"]


def test_the_console_script(tmp_path: Path) -> None:
    """The installed ``atom-db`` once the subcommand is registered; until then the same
    ``cli.main`` with it added, in a process of its own."""
    root = project(tmp_path, {"app.py": "db = SessionLocal()\n"})
    if "_lint" in cli.SUBCOMMANDS:
        command = [str(ATOM_DB), "lint", str(root)]
    else:
        code = (
            "import sys; from atom_async_db import cli; "
            "cli.SUBCOMMANDS += ('_lint',); sys.exit(cli.main())"
        )
        command = [sys.executable, "-c", code, "lint", str(root)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert (result.returncode, result.stderr) == (1, "")
    assert result.stdout.startswith(f"{root}/app.py:1:6: ATOM103 Global session: ")
    help_text = subprocess.run(
        [*command[:-2], "lint", "--help"], capture_output=True, text=True, timeout=60
    ).stdout
    assert "exit status:" in help_text
    assert all(code in help_text for code in RULES)


def test_what_the_rules_leave_alone(tmp_path: Path) -> None:
    """Forms that look like the anti-patterns and are not: each a false positive once."""
    root = project(
        tmp_path,
        {
            "pkg/__init__.py": "from . import database_manager\n",  # the package's own
            "pkg/types.py": (
                "async def check_types() -> None:\n"
                "    assert_type(get_db_session(), AbstractContextManager[Session])\n"
            ),
            "pkg/release.py": (
                "def release(session: Session) -> None:\n"  # its caller's to close
                "    session.rollback()\n"
                "    session.close()\n"
            ),
            "pkg/routes.py": (
                "@app.post('/dry-run')\n"
                "async def dry_run(data: dict, db: AsyncDB) -> None:\n"
                "    db.add(User(**data))\n"
                "    await db.flush()\n"
                "    raise HTTPException(422, 'dry run: nothing kept')\n"
                "@app.post('/users')\n"
                "async def create(data: dict, db: AsyncDB) -> None:\n"
                "    await users.create(db, data)\n"  # the service may commit
                "@app.post('/audit')\n"
                "async def audit(db: AsyncDB) -> None:\n"
                "    async with get_async_db_session(independent=True) as other:\n"
                "        other.add(Audit())\n"
                "@app.post('/tx')\n"
                "async def tx(db: AsyncSession = Depends(get_async_db)) -> None:\n"
                "    async with db.begin():\n"
                "        db.add(Audit())\n"
            ),
            "pkg/uses.py": (
                "from sync_compat import database_manager\n"
                "print(database_manager.__all__)\n"  # only the import is reported
            ),
        },
    )
    assert [(Path(item.path).name, item.line) for item in lint([str(root)]).findings] == [
        ("uses.py", 1)
    ]
