"""The codemod of one module: parse it, plan the import and session rewrites on the scope
analysis, apply them in one pass over the tree, and check the result before handing it
back (it parses, and every comment of the original is still in it).

Statements that go leave their comments behind: on the line above the statement that
follows them, or at the end of their block. A ``try``/``finally`` that becomes a ``with``
keeps the comments of its ``except`` and ``finally`` parts at the end of the new block.
"""

from __future__ import annotations

import ast
import io
import tokenize
from collections import Counter
from collections.abc import Sequence

import libcst as cst
from libcst.metadata import MetadataWrapper

from ._bindings import Resolver
from ._imports import ImportPlan, plan_imports
from ._legacy import NO_EQUIVALENT
from ._render import ImportRenderer, comment_lines
from ._sessions import Rewrite, SessionPlan, plan_sessions

__all__ = ["MigrationError", "migrate"]


class MigrationError(Exception):
    """The rewritten module failed the codemod's own checks: it is left as it was."""


def migrate(source: bytes, directories: Sequence[str] = ()) -> bytes:
    """``source`` (a module's bytes) with the checklist's mechanical steps applied.

    When the session rules would drop a comment (one inside ``SessionLocal(  # ...)``,
    say), the module is rewritten again without them: imports only.

    Args:
        source: the module, as read from its file (its encoding declaration honoured).
        directories: the names of the folders the file is in, the nearest last (relative
            imports resolve through them: ``from .database import get_db`` in ``core/``).

    Returns:
        The new bytes, or ``source`` itself when nothing changes.

    Raises:
        libcst.ParserSyntaxError: ``source`` is not valid Python.
        MigrationError: the result would not parse, or would lose a comment.
    """
    module = cst.parse_module(source)
    try:
        return _rewrite(module, source, directories, sessions=True)
    except MigrationError:
        return _rewrite(module, source, directories, sessions=False)


def _rewrite(
    module: cst.Module, source: bytes, directories: Sequence[str], *, sessions: bool
) -> bytes:
    wrapper = MetadataWrapper(module)  # (a copy of ``module``: its nodes are the plans' keys)
    resolver = Resolver(wrapper, directories)
    imports = plan_imports(resolver)
    session_plan = plan_sessions(resolver, imports) if sessions else SessionPlan()
    changed = wrapper.module.visit(_Apply(imports, session_plan))
    result = changed.bytes
    if result == source:
        return source
    _check(source, result, changed.encoding)
    return result


def _check(source: bytes, result: bytes, encoding: str) -> None:
    try:
        ast.parse(result)
    except SyntaxError as error:  # pragma: no cover (a bug of the codemod)
        raise MigrationError(f"the rewrite would not parse ({error.msg})") from None
    lost = _comments(source, encoding) - _comments(result, encoding)
    if lost:
        raise MigrationError(f"the rewrite would drop the comment {next(iter(lost))!r}")


def _comments(code: bytes, encoding: str) -> Counter[str]:
    text = code.decode(encoding)
    tokens = tokenize.generate_tokens(io.StringIO(text).readline)
    return Counter(
        token.string.rstrip()
        for token in tokens
        if token.type == tokenize.COMMENT and not token.string.startswith(NO_EQUIVALENT)
    )


class _Apply(cst.CSTTransformer):
    """Applies the plans (made on the original tree: its nodes are the keys)."""

    def __init__(self, imports: ImportPlan, sessions: SessionPlan) -> None:
        super().__init__()
        self._imports = imports
        self._sessions = sessions
        self._renderer = ImportRenderer(imports)

    def leave_Name(self, original_node: cst.Name, updated_node: cst.Name) -> cst.Name:
        name = self._imports.renames.get(original_node)
        return updated_node if name is None else updated_node.with_changes(value=name)

    def leave_Attribute(
        self, original_node: cst.Attribute, updated_node: cst.Attribute
    ) -> cst.BaseExpression:
        name = self._imports.replacements.get(original_node)
        if name is None:
            return updated_node
        return cst.Name(name, lpar=updated_node.lpar, rpar=updated_node.rpar)

    def leave_IndentedBlock(
        self, original_node: cst.IndentedBlock, updated_node: cst.IndentedBlock
    ) -> cst.IndentedBlock:
        body, footer = self._block(original_node.body, updated_node.body, updated_node.footer)
        if not body:  # (cannot happen by the rules; a block needs a statement)
            body = [cst.SimpleStatementLine(body=[cst.Pass()])]
        return updated_node.with_changes(body=body, footer=footer)

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        body, footer = self._block(original_node.body, updated_node.body, updated_node.footer)
        return updated_node.with_changes(body=body, footer=footer)

    def _block(
        self,
        originals: Sequence[cst.BaseStatement],
        updates: Sequence[cst.BaseStatement],
        footer: Sequence[cst.EmptyLine],
    ) -> tuple[list[cst.BaseStatement], list[cst.EmptyLine]]:
        """The statements of one block after the rewrite, and its footer."""
        self._renderer.block()
        sessions = self._sessions
        body: list[cst.BaseStatement] = []
        pending: list[cst.EmptyLine] = []  # (comments of statements gone, for the next one)
        for original, updated in zip(originals, updates, strict=True):
            lines: Sequence[cst.BaseStatement] = [updated]
            rewrite = sessions.rewrites.get(original) if isinstance(original, cst.Try) else None
            if rewrite is not None:
                assert isinstance(updated, cst.Try)
                lines = [_with_block(updated, rewrite)]
            elif original in sessions.removals:
                assert isinstance(original, cst.SimpleStatementLine)
                if any(rewrite.assignment is original for rewrite in sessions.rewrites.values()):
                    pending += original.leading_lines  # (its blank lines too: the with's now)
                    pending += comment_lines(original.with_changes(leading_lines=()))
                else:
                    pending += comment_lines(original)
                continue
            elif isinstance(original, cst.SimpleStatementLine):
                rendered = self._renderer.render(original)
                if rendered is not None:
                    lines = rendered
                    if not rendered:
                        pending += original.leading_lines
                        pending += comment_lines(original.with_changes(leading_lines=()))
            for line in lines:
                if pending and isinstance(
                    line, cst.SimpleStatementLine | cst.BaseCompoundStatement
                ):
                    line = line.with_changes(leading_lines=[*pending, *line.leading_lines])
                    pending = []
                body.append(line)
        return body, [*pending, *footer]


def _with_block(node: cst.Try, rewrite: Rewrite) -> cst.With:
    """``with get_db_session(independent=True) as db:`` with the ``try``'s body, and the
    comments of its ``except`` and ``finally`` parts at the end of that body.
    """
    assert isinstance(node.body, cst.IndentedBlock)
    assert node.finalbody is not None
    moved: list[cst.EmptyLine] = []
    for handler in node.handlers:
        moved += _part_comments(handler.leading_lines, handler.body)
    moved += _part_comments(node.finalbody.leading_lines, node.finalbody.body)
    body = node.body.with_changes(footer=[*node.body.footer, *moved])
    # independent=True: a session of its own, as SessionLocal() gave, also when the code
    # runs inside another get_db_session() block (a plain block would join that one's
    # transaction, and the caller's failure would roll this commit back).
    tight = cst.AssignEqual(
        whitespace_before=cst.SimpleWhitespace(""), whitespace_after=cst.SimpleWhitespace("")
    )
    independent = cst.Arg(keyword=cst.Name("independent"), value=cst.Name("True"), equal=tight)
    item = cst.WithItem(
        item=cst.Call(func=cst.Name("get_db_session"), args=[independent]),
        asname=cst.AsName(name=cst.Name(rewrite.variable)),
    )
    return cst.With(items=[item], body=body, leading_lines=node.leading_lines)


def _part_comments(leading: Sequence[cst.EmptyLine], suite: cst.BaseSuite) -> list[cst.EmptyLine]:
    """The comments of an ``except`` or ``finally`` part that goes: above it, on its line,
    in its body.
    """
    found = [line for line in leading if line.comment is not None]
    if isinstance(suite, cst.IndentedBlock):
        if suite.header.comment is not None:
            found.append(cst.EmptyLine(comment=suite.header.comment))
        for statement in suite.body:
            if isinstance(statement, cst.SimpleStatementLine):
                found += comment_lines(statement)
        found += [line for line in suite.footer if line.comment is not None]
    return found
