"""The session lifecycle rules: a redundant ``db.close()`` in a ``get_db_session()`` block,
and a ``try``/``finally`` around ``SessionLocal()`` that is provably a ``get_db_session()``
block. Each applies only where the code is equivalent before and after, by the seed's
semantics of ``get_db_session()`` (a session of its own that commits when the block exits
cleanly, rolls back when it raises, and is always closed); anything else is left as it is.

**A** ``db.close()`` goes from ``with get_db_session() as db:`` (one item, no arguments;
``get_monitored_db_session()`` and ``database_manager.get_db_session()`` count) when it
directly follows ``db.commit()`` and ends the block, or is followed only by a ``return``
of a name or a constant; and ``db`` is not rebound in the block. After a commit nothing is
pending, so closing early and letting the block close are the same: the block's own commit
has nothing left to do. (A ``close()`` that may discard uncommitted changes, or after which
the block still runs code that may load, is not redundant.)

**B** ::

    db = SessionLocal()          with get_db_session(independent=True) as db:
    try:                             BODY
        BODY                 ->
    finally:
        db.close()

when all of these hold:

1. ``db = SessionLocal()``, without arguments, directly precedes the ``try``; and
   ``SessionLocal`` is the one from ``core.database`` or ``sync_compat``;
2. the ``finally`` is exactly ``db.close()``; no ``else``; at most one handler, ``except:``,
   ``except Exception:`` or ``except BaseException:`` (no ``as``), that is exactly
   ``db.rollback()`` and a bare ``raise`` (what the block does on an error anyway);
3. BODY ends with ``db.commit()`` and cannot leave before it other than by an exception:
   no ``return``, ``yield``, ``global``/``nonlocal``, nor ``break``/``continue`` outside
   a loop of its own. So a clean exit has committed everything, and the block's commit is
   a no-op; an exception rolls back and closes, as ``finally: db.close()`` did;
4. BODY neither rebinds nor deletes ``db``, nor closes it;
5. ``db`` is not used after the ``try`` (unless a later statement of the same block rebinds
   it first), nor by a nested function, nor, in a loop, before the assignment;
6. the name ``get_db_session`` means ``sync_compat``'s there, or nothing (it is imported).

The block is ``independent=True``: like ``SessionLocal()``, a connection and a transaction
of its own, also when it runs inside another ``get_db_session()`` block of the same thread,
which a plain block would join through a SAVEPOINT (so that the caller's failure would roll
back what this one committed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import libcst as cst
import libcst.matchers as m
from libcst.metadata import BuiltinAssignment, CodePosition, CodeRange

from ._bindings import Resolver
from ._imports import ImportPlan

__all__ = ["Rewrite", "SessionPlan", "plan_sessions"]

_SESSION_FACTORY = "SessionLocal"
_SESSION_BLOCK = "get_db_session"
_BROAD = ("Exception", "BaseException")


@dataclass(frozen=True, eq=False)
class Rewrite:
    """One ``try``/``finally`` that becomes ``with get_db_session() as db:``."""

    assignment: cst.SimpleStatementLine
    """``db = SessionLocal()``, the statement before the ``try``: it goes."""
    variable: str


@dataclass(eq=False)
class SessionPlan:
    """What the session rules change in one module (nodes of its original tree)."""

    removals: set[cst.CSTNode] = field(default_factory=set)
    """Statements that go: ``db.close()`` (rule A) and ``db = SessionLocal()`` (rule B)."""
    rewrites: dict[cst.Try, Rewrite] = field(default_factory=dict)


def plan_sessions(resolver: Resolver, imports: ImportPlan) -> SessionPlan:
    """The session plan of the module ``resolver`` analysed; names it needs imported, and
    references it removes, go into ``imports``.

    Raises:
        Nothing.
    """
    plan = SessionPlan()
    finder = _Finder(resolver, imports, plan)
    resolver.module.visit(finder)
    return plan


class _Finder(cst.CSTVisitor):
    def __init__(self, resolver: Resolver, imports: ImportPlan, plan: SessionPlan) -> None:
        self.resolver = resolver
        self.imports = imports
        self.plan = plan

    def visit_With(self, node: cst.With) -> None:
        _redundant_close(self, node)

    def visit_Module(self, node: cst.Module) -> None:
        self._block(node.body)

    def visit_IndentedBlock(self, node: cst.IndentedBlock) -> None:
        self._block(node.body)

    def _block(self, body: Sequence[cst.BaseStatement]) -> None:
        for index in range(1, len(body)):
            statement = body[index]
            if isinstance(statement, cst.Try):
                _try_finally(self, body, index, statement)


# ----------------------------------------------------------------------------- rule A


def _redundant_close(finder: _Finder, node: cst.With) -> None:
    if node.asynchronous is not None or len(node.items) != 1:
        return
    item = node.items[0]
    call = item.item
    if not isinstance(call, cst.Call) or call.args or item.asname is None:
        return
    variable = item.asname.name
    if not isinstance(variable, cst.Name) or not isinstance(node.body, cst.IndentedBlock):
        return
    target = finder.resolver.target(call.func)
    if target is None or target[0] != _SESSION_BLOCK:
        return
    body = list(node.body.body)
    name = variable.value
    close = -1
    if len(body) >= 2 and _method_call(body[-1], name, "close"):
        close = len(body) - 1
    elif len(body) >= 3 and _plain_return(body[-1]) and _method_call(body[-2], name, "close"):
        close = len(body) - 2
    if close < 1 or not _method_call(body[close - 1], name, "commit"):
        return
    if _rebinds(finder.resolver, node.body, name):
        return
    finder.plan.removals.add(body[close])


def _plain_return(statement: cst.BaseStatement) -> bool:
    """``return``, ``return NAME`` or ``return CONSTANT``: nothing that may load."""
    if not isinstance(statement, cst.SimpleStatementLine) or len(statement.body) != 1:
        return False
    small = statement.body[0]
    if not isinstance(small, cst.Return):
        return False
    value = small.value
    return value is None or isinstance(value, cst.Name | cst.Integer | cst.Float | cst.SimpleString)


# ----------------------------------------------------------------------------- rule B


def _try_finally(
    finder: _Finder, body: Sequence[cst.BaseStatement], index: int, node: cst.Try
) -> None:
    resolver = finder.resolver
    assignment = body[index - 1]
    found = _session_assignment(finder, assignment)
    if found is None:
        return
    name, factory = found
    if node.orelse is not None or node.finalbody is None or len(node.handlers) > 1:
        return
    final = node.finalbody.body
    if not isinstance(final, cst.IndentedBlock) or len(final.body) != 1:
        return
    if not _method_call(final.body[0], name, "close"):
        return
    if node.handlers and not _rollback_and_raise(resolver, node.handlers[0], name):
        return
    if not isinstance(node.body, cst.IndentedBlock) or not node.body.body:
        return
    if not _method_call(node.body.body[-1], name, "commit"):
        return
    exits = _Exits()
    node.body.visit(exits)
    if exits.found or _rebinds(resolver, node.body, name):
        return
    if m.findall(node.body, _call_on(name, "close")):
        return
    if not _unused_elsewhere(resolver, body, index, name):
        return
    target = resolver.target(factory)
    assert target is not None
    if not finder.imports.need(_SESSION_BLOCK, target[1], node):
        return
    assert isinstance(assignment, cst.SimpleStatementLine)
    finder.plan.rewrites[node] = Rewrite(assignment, name)
    finder.plan.removals.add(assignment)
    reference = factory if isinstance(factory, cst.Name) else factory.value
    finder.imports.gone.add(reference)


def _session_assignment(
    finder: _Finder, statement: cst.BaseStatement
) -> tuple[str, cst.Name | cst.Attribute] | None:
    """``(db, SessionLocal)`` for ``db = SessionLocal()``."""
    if not isinstance(statement, cst.SimpleStatementLine) or len(statement.body) != 1:
        return None
    small = statement.body[0]
    if not isinstance(small, cst.Assign) or len(small.targets) != 1:
        return None
    variable = small.targets[0].target
    call = small.value
    if not isinstance(variable, cst.Name) or not isinstance(call, cst.Call) or call.args:
        return None
    factory = call.func
    if not isinstance(factory, cst.Name | cst.Attribute):
        return None
    target = finder.resolver.target(factory)
    if target is None or target[0] != _SESSION_FACTORY:
        return None
    return variable.value, factory


def _rollback_and_raise(resolver: Resolver, handler: cst.ExceptHandler, name: str) -> bool:
    if handler.name is not None or not isinstance(handler.body, cst.IndentedBlock):
        return False
    kind = handler.type
    if kind is not None:
        if not isinstance(kind, cst.Name) or kind.value not in _BROAD:
            return False
        meanings = resolver.lookup(kind.value, kind)
        if not all(isinstance(meaning, BuiltinAssignment) for meaning in meanings):
            return False
    statements = handler.body.body
    if len(statements) != 2 or not _method_call(statements[0], name, "rollback"):
        return False
    last = statements[1]
    return (
        isinstance(last, cst.SimpleStatementLine)
        and len(last.body) == 1
        and isinstance(last.body[0], cst.Raise)
        and last.body[0].exc is None
    )


def _unused_elsewhere(
    resolver: Resolver, body: Sequence[cst.BaseStatement], index: int, name: str
) -> bool:
    """Rule B's 5: no use of ``name`` can see the session after the ``try``."""
    assignment, node = body[index - 1], body[index]
    scope = resolver.scope(assignment)
    if scope is None:
        return False
    start, end = resolver.position(assignment).start, resolver.position(node).end
    rebound_at = None
    for later in body[index + 1 :]:
        if _assigns(later, name):
            rebound_at = resolver.position(later).end
            break
    for candidate in scope.assignments[name]:
        for access in candidate.references:
            if access.scope is not scope:
                return False  # (a closure)
    in_loop = _in_loop(resolver, assignment)
    for access in scope.accesses[name]:
        where = resolver.position(access.node)
        if _within(where, start, end):
            continue
        if _at(where.start) < _at(start):
            if in_loop:
                return False
            continue
        if rebound_at is None or _at(where.start) <= _at(rebound_at):
            return False
    return True


def _within(where: CodeRange, start: CodePosition, end: CodePosition) -> bool:
    return _at(start) <= _at(where.start) and _at(where.end) <= _at(end)


def _at(position: CodePosition) -> tuple[int, int]:
    return position.line, position.column


def _assigns(statement: cst.BaseStatement, name: str) -> bool:
    """``name = ...``, a statement line of its own."""
    if not isinstance(statement, cst.SimpleStatementLine) or len(statement.body) != 1:
        return False
    small = statement.body[0]
    return isinstance(small, cst.Assign) and any(
        isinstance(target.target, cst.Name) and target.target.value == name
        for target in small.targets
    )


def _in_loop(resolver: Resolver, node: cst.CSTNode) -> bool:
    parent = resolver.parent(node)
    while parent is not None and not isinstance(parent, cst.FunctionDef | cst.Module):
        if isinstance(parent, cst.For | cst.While):
            return True
        parent = resolver.parent(parent)
    return False


# ----------------------------------------------------------------------------- shared


def _call_on(name: str, method: str) -> m.Call:
    return m.Call(func=m.Attribute(value=m.Name(name), attr=m.Name(method)), args=[])


def _method_call(statement: cst.BaseStatement, name: str, method: str) -> bool:
    """``name.method()``, a statement line of its own."""
    return (
        isinstance(statement, cst.SimpleStatementLine)
        and len(statement.body) == 1
        and isinstance(statement.body[0], cst.Expr)
        and m.matches(statement.body[0].value, _call_on(name, method))
    )


def _rebinds(resolver: Resolver, block: cst.CSTNode, name: str) -> bool:
    """Whether anything in ``block`` may bind ``name`` again (or delete it)."""
    scope = resolver.scope(block)
    if scope is not None:
        where = resolver.position(block)
        for assignment in scope.assignments[name]:
            node = getattr(assignment, "node", None)
            if isinstance(node, cst.CSTNode) and _within(
                resolver.position(node), where.start, where.end
            ):
                return True
    deleted = m.Del(target=m.Name(name) | m.Tuple() | m.List())
    declared = m.Global() | m.Nonlocal()
    return bool(m.findall(block, deleted) or m.findall(block, declared))


class _Exits(cst.CSTVisitor):
    """Finds a way out of a block other than its end or an exception."""

    def __init__(self) -> None:
        self.found = False
        self._loops = 0

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        return False

    def visit_ClassDef(self, node: cst.ClassDef) -> bool:
        return False

    def visit_Lambda(self, node: cst.Lambda) -> bool:
        return False

    def visit_Return(self, node: cst.Return) -> None:
        self.found = True

    def visit_Yield(self, node: cst.Yield) -> None:
        self.found = True

    def visit_Global(self, node: cst.Global) -> None:
        self.found = True

    def visit_Nonlocal(self, node: cst.Nonlocal) -> None:
        self.found = True

    def visit_Break(self, node: cst.Break) -> None:
        self.found = self.found or self._loops == 0

    def visit_Continue(self, node: cst.Continue) -> None:
        self.found = self.found or self._loops == 0

    def visit_For(self, node: cst.For) -> bool:
        node.iter.visit(self)
        self._loop(node.body)
        if node.orelse is not None:
            node.orelse.visit(self)
        return False

    def visit_While(self, node: cst.While) -> bool:
        node.test.visit(self)
        self._loop(node.body)
        if node.orelse is not None:
            node.orelse.visit(self)
        return False

    def _loop(self, body: cst.BaseSuite) -> None:
        self._loops += 1
        body.visit(self)
        self._loops -= 1
