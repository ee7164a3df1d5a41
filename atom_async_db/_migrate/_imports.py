"""The import plan: which imports of the legacy API become ``sync_compat`` imports, under
which local names, and which uses of the deprecated names change with them.

- ``from core.database_manager import get_db_session_for_request`` becomes ``from
  sync_compat import get_db``, and each use of ``get_db_session_for_request`` (a call,
  ``Depends(...)``) becomes ``get_db``; likewise ``get_monitored_db_session`` becomes
  ``get_db_session``. When the new name would clash (something else called ``get_db`` where
  a use is, or the old name in ``__all__`` or a string annotation), the uses keep the old
  name and the import says ``from sync_compat import get_db as get_db_session_for_request``.
- ``from core.database import get_db, SessionLocal, ...``: the names ``sync_compat`` provides
  move to ``from sync_compat import ...``; the others stay, under a comment saying so.
- ``database_manager.get_db_session()`` (``database_manager`` imported as a module) becomes
  ``get_db_session()`` with ``from sync_compat import get_db_session``; the module import
  goes when nothing else uses it.

Only imports that are a line of their own are rewritten (not ``import os; from core...``);
star imports are left as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import libcst as cst
import libcst.matchers as m
from libcst.metadata import Access, ClassScope, GlobalScope, Scope

from ._bindings import Binding, Resolver
from ._legacy import Source, replacement

__all__ = ["ImportPlan", "plan_imports"]

_LEGACY = (Source.MANAGER, Source.DATABASE)


@dataclass(eq=False)
class ImportPlan:
    """What the import rewriting changes in one module (nodes of its original tree)."""

    resolver: Resolver
    renames: dict[cst.Name, str] = field(default_factory=dict)
    """Uses of a deprecated name, and the name they take."""
    replacements: dict[cst.Attribute, str] = field(default_factory=dict)
    """``database_manager.get_db_session`` and the like, and the name replacing each."""
    moved: dict[Binding, tuple[str, str]] = field(default_factory=dict)
    """Each legacy name that moves to ``sync_compat``: ``(name there, local name)``."""
    kept: list[Binding] = field(default_factory=list)
    """Legacy names without a ``sync_compat`` equivalent, which stay where they are."""
    gone: set[cst.CSTNode] = field(default_factory=set)
    """References that no longer exist after the rewrite (attributes replaced, statements
    removed): a binding none of whose references remain is dropped from its import."""
    needed: dict[cst.CSTNode, list[str]] = field(default_factory=dict)
    """Names to import from ``sync_compat`` right after an import statement (its node)."""

    def renderable(self, binding: Binding) -> bool:
        """Whether the import of ``binding`` is a statement line of its own (the only kind
        the rewrite changes).

        Raises:
            Nothing.
        """
        line = self.resolver.parent(binding.node)
        return isinstance(line, cst.SimpleStatementLine) and len(line.body) == 1

    def provides(self, target: str, at: cst.CSTNode) -> bool:
        """Whether, after the rewrite, ``target`` is a name bound to ``sync_compat``'s
        ``target`` where ``at`` is.

        Raises:
            Nothing.
        """
        found = self.resolver.resolves_to(target, at, target)
        if found is not None:
            return found
        here = self.resolver.scope(at)
        scopes = _visible_scopes(here)
        providers: list[cst.CSTNode] = [
            binding.node for binding, (_, local) in self.moved.items() if local == target
        ]
        providers += [node for node, names in self.needed.items() if target in names]
        for node in providers:
            scope = self.resolver.scope(node)
            if any(scope is visible for visible in scopes) and (
                scope is not here or self._before(node, at)
            ):
                return True
        return False

    def _before(self, node: cst.CSTNode, at: cst.CSTNode) -> bool:
        """Whether ``node`` ends before ``at`` begins (code of one scope runs in order)."""
        end, start = self.resolver.position(node).end, self.resolver.position(at).start
        return (end.line, end.column) <= (start.line, start.column)

    def need(self, target: str, anchor: Binding, at: cst.CSTNode) -> bool:
        """Make ``target`` usable under its own name where ``at`` is, importing it after
        ``anchor``'s import statement when nothing there provides it yet; ``False`` when the
        name means something else there (the caller leaves its code alone).

        Raises:
            Nothing.
        """
        if self.provides(target, at):
            return True
        resolver = self.resolver
        if resolver.lookup(target, at) or resolver.lookup(target, anchor.node):
            return False  # (something else has that name)
        if not self.renderable(anchor):
            return False
        self.needed.setdefault(anchor.node, []).append(target)
        return True

    def dropped(self, binding: Binding) -> bool:
        """Whether ``binding`` goes from its import: it was used, and none of its uses (nor
        those of the other names a dotted ``import a.b`` binds) remains.

        Raises:
            Nothing.
        """
        references = binding.references
        if not references or any(access.node not in self.gone for access in references):
            return False
        if isinstance(binding.node, cst.Import) and binding.alias.asname is None:
            scope = binding.assignment.scope
            top = binding.name.split(".")[0]
            for other in scope.assignments[top]:
                if getattr(other, "node", None) is binding.node and any(
                    access.node not in self.gone for access in other.references
                ):
                    return False
        return True


def _visible_scopes(scope: Scope | None) -> list[Scope]:
    """``scope`` and the enclosing scopes whose names are visible from it (not a class's
    from its methods).
    """
    found: list[Scope] = []
    while scope is not None:
        if not found or not isinstance(scope, ClassScope):
            found.append(scope)
        if isinstance(scope, GlobalScope):
            break
        scope = scope.parent
    return found


def plan_imports(resolver: Resolver) -> ImportPlan:
    """The import plan of the module ``resolver`` analysed.

    Raises:
        Nothing.
    """
    plan = ImportPlan(resolver)
    legacy = [
        binding
        for binding in resolver.bindings
        if binding.source in _LEGACY and plan.renderable(binding)
    ]
    exported = _exported(resolver)
    for binding in legacy:
        if binding.module:
            continue
        target = replacement(binding.source, binding.name)
        if target is None:
            plan.kept.append(binding)
        elif binding.alias.asname is not None or binding.name == target:
            plan.moved[binding] = (target, binding.local)
        elif _can_rename(resolver, binding, target, exported):
            plan.moved[binding] = (target, target)
            for access in binding.references:
                assert isinstance(access.node, cst.Name)
                plan.renames[access.node] = target
        else:
            plan.moved[binding] = (target, binding.local)
    for binding in legacy:  # (after the names: ``database_manager.x`` may use one)
        if binding.module:
            _plan_attributes(plan, binding)
    return plan


def _can_rename(resolver: Resolver, binding: Binding, target: str, exported: set[str]) -> bool:
    """Whether every use of ``binding`` can take the name ``target``: each one a plain name
    that means only this binding, where ``target`` means nothing else.
    """
    scope = binding.assignment.scope
    if len(scope.assignments[binding.local]) != 1 or binding.local in exported:
        return False
    if resolver.resolves_to(target, binding.node, target) is False:
        return False
    for access in binding.references:
        node = access.node
        if not isinstance(node, cst.Name):  # (a string annotation, an ``__all__`` entry)
            return False
        if len(resolver.lookup(binding.local, node)) != 1:
            return False
        if resolver.resolves_to(target, node, target) is False:
            return False
    return True


def _exported(resolver: Resolver) -> set[str]:
    """The names in the module's ``__all__`` (its string entries, wherever it is built)."""
    found: set[str] = set()
    for statement in resolver.module.body:
        if not isinstance(statement, cst.SimpleStatementLine):
            continue
        for small in statement.body:
            if isinstance(small, cst.Assign):
                targets = [target.target for target in small.targets]
            elif isinstance(small, cst.AugAssign | cst.AnnAssign):
                targets = [small.target]
            else:
                continue
            if any(isinstance(t, cst.Name) and t.value == "__all__" for t in targets):
                value = small.value
                if value is not None:
                    found.update(
                        text
                        for string in m.findall(value, m.SimpleString())
                        if isinstance(string, cst.SimpleString)
                        and isinstance(text := string.evaluated_value, str)
                    )
    return found


def _plan_attributes(plan: ImportPlan, binding: Binding) -> None:
    """``module.name`` uses of an imported legacy module, replaced by ``name`` where it has
    an equivalent that can be imported.
    """
    resolver = plan.resolver
    for access in binding.references:
        attribute = _attribute_of(resolver, access)
        if attribute is None:
            continue
        target = replacement(binding.source, attribute.attr.value)
        if target is not None and plan.need(target, binding, attribute):
            plan.replacements[attribute] = target
            plan.gone.add(access.node)


def _attribute_of(resolver: Resolver, access: Access) -> cst.Attribute | None:
    parent = resolver.parent(access.node)
    if isinstance(parent, cst.Attribute) and parent.value is access.node:
        return parent
    return None
