"""Import statements after the rewrite: one legacy import line becomes its ``sync_compat``
import and what stays behind, its layout (parentheses, one name a line) and comments kept.

A line ``from core.database import SessionLocal, engine  # noqa: F401`` becomes::

    from sync_compat import SessionLocal  # noqa: F401
    # atom-db migrate: no sync_compat equivalent for engine
    from core.database import engine  # noqa: F401

(the line's own comment goes on each). A name already imported from ``sync_compat`` by an
earlier line of the same block is not imported twice.
"""

from __future__ import annotations

from collections.abc import Sequence

import libcst as cst

from ._bindings import Binding
from ._imports import ImportPlan
from ._legacy import NO_EQUIVALENT, SYNC_COMPAT

__all__ = ["ImportRenderer", "comment_lines"]


def comment_lines(statement: cst.SimpleStatementLine) -> list[cst.EmptyLine]:
    """The comments of a statement line that is going, as lines of their own: those above
    it, then its trailing one.

    Raises:
        Nothing.
    """
    lines = [line for line in statement.leading_lines if line.comment is not None]
    comment = statement.trailing_whitespace.comment
    if comment is not None:
        lines.append(cst.EmptyLine(comment=comment))
    return lines


class ImportRenderer:
    """Renders the import lines of one module, block by block (:meth:`block` starts one)."""

    def __init__(self, plan: ImportPlan) -> None:
        self._plan = plan
        self._by_alias: dict[cst.ImportAlias, Binding] = {
            binding.alias: binding for binding in plan.resolver.bindings
        }
        self._nodes = {binding.node for binding in plan.resolver.bindings}
        self._provided: set[tuple[str, str]] = set()

    def block(self) -> None:
        """A new block begins: names imported in the previous one do not count.

        Raises:
            Nothing.
        """
        self._provided = set()

    def render(self, original: cst.SimpleStatementLine) -> list[cst.SimpleStatementLine] | None:
        """The lines replacing ``original`` (an import line of the legacy API or of
        ``sync_compat``), or ``None`` when it stays as it is.

        Raises:
            Nothing.
        """
        node = original.body[0] if len(original.body) == 1 else None
        plan = self._plan
        if (
            not isinstance(node, cst.Import | cst.ImportFrom)
            or isinstance(node.names, cst.ImportStar)
            or (node not in self._nodes and node not in plan.needed)
        ):
            self.seen(original)
            return None
        moved: list[cst.ImportAlias] = []
        remaining: list[cst.ImportAlias] = []
        lacking: list[str] = []
        for alias in node.names:
            binding = self._by_alias.get(alias)
            if binding is None:
                remaining.append(alias)
            elif plan.dropped(binding):
                continue
            elif binding in plan.moved:
                target, local = plan.moved[binding]
                moved.append(_renamed(alias, target, local))
            else:
                if binding in plan.kept:
                    lacking.append(binding.local)
                remaining.append(alias)
        extra = [cst.ImportAlias(name=cst.Name(name)) for name in plan.needed.get(node, [])]
        if isinstance(node, cst.ImportFrom) and _from_sync_compat(node):
            remaining += extra
        else:
            moved = self._unique(moved + extra)
        lines: list[cst.SimpleStatementLine] = []
        leading = [line for line in original.leading_lines if not _ours(line)]
        if moved:
            if isinstance(node, cst.ImportFrom):
                new = node.with_changes(
                    module=cst.Name(SYNC_COMPAT), relative=[], names=_commas(moved, node)
                )
            else:
                new = cst.ImportFrom(module=cst.Name(SYNC_COMPAT), names=_commas(moved, node))
            lines.append(original.with_changes(body=[new], leading_lines=leading))
            leading = []
        if remaining:
            if lacking:
                text = f"{NO_EQUIVALENT} {', '.join(lacking)}"
                leading = [*leading, cst.EmptyLine(comment=cst.Comment(text))]
            kept = node.with_changes(names=_commas(remaining, node))
            lines.append(original.with_changes(body=[kept], leading_lines=leading))
        for line in lines:
            self.seen(line)
        if len(lines) == 1 and lines[0].deep_equals(original):
            return None
        return lines

    def _unique(self, aliases: Sequence[cst.ImportAlias]) -> list[cst.ImportAlias]:
        """``aliases`` less those an earlier line of the block imports already (unless a
        comment rides on one).
        """
        found = []
        for alias in aliases:
            pair = _pair(alias)
            if pair in self._provided and not _has_comment(alias):
                continue
            self._provided.add(pair)
            found.append(alias)
        return found

    def seen(self, original: cst.SimpleStatementLine) -> None:
        """An import line that stays as it is: what it imports from ``sync_compat``.

        Raises:
            Nothing.
        """
        if len(original.body) != 1:
            return
        node = original.body[0]
        if (
            isinstance(node, cst.ImportFrom)
            and _from_sync_compat(node)
            and not isinstance(node.names, cst.ImportStar)
        ):
            for alias in node.names:
                self._provided.add(_pair(alias))


def _from_sync_compat(node: cst.ImportFrom) -> bool:
    return (
        not node.relative and isinstance(node.module, cst.Name) and node.module.value == SYNC_COMPAT
    )


def _ours(line: cst.EmptyLine) -> bool:
    return line.comment is not None and line.comment.value.startswith(NO_EQUIVALENT)


def _pair(alias: cst.ImportAlias) -> tuple[str, str]:
    return alias.evaluated_name, alias.evaluated_alias or alias.evaluated_name


def _has_comment(alias: cst.ImportAlias) -> bool:
    comma = alias.comma
    if not isinstance(comma, cst.Comma):
        return False
    after = comma.whitespace_after
    return isinstance(after, cst.ParenthesizedWhitespace) and after.first_line.comment is not None


def _renamed(alias: cst.ImportAlias, target: str, local: str) -> cst.ImportAlias:
    asname = None
    if local != target:
        asname = alias.asname or cst.AsName(name=cst.Name(local))
    return alias.with_changes(name=cst.Name(target), asname=asname)


def _commas(
    aliases: Sequence[cst.ImportAlias], node: cst.Import | cst.ImportFrom
) -> list[cst.ImportAlias]:
    """``aliases`` (of ``node``, or new) with a comma after each but the last. The last
    has none, unless the import is parenthesized: then it ends as the import's last name
    did (a trailing comma, the line break before the parenthesis), its own comment kept.
    """
    assert not isinstance(node.names, cst.ImportStar)
    parenthesized = isinstance(node, cst.ImportFrom) and node.lpar is not None
    separator = (
        _separator(node) if parenthesized else cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))
    )
    fixed = []
    for index, alias in enumerate(aliases):
        if index < len(aliases) - 1:
            if not isinstance(alias.comma, cst.Comma):
                alias = alias.with_changes(comma=separator)
        elif not parenthesized:
            alias = alias.with_changes(comma=cst.MaybeSentinel.DEFAULT)
        else:
            alias = alias.with_changes(comma=_last_comma(alias, node.names[-1]))
        fixed.append(alias)
    return fixed


def _last_comma(alias: cst.ImportAlias, last: cst.ImportAlias) -> cst.Comma | cst.MaybeSentinel:
    """The comma of ``alias`` when it ends a parenthesized import that ``last`` ended."""
    own, theirs = alias.comma, last.comma
    if alias is last or not isinstance(theirs, cst.Comma):
        return own
    if not isinstance(own, cst.Comma):
        return theirs if not _has_comment(last) else own
    ending = theirs.whitespace_after
    mine = own.whitespace_after
    if isinstance(ending, cst.ParenthesizedWhitespace) and isinstance(
        mine, cst.ParenthesizedWhitespace
    ):
        ending = ending.with_changes(first_line=mine.first_line)
    elif isinstance(mine, cst.ParenthesizedWhitespace):
        return own
    return own.with_changes(whitespace_after=ending)


def _separator(node: cst.Import | cst.ImportFrom) -> cst.Comma:
    """A comma laid out as the import's own, without a comment."""
    assert not isinstance(node.names, cst.ImportStar)
    for alias in node.names:
        comma = alias.comma
        if isinstance(comma, cst.Comma):
            after = comma.whitespace_after
            if isinstance(after, cst.ParenthesizedWhitespace):
                after = after.with_changes(first_line=cst.TrailingWhitespace())
            return comma.with_changes(whitespace_after=after)
    return cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))
