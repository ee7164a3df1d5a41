"""What a name in the code refers to: the imports of the legacy API and of ``sync_compat``,
and the expressions that resolve to one of ``sync_compat``'s names through them, from
libcst's scope analysis (so a local variable of the same name is never mistaken for one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import libcst as cst
from libcst.metadata import (
    Access,
    BaseAssignment,
    CodeRange,
    ImportAssignment,
    MetadataWrapper,
    ParentNodeProvider,
    PositionProvider,
    Scope,
    ScopeProvider,
)

from ._legacy import Source, classify, replacement, resolve_module

__all__ = ["Binding", "Resolver", "dotted_name"]


@dataclass(frozen=True, eq=False)
class Binding:
    """One name that an import of a legacy module, or of ``sync_compat``, binds."""

    node: cst.Import | cst.ImportFrom
    alias: cst.ImportAlias
    assignment: ImportAssignment
    source: Source
    module: bool
    """It binds a module (``from core import database_manager``, ``import
    core.database_manager as dm``), whose attributes are the names."""

    @property
    def name(self) -> str:
        """The name imported (``get_db`` of ``from core.database import get_db as g``)."""
        return self.alias.evaluated_name

    @property
    def local(self) -> str:
        """The name the import binds in its scope."""
        return self.alias.evaluated_alias or self.alias.evaluated_name

    @property
    def references(self) -> list[Access]:
        """Where the code uses the binding (libcst's accesses; a string annotation or an
        ``__all__`` entry is one too, as a string node).
        """
        return list(self.assignment.references)


def dotted_name(node: cst.BaseExpression) -> str | None:
    """``a.b.c`` for ``Name``/``Attribute`` chains; ``None`` for anything else.

    Raises:
        Nothing.
    """
    if isinstance(node, cst.Name):
        return node.value
    if isinstance(node, cst.Attribute):
        value = dotted_name(node.value)
        return None if value is None else f"{value}.{node.attr.value}"
    return None


class _ImportCollector(cst.CSTVisitor):
    def __init__(self) -> None:
        self.found: list[cst.Import | cst.ImportFrom] = []

    def visit_Import(self, node: cst.Import) -> None:
        self.found.append(node)

    def visit_ImportFrom(self, node: cst.ImportFrom) -> None:
        self.found.append(node)


class Resolver:
    """The scope analysis of one module, and its bindings of the legacy API.

    Raises:
        Nothing of its own (libcst's metadata resolution raises on a tree it cannot
            analyse).
    """

    def __init__(self, wrapper: MetadataWrapper, directories: Sequence[str]) -> None:
        self.module = wrapper.module
        self._scopes = wrapper.resolve(ScopeProvider)
        self._parents = wrapper.resolve(ParentNodeProvider)
        self._positions = wrapper.resolve(PositionProvider)
        self._directories = tuple(directories)
        collector = _ImportCollector()
        self.module.visit(collector)
        self.bindings: list[Binding] = []
        for node in collector.found:
            self.bindings += self._bindings_of(node)
        self._by_assignment = {id(binding.assignment): binding for binding in self.bindings}

    # ----------------------------------------------------------------------- metadata

    def scope(self, node: cst.CSTNode) -> Scope | None:
        """The scope ``node`` is in.

        Raises:
            Nothing.
        """
        return self._scopes.get(node)

    def parent(self, node: cst.CSTNode) -> cst.CSTNode | None:
        """The node ``node`` is a child of.

        Raises:
            Nothing.
        """
        return self._parents.get(node)

    def position(self, node: cst.CSTNode) -> CodeRange:
        """Where ``node`` starts and ends in the source.

        Raises:
            KeyError: ``node`` is not a node of the analysed tree.
        """
        return self._positions[node]

    # ----------------------------------------------------------------------- bindings

    def _bindings_of(self, node: cst.Import | cst.ImportFrom) -> list[Binding]:
        scope = self.scope(node)
        if scope is None or isinstance(node.names, cst.ImportStar):
            return []
        if isinstance(node, cst.ImportFrom):
            level = len(node.relative)
            base = "" if node.module is None else (dotted_name(node.module) or "")
            module = resolve_module(base, level, self._directories)
        found = []
        for alias in node.names:
            if isinstance(node, cst.ImportFrom):
                source = classify(module, level > 0)
                as_module = None
                if source is None or source is Source.SYNC_COMPAT:
                    as_module = classify(f"{module}.{alias.evaluated_name}", level > 0)
                    if as_module is Source.SYNC_COMPAT:
                        as_module = None  # (``from sync_compat import sync_compat``?)
                if as_module is not None:
                    source, is_module = as_module, True
                elif source is not None:
                    is_module = False
                else:
                    continue
            else:
                source = classify(alias.evaluated_name, False)
                is_module = True
                if source is None:
                    continue
            local = alias.evaluated_alias or alias.evaluated_name
            for assignment in scope.assignments[local]:
                if isinstance(assignment, ImportAssignment) and assignment.node is node:
                    found.append(Binding(node, alias, assignment, source, is_module))
        return found

    def binding(self, assignment: BaseAssignment) -> Binding | None:
        """The binding of the legacy API (or ``sync_compat``) that ``assignment`` is.

        Raises:
            Nothing.
        """
        return self._by_assignment.get(id(assignment))

    def lookup(self, name: str, node: cst.CSTNode) -> list[BaseAssignment]:
        """The assignments ``name`` may refer to where ``node`` is.

        Raises:
            Nothing.
        """
        scope = self.scope(node)
        return [] if scope is None else list(scope[name])

    def target(self, expression: cst.BaseExpression) -> tuple[str, Binding] | None:
        """The ``sync_compat`` name ``expression`` refers to, and the binding it goes
        through: ``get_db_session`` for ``get_monitored_db_session`` imported from
        ``core.database_manager``, or for ``database_manager.get_db_session``.

        Raises:
            Nothing.
        """
        if isinstance(expression, cst.Name):
            binding = self._only_binding(expression.value, expression)
            if binding is None or binding.module:
                return None
            name = replacement(binding.source, binding.name)
            return None if name is None else (name, binding)
        if isinstance(expression, cst.Attribute):
            dotted = dotted_name(expression.value)
            if dotted is None:
                return None
            binding = self._only_binding(dotted, expression)
            if binding is None or not binding.module:
                return None
            name = replacement(binding.source, expression.attr.value)
            return None if name is None else (name, binding)
        return None

    def _only_binding(self, name: str, node: cst.CSTNode) -> Binding | None:
        assignments = self.lookup(name, node)
        if len(assignments) != 1:
            return None
        return self.binding(assignments[0])

    def resolves_to(self, name: str, node: cst.CSTNode, target: str) -> bool | None:
        """Whether ``name``, where ``node`` is, refers only to ``sync_compat``'s ``target``
        (through any import of it): ``True``; to nothing: ``None``; to anything else, or
        to more than one thing: ``False``.

        Raises:
            Nothing.
        """
        assignments = self.lookup(name, node)
        if not assignments:
            return None
        for assignment in assignments:
            binding = self.binding(assignment)
            if binding is None or binding.module:
                return False
            if replacement(binding.source, binding.name) != target:
                return False
        return True
