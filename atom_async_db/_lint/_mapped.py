"""The mapped classes of the files linted and their relationships, which ATOM108 needs to
know that ``user.posts`` is a lazy relationship.

A model is each class that assigns ``relationship()`` (or SQLModel's ``Relationship()``)
in its body, with the ``lazy=`` it declares; ``backref="name"`` adds one to the other
class, and subclasses inherit them. Classes are known by name; when two files define the
same name, the one nearest the file that uses it wins (the same file, else the one whose
directory shares the longest prefix with it).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import PurePath

__all__ = ["Models", "Relationship", "collect_models", "single_target"]

_EAGER_OR_RAISING = frozenset(
    {
        "selectin",
        "joined",
        "subquery",
        "immediate",
        "raise",
        "raise_on_sql",
        "noload",
        "False",
        "None",
    }
)


@dataclass(frozen=True)
class Relationship:
    """A ``relationship()`` of a model class: its name, and its loader strategy."""

    owner: str
    name: str
    lazy: str
    """``lazy=`` as written (``"select"`` when not given)."""

    @property
    def loads_per_row(self) -> bool:
        """Whether reading it on each row of a loop emits a query per row (``select``,
        ``dynamic``; not the eager or raising strategies, nor ``write_only``).

        Raises:
            Nothing.
        """
        return self.lazy not in _EAGER_OR_RAISING | {"write_only"}


@dataclass
class _Class:
    name: str
    path: PurePath
    bases: list[str]
    own: dict[str, Relationship] = field(default_factory=dict)


class Models:
    """The model classes of the files linted, by name, each with its relationships."""

    def __init__(self, classes: Iterable[_Class] = ()) -> None:
        self._by_name: dict[str, list[_Class]] = {}
        for cls in classes:
            self._by_name.setdefault(cls.name, []).append(cls)

    def __bool__(self) -> bool:
        return any(cls.own for group in self._by_name.values() for cls in group)

    def _nearest(self, name: str, near: PurePath) -> _Class | None:
        candidates = self._by_name.get(name, [])
        if not candidates:
            return None
        return max(candidates, key=lambda cls: _shared(cls.path, near))

    def relationships(self, name: str, near: str) -> dict[str, Relationship]:
        """The relationships of the class ``name`` nearest the file ``near``, inherited
        ones included; empty if no such class has any.

        Raises:
            Nothing.
        """
        found: dict[str, Relationship] = {}
        seen: set[int] = set()
        pending = [(name, PurePath(near))]
        while pending:
            class_name, where = pending.pop(0)
            cls = self._nearest(class_name, where)
            if cls is None or id(cls) in seen:
                continue
            seen.add(id(cls))
            for rel_name, rel in cls.own.items():
                found.setdefault(rel_name, rel)
            pending += [(base, cls.path) for base in cls.bases]
        return found


def _shared(path: PurePath, near: PurePath) -> tuple[bool, int]:
    """How near ``path`` is to ``near``: the same file first, then the longest shared
    directory prefix.
    """
    shared = 0
    for mine, theirs in zip(path.parent.parts, near.parent.parts, strict=False):
        if mine != theirs:
            break
        shared += 1
    return path == near, shared


def collect_models(files: Iterable[tuple[str, ast.Module]]) -> Models:
    """The model classes of ``files`` (path, tree) and their relationships.

    Raises:
        Nothing.
    """
    classes: list[_Class] = []
    backrefs: list[tuple[_Class, str, Relationship]] = []  # (declared in, target, rel)
    for path, tree in files:
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef):
                continue
            cls = _Class(node.name, PurePath(path), [_last(base) for base in node.bases])
            classes.append(cls)
            for statement in node.body:
                target = single_target(statement)
                value = getattr(statement, "value", None)
                if target is None or not isinstance(value, ast.Call):
                    continue
                if _last(value.func) not in {"relationship", "Relationship"}:
                    continue
                cls.own[target] = Relationship(node.name, target, _lazy(value))
                backref = _backref(value)
                if backref is not None:
                    other, name, lazy = backref
                    backrefs.append((cls, other, Relationship(other, name, lazy)))
    models = Models(classes)
    for declared_in, other, rel in backrefs:
        target_class = models._nearest(other, declared_in.path)
        if target_class is not None:
            target_class.own.setdefault(rel.name, rel)
    return models


def _last(expr: ast.expr) -> str:
    if isinstance(expr, ast.Attribute):
        return expr.attr
    return expr.id if isinstance(expr, ast.Name) else ""


def single_target(statement: ast.stmt) -> str | None:
    """The name ``statement`` assigns, if it assigns one name (``x = ...``, ``x: T = ...``).

    Raises:
        Nothing.
    """
    if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
        return statement.target.id
    if (
        isinstance(statement, ast.Assign)
        and len(statement.targets) == 1
        and isinstance(statement.targets[0], ast.Name)
    ):
        return statement.targets[0].id
    return None


def _lazy(call: ast.Call) -> str:
    for keyword in call.keywords:
        if keyword.arg == "lazy" and isinstance(keyword.value, ast.Constant):
            return str(keyword.value.value)
        if keyword.arg == "sa_relationship_kwargs" and isinstance(keyword.value, ast.Dict):
            for key, value in zip(keyword.value.keys, keyword.value.values, strict=True):
                if (
                    isinstance(key, ast.Constant)
                    and key.value == "lazy"
                    and isinstance(value, ast.Constant)
                ):
                    return str(value.value)
    return "select"


def _backref(call: ast.Call) -> tuple[str, str, str] | None:
    """``(other class, name, lazy)`` of ``relationship("Other", backref="name")``."""
    if not call.args:
        return None
    first = call.args[0]
    other = first.value if isinstance(first, ast.Constant) else _last(first)
    if not isinstance(other, str) or not other:
        return None
    for keyword in call.keywords:
        if keyword.arg != "backref":
            continue
        value = keyword.value
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            return other.rpartition(".")[2], value.value, "select"
        if isinstance(value, ast.Call) and value.args and isinstance(value.args[0], ast.Constant):
            return other.rpartition(".")[2], str(value.args[0].value), _lazy(value)
    return None
