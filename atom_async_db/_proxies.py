"""Driver proxies: a driver's connection, and the prepared statements, transactions and
cursors it hands out, whose awaitable methods run through the connection's
:class:`~atom_async_db._cancel.ConnectionGuard`.
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Callable
from typing import Any

from ._cancel import REARMED_REFS, ConnectionGuard
from ._sqlite_here import here_calls

__all__ = ["guard_connection"]


def guard_connection(connection: Any, guard: ConnectionGuard) -> Any:
    """``connection`` (a driver's) with every awaitable call guarded by ``guard``, and the
    driver objects its calls return wrapped alike.
    """
    guard.driver_types = _driver_object_types()
    guard.wrap = functools.partial(_guard_object, guard=guard)
    return _guard_object(connection, guard)


class _GuardedDriverObject:
    """A driver object (connection, prepared statement, transaction, cursor) whose awaitable
    results run through a :class:`ConnectionGuard`; everything else passes through, setting
    and deleting attributes included.

    Each driver class gets a subclass of its own (made by :func:`_guard_object`), which
    keeps a :class:`_GuardedMethod` for a method once it has been used: later calls, on any
    object of that class, find it without going through ``__getattr__``. (A transaction is
    a new object per session, so wrappers per object would be made again for every session.)
    """

    __slots__ = ("__weakref__", "_atom_guard", "_atom_target")

    def __init__(self, target: Any, guard: ConnectionGuard) -> None:
        object.__setattr__(self, "_atom_target", target)
        object.__setattr__(self, "_atom_guard", guard)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._atom_target, name)
        if not inspect.ismethod(value):  # attributes, and callable objects such as the
            return value  # sqlite3 connection behind aiosqlite's ``_conn``
        method = _GuardedMethod(name, value)
        if not name.startswith("__"):  # (on the class, a special method would change what
            setattr(type(self), name, method)  # the interpreter does with every proxy)
        return method.__get__(self)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._atom_target, name, value)

    def __delattr__(self, name: str) -> None:
        delattr(self._atom_target, name)

    def __repr__(self) -> str:
        return f"<guarded {self._atom_target!r}>"


_PROXY_CLASSES: dict[type, type[_GuardedDriverObject]] = {}


def _guard_object(target: Any, guard: ConnectionGuard) -> _GuardedDriverObject:
    proxy_class = _PROXY_CLASSES.get(type(target))
    if proxy_class is None:
        name = f"Guarded[{type(target).__module__}.{type(target).__qualname__}]"
        proxy_class = type(name, (_GuardedDriverObject,), {"__slots__": ()})
        _PROXY_CLASSES[type(target)] = proxy_class
    return proxy_class(target, guard)


class _GuardedMethod:
    """Driver method ``name`` as its proxy class holds it. Reading it from a proxy looks the
    method up on the driver object at that moment, as a bound method would be: a method
    saved before the driver object's was replaced (instrumentation, ``monkeypatch``) still
    calls the one it saved. What replaced it, if not a method, is handed out as it is.
    """

    __slots__ = ("_call", "_name")

    def __init__(self, name: str, method: Any) -> None:
        self._name = name
        self._call = _guarded_method(name, method)

    def __get__(self, proxy: _GuardedDriverObject | None, owner: Any = None) -> Any:
        if proxy is None:
            return self
        method = getattr(proxy._atom_target, self._name)
        if type(method) is not types.MethodType:
            return method
        return functools.partial(self._call, proxy._atom_guard, method)


def _guarded_method(name: str, method: Any) -> Callable[..., Any]:
    """The guarded call of driver method ``name`` (``method``: one object's, to look at)."""
    commit = name == "commit"

    def call(guard: ConnectionGuard, method: Any, *args: Any, **kwargs: Any) -> Any:
        result = method(*args, **kwargs)
        if type(result) is not types.CoroutineType:  # (driver calls mostly are coroutines)
            if not hasattr(result, "__await__"):
                return _guarded(result, guard)
            if hasattr(result, "__aenter__"):
                return _GuardedContext(result, guard, name)
        if REARMED_REFS and guard.takes_cancellation(name):
            rollback = getattr(method.__self__, "rollback", None) if commit else None
            return guard.deliver_cancellation(result, rollback)
        return guard.commit(result) if commit else guard.run(result)

    here = here_calls()
    owners = type(method.__self__).__mro__
    answer_here = next((here[cls, name] for cls in owners if (cls, name) in here), None)
    if answer_here is not None:

        def call_here(guard: ConnectionGuard, method: Any, *args: Any, **kwargs: Any) -> Any:
            budget = guard.here
            if budget is None:
                return call(guard, method, *args, **kwargs)
            there = functools.partial(call, guard, method)
            return answer_here(guard, budget, method, there, *args, **kwargs)

        return call_here
    return call


class _GuardedContext:
    """A driver result that is awaited or entered (aiosqlite's ``cursor()``)."""

    __slots__ = ("_guard", "_name", "_result")

    def __init__(self, result: Any, guard: ConnectionGuard, name: str) -> None:
        self._result = result
        self._guard = guard
        self._name = name

    def __await__(self) -> Any:
        return self._start(enter=False).__await__()

    def __aenter__(self) -> Any:
        return self._start(enter=True)

    def _start(self, *, enter: bool) -> Any:
        if self._guard.takes_cancellation(self._name):
            # Awaiting the result gives what entering it does (the cursor).
            return self._guard.deliver_cancellation(self._result, None)
        return self._guard.run(self._result.__aenter__() if enter else self._result)

    def __aexit__(self, *exc_info: Any) -> Any:
        return self._guard.run(self._result.__aexit__(*exc_info))


# Driver classes whose methods do I/O and therefore are wrapped as well.
_DRIVER_OBJECT_TYPES: tuple[type, ...] = ()


def _driver_object_types() -> tuple[type, ...]:
    global _DRIVER_OBJECT_TYPES
    if not _DRIVER_OBJECT_TYPES:
        types: list[type] = []
        try:
            from asyncpg.cursor import Cursor
            from asyncpg.prepared_stmt import PreparedStatement
            from asyncpg.transaction import Transaction

            types += [PreparedStatement, Transaction, Cursor]
        except ImportError:  # asyncpg is an optional extra
            pass
        import aiosqlite

        types.append(aiosqlite.Cursor)
        _DRIVER_OBJECT_TYPES = tuple(types)
    return _DRIVER_OBJECT_TYPES


def _guarded(result: Any, guard: ConnectionGuard) -> Any:
    if isinstance(result, _DRIVER_OBJECT_TYPES):
        return _guard_object(result, guard)
    return result
