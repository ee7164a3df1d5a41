"""The exception tree drawn in ``exceptions``' docstring is the classes' own."""

from __future__ import annotations

import re

from atom_async_db import exceptions


def test_the_drawn_tree_is_the_class_hierarchy() -> None:
    drawn: dict[str, set[str]] = {}
    parents: list[str] = []
    for line in str(exceptions.__doc__).splitlines():
        found = re.match(r"\s{4}((?:[│ ]   )*)(?:[├└]── )?(\w+)(?:\s+also ([\w.]+))?$", line)
        if found is None:
            continue
        indent, name, also = found.groups()
        depth = len(indent) // 4 + (1 if "── " in line else 0)
        parents[depth:] = [name]
        bases = {parents[depth - 1]} if depth else set()
        drawn[name] = bases | ({also.rpartition(".")[2]} if also else set())
    assert set(drawn) == set(exceptions.__all__)  # every class, each once
    for name, bases in drawn.items():
        actual = {base.__name__ for base in getattr(exceptions, name).__bases__}
        assert actual == bases, name
