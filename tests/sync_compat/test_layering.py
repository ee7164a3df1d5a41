"""sync_compat enters the core through one door: besides the public modules, the only
private core module it imports is the seam, ``atom_async_db._compat``."""

from __future__ import annotations

import ast
from pathlib import Path

import sync_compat

PACKAGE = Path(sync_compat.__file__).parent


def core_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.split(".")[0] == "atom_async_db"}


def test_sync_compat_imports_no_private_core_module_but_the_seam() -> None:
    private = {
        f"{path.name}: {name}"
        for path in PACKAGE.glob("*.py")
        for name in core_imports(path)
        if any(part.startswith("_") for part in name.split(".")[1:])
        and name != "atom_async_db._compat"
    }
    assert private == set()


def test_the_check_sees_imports() -> None:  # (so that the test above can fail)
    assert "atom_async_db._compat" in core_imports(PACKAGE / "_sync_scope.py")
