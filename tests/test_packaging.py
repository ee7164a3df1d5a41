"""Packaging facts the normal suite checks in well under a second: the version, its
changelog entry, the version policy's public modules against the code, py.typed and the
entry points. Building and installing the wheel is ``scripts/check-wheel``'s job (CI runs
it; it takes minutes)."""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import atom_async_db
import sync_compat.database_manager
from atom_async_db import cli
from atom_async_db.cli import _command
from tests.test_public_surface import PUBLIC_MODULES

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT: dict[str, Any] = PYPROJECT["project"]
CHANGELOG = (ROOT / "CHANGELOG.md").read_text()
PACKAGES = ("atom_async_db", "sync_compat")
# Public to the test of __all__ (tests/test_public_surface.py), not to the version policy:
# the command is the interface, not the modules behind it.
NOT_IN_POLICY = {"atom_async_db.cli"}


def section(text: str, heading: str) -> str:
    """The body of the ``##`` section ``heading`` (up to the next ``##`` heading)."""
    match = re.search(rf"^## {re.escape(heading)}\s*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"CHANGELOG.md has no '## {heading}' section"
    return match.group(1)


def release(version: str) -> str:
    """The body of the changelog entry of ``version``."""
    match = re.search(
        rf"^## \[{re.escape(version)}\] - (\d{{4}}-\d{{2}}-\d{{2}}|Unreleased)\s*$(.*?)(?=^## |\Z)",
        CHANGELOG,
        re.M | re.S,
    )
    assert match, (
        f"CHANGELOG.md has no entry '## [{version}] - YYYY-MM-DD' (or '- Unreleased') for "
        "pyproject's version"
    )
    return match.group(2)


def policy_modules() -> list[str]:
    """The modules the version policy's first point lists, in its order."""
    public = section(CHANGELOG, "Version policy").split("### What is not")[0]
    api = public.split("- **The pytest plugin**")[0]
    return re.findall(r"`((?:atom_async_db|sync_compat)(?:\.[a-z_]+)*)`", api)


def test_the_version_is_one_everywhere() -> None:
    assert atom_async_db.__version__ == PROJECT["version"]


def test_the_installed_metadata_has_the_version() -> None:
    installed = importlib.metadata.version("atom_async_db")
    assert installed == PROJECT["version"], (
        f"the installed atom_async_db is {installed}, pyproject says {PROJECT['version']}: "
        "reinstall (make's venv does when pyproject.toml changes)"
    )


def test_the_changelog_has_an_entry_for_the_version() -> None:
    entry = release(PROJECT["version"])
    assert "### Added" in entry or "### Changed" in entry or "### Fixed" in entry


def test_the_changelog_lists_each_deprecated_name_with_its_removal() -> None:
    # (in any release's Deprecated section: the one that deprecated it)
    sections = re.findall(r"^### Deprecated\s*$(.*?)(?=^##|\Z)", CHANGELOG, re.M | re.S)
    deprecated = "\n".join(sections)
    for name in sync_compat.database_manager.__all__:
        line = next(
            (item for item in deprecated.split("\n- ") if f"database_manager.{name}()" in item),
            None,
        )
        assert line is not None, f"CHANGELOG.md's Deprecated does not list database_manager.{name}"
        assert "Removal in 2.0" in line, line


def test_the_changelog_names_each_atom_db_subcommand() -> None:
    names = [
        importlib.import_module(f"atom_async_db.cli.{m}").COMMAND.name for m in cli.SUBCOMMANDS
    ]
    assert names
    missing = [name for name in names if not re.search(rf"`atom-db {name}[` ]", CHANGELOG)]
    assert not missing, f"add a line for `atom-db {missing[0]}` to CHANGELOG.md (Added)"
    policy = section(CHANGELOG, "Version policy")
    listed = re.search(r"its subcommands \(([^)]*)\)", policy)
    assert listed, "the version policy does not list the subcommands"
    assert re.findall(r"`([a-z-]+)`", listed.group(1)) == names, (
        f"the version policy's subcommands ({listed.group(1)}) are not atom-db's {names}"
    )


def test_the_policy_names_the_exit_statuses() -> None:
    modules = [_command] + [
        importlib.import_module(f"atom_async_db.cli.{m}") for m in cli.SUBCOMMANDS
    ]
    statuses = {
        value
        for module in modules
        for name, value in vars(module).items()
        if name.startswith("EXIT_") and isinstance(value, int)
    }
    assert {0, 2, 64} <= statuses
    policy = section(CHANGELOG, "Version policy")
    for status in sorted(statuses | {130}):  # (130: Ctrl-C, from main())
        assert re.search(rf"\b{status}\s+[a-z`]", policy), f"exit status {status} not in the policy"


def test_the_policy_lists_the_public_modules() -> None:
    listed = policy_modules()
    assert len(listed) == len(set(listed)), listed
    assert set(listed) == set(PUBLIC_MODULES) - NOT_IN_POLICY, (
        "the version policy's public modules and tests/test_public_surface.py's "
        "PUBLIC_MODULES differ: a module made public (or private) changes both"
    )


@pytest.mark.parametrize("name", policy_modules())
def test_each_public_module_has_all(name: str) -> None:
    module: ModuleType = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert isinstance(exported, list) and exported, f"{name} has no __all__"
    assert all(not item.startswith("_") for item in exported), exported
    assert not any(part.startswith("_") for part in name.split(".")), name


@pytest.mark.parametrize("package", PACKAGES)
def test_py_typed_is_there_and_shipped(package: str) -> None:
    assert (ROOT / package / "py.typed").is_file()
    # Shipped: declared as package data, or by setuptools >= 69, which ships py.typed itself.
    declared = PYPROJECT["tool"]["setuptools"].get("package-data", {}).get(package, [])
    backend = " ".join(PYPROJECT["build-system"]["requires"])
    assert "py.typed" in declared or re.search(r"setuptools>=(69|[7-9]\d|\d{3})", backend)


def resolve(target: str) -> Any:
    module, _, attribute = target.partition(":")
    value: Any = importlib.import_module(module)
    for part in filter(None, attribute.split(".")):
        value = getattr(value, part)
    return value


def test_the_console_script_resolves_to_a_callable() -> None:
    assert PROJECT["scripts"] == {"atom-db": "atom_async_db.cli:main"}
    assert callable(resolve(PROJECT["scripts"]["atom-db"]))
    (installed,) = importlib.metadata.entry_points(group="console_scripts", name="atom-db")
    assert installed.value == PROJECT["scripts"]["atom-db"]
    assert installed.load() is resolve(PROJECT["scripts"]["atom-db"])


def test_the_pytest_plugins_resolve() -> None:
    declared = PROJECT["entry-points"]["pytest11"]
    assert set(declared) == set(PACKAGES)
    installed = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="pytest11")}
    for name, target in declared.items():
        assert isinstance(resolve(target), ModuleType)
        assert installed.get(name) == target, f"pytest11 {name}: installed {installed.get(name)}"
