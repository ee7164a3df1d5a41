"""Per-session options: what a unit of work sets for its own transaction (isolation level,
read-only, statement and lock timeouts), applied on its connection and gone when the
connection returns to the pool.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict

from .exceptions import ConfigurationError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.orm import Session

    from ._settings import Dialect

__all__ = ["SessionOptionArgs", "SessionOptions"]

ISOLATION_LEVELS = ("SERIALIZABLE", "REPEATABLE READ", "READ COMMITTED", "READ UNCOMMITTED")


class SessionOptionArgs(TypedDict, total=False):
    """The options a unit of work may set for its own transaction, as keyword arguments of
    ``get_async_db_session()``, ``Database.get_async_db_session()`` and
    ``transaction_dependency()``.
    """

    isolation_level: str | None
    """``"SERIALIZABLE"``, ``"REPEATABLE READ"``, ``"READ COMMITTED"``,
    ``"READ UNCOMMITTED"`` (SQLite: ``"SERIALIZABLE"`` only, which it always is)."""
    read_only: bool
    """A read-only transaction (PostgreSQL)."""
    statement_timeout: float | None
    """Seconds any one statement may run (PostgreSQL)."""
    lock_timeout: float | None
    """Seconds a statement may wait for a lock (PostgreSQL)."""


@dataclass(frozen=True)
class SessionOptions:
    """Validated options of one session; empty means "the database's defaults"."""

    isolation_level: str | None = None
    read_only: bool = False
    statement_timeout: float | None = None
    lock_timeout: float | None = None
    sqlite_serializable: bool = False
    """SERIALIZABLE asked for on SQLite: every async transaction there already is; a sync
    one takes the write lock at its first statement instead of its first write."""

    @classmethod
    def of(cls, dialect: Dialect, options: SessionOptionArgs) -> SessionOptions:
        """Validated options for ``dialect``.

        Raises:
            ConfigurationError: an option is unknown, invalid, or not available on SQLite.
        """
        if not options:
            return NO_OPTIONS  # the common case: nothing to validate
        unknown = set(options) - set(SessionOptionArgs.__annotations__)
        if unknown:
            raise ConfigurationError(
                f"unknown session option {', '.join(map(repr, sorted(unknown)))}; the "
                f"options are {', '.join(SessionOptionArgs.__annotations__)}"
            )
        isolation_level = options.get("isolation_level")
        read_only = options.get("read_only", False)
        if not isinstance(read_only, bool):
            raise ConfigurationError(f"read_only must be True or False, got {read_only!r}")
        statement_timeout = options.get("statement_timeout")
        lock_timeout = options.get("lock_timeout")
        if isolation_level is not None:
            if not isinstance(isolation_level, str):
                raise ConfigurationError(
                    f"isolation_level must be one of {', '.join(ISOLATION_LEVELS)}, "
                    f"got {isolation_level!r}"
                )
            isolation_level = isolation_level.upper().replace("_", " ")
            if isolation_level not in ISOLATION_LEVELS:
                raise ConfigurationError(
                    f"isolation_level must be one of {', '.join(ISOLATION_LEVELS)}, "
                    f"got {isolation_level!r}"
                )
        for name, value in (
            ("statement_timeout", statement_timeout),
            ("lock_timeout", lock_timeout),
        ):
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not 0 < value < math.inf
            ):
                raise ConfigurationError(f"{name} must be a number of seconds > 0, got {value!r}")
        if dialect == "sqlite":
            # SQLite runs one transaction at a time (BEGIN IMMEDIATE): it is serializable.
            if isolation_level not in (None, "SERIALIZABLE"):
                raise ConfigurationError(
                    f"SQLite transactions here are always SERIALIZABLE; {isolation_level} "
                    "is a PostgreSQL setting"
                )
            unsupported = [
                name
                for name, value in (
                    ("read_only", read_only),
                    ("statement_timeout", statement_timeout),
                    ("lock_timeout", lock_timeout),
                )
                if value
            ]
            if unsupported:
                raise ConfigurationError(
                    f"{', '.join(unsupported)}: PostgreSQL settings, not available on SQLite"
                )
            return cls(sqlite_serializable=isolation_level is not None)
        return cls(isolation_level, read_only, statement_timeout, lock_timeout)

    def held_by(self, transaction: SessionOptions) -> bool:
        """Whether a transaction opened with ``transaction`` already has every option set
        here, so a block asking for these may join it.
        """
        return all(
            not mine or mine == theirs
            for mine, theirs in (
                (self.isolation_level, transaction.isolation_level),
                (self.read_only, transaction.read_only),
                (self.statement_timeout, transaction.statement_timeout),
                (self.lock_timeout, transaction.lock_timeout),
            )
        )

    def describe(self) -> str:
        """The options for a message: ``isolation_level='SERIALIZABLE', read_only=True``."""
        shown = [
            f"{name}={value!r}"
            for name, value in (
                ("isolation_level", self.isolation_level),
                ("read_only", self.read_only),
                ("statement_timeout", self.statement_timeout),
                ("lock_timeout", self.lock_timeout),
            )
            if value
        ]
        return ", ".join(shown) or "no options"

    def __bool__(self) -> bool:
        return bool(
            self.isolation_level or self.read_only or self.statement_timeout or self.lock_timeout
        )

    def _on_connection(self) -> tuple[dict[str, object] | None, list[str]]:
        """The connection's execution options and the statements that set the rest."""
        execution_options: dict[str, object] = {}
        if self.isolation_level:
            execution_options["isolation_level"] = self.isolation_level
        if self.read_only:
            execution_options["postgresql_readonly"] = True
        # SET LOCAL: the transaction's own, reverted at its end.
        # (Whole milliseconds, rounded up: 0 would turn the timeout off.)
        statements = [
            f"SET LOCAL {name} = {math.ceil(seconds * 1000)}"
            for name, seconds in (
                ("statement_timeout", self.statement_timeout),
                ("lock_timeout", self.lock_timeout),
            )
            if seconds
        ]
        return execution_options or None, statements

    async def apply(self, session: AsyncSession) -> None:
        """Set the options on the session's connection and transaction (first thing).

        On the connection, not through ``session.execute``, which an application's
        session class may override (SQLModel's warns).
        """
        execution_options, statements = self._on_connection()
        connection = await session.connection(execution_options=execution_options)
        for statement in statements:
            await connection.exec_driver_sql(statement)

    def apply_sync(self, session: Session) -> None:
        """:meth:`apply` for a sync session."""
        execution_options, statements = self._on_connection()
        connection = session.connection(execution_options=execution_options)
        for statement in statements:
            connection.exec_driver_sql(statement)


NO_OPTIONS = SessionOptions()
