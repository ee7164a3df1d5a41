"""Leak detection: a connection checked out longer than ``leak_threshold`` is reported
with the place in the application's code that took it.

The pool notes each checkout (:meth:`LeakWatch.taken`) with the application's frames at
that moment: for a session, its first statement (where it takes its connection); for
``engine.connect()``, that call. One timer per pool, set for the oldest checkout's
deadline, finds the ones overdue: each is reported once, with a WARNING, and again with
an INFO line when it finally comes back. There is no timer per session, and without a
``leak_threshold`` none of this runs.

``user_frames()`` is also how the other reports (long transactions, sessions still open
at shutdown) name the application's code: the innermost frames that are not the
library's, SQLAlchemy's, greenlet's, asyncio's or a framework's (Starlette, FastAPI,
anyio, uvicorn, pytest); from inside SQLAlchemy's greenlet, the
awaiting coroutines' frames are those of the greenlet that started it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import sys
import threading
import time
import types
from collections.abc import Iterable
from typing import Any

import greenlet
import sqlalchemy

logger = logging.getLogger("atom_async_db")

__all__ = ["Frames", "LeakWatch", "describe", "place", "still_open_places", "user_frames"]

#: (file, line, function) of the application's frames, innermost first.
Frames = tuple[tuple[str, int, str], ...]


def _package_directory(name: str) -> str | None:
    """Where package ``name`` is installed, without importing it; None if it is not."""
    spec = importlib.util.find_spec(name)
    locations = spec.submodule_search_locations if spec is not None else None
    return os.path.join(next(iter(locations)), "") if locations else None


# The frameworks between the application's code and ours: their frames are noise in a
# report that should name the application's line.
_FRAMEWORKS = ("starlette", "fastapi", "anyio", "uvicorn", "_pytest", "pluggy", "pytest_asyncio")

_NOT_THE_APPLICATIONS = (
    *(
        os.path.dirname(module.__file__ or "") + os.sep
        for module in (sys.modules[__package__], sqlalchemy, greenlet, asyncio, contextlib)
    ),
    os.path.dirname(os.path.dirname(__file__)) + os.sep + "sync_compat" + os.sep,
    threading.__file__,
    "<sqlalchemy generated",  # (the wrappers SQLAlchemy compiles for its own methods)
    *filter(None, map(_package_directory, _FRAMEWORKS)),
)
_DEPTH = 8  # frames kept: enough to see the route and what called it
_TASK_STEP = asyncio.events.Handle._run.__code__  # (where the loop runs a task's step)


def frames_of(frame: types.FrameType | None, frames: list[tuple[str, int, str]]) -> None:
    """Add the application's frames from ``frame`` outwards to ``frames``, up to
    ``_DEPTH``.
    """
    while frame is not None and len(frames) < _DEPTH:
        code = frame.f_code
        if code is _TASK_STEP:  # what lies beyond is the event loop's, not the task's
            return
        if _is_the_applications(code.co_filename):
            frames.append((code.co_filename, frame.f_lineno, code.co_name))
        frame = frame.f_back


def _is_the_applications(filename: str) -> bool:
    known = _APPLICATIONS_FILES.get(filename)
    if known is None:
        known = _APPLICATIONS_FILES[filename] = not filename.startswith(_NOT_THE_APPLICATIONS)
    return known


_APPLICATIONS_FILES: dict[str, bool] = {}  # (one entry per source file: a bounded cache)


def user_frames() -> Frames:
    """The application's frames at this point, innermost first (see the module docstring)."""
    frames: list[tuple[str, int, str]] = []
    frames_of(sys._getframe(1), frames)
    current: Any = greenlet.getcurrent()
    while current.parent is not None and len(frames) < _DEPTH:
        current = current.parent
        frames_of(current.gr_frame, frames)
    return tuple(frames)


def describe(frames: Frames) -> str:
    """``frames`` as a traceback's lines, innermost first; a placeholder when none."""
    if not frames:
        return "  (no frame of the application's code on the stack)"
    return "\n".join(f'  File "{path}", line {line}, in {name}' for path, line, name in frames)


def place(frames: Frames) -> str:
    """The innermost frame as ``file:line in function``."""
    if not frames:
        return "(unknown)"
    path, line, name = frames[0]
    return f"{path}:{line} in {name}"


class LeakWatch:
    """The checkouts of one pool, and its one timer for the oldest one's deadline."""

    def __init__(self, threshold: float, pool: Any) -> None:
        self._threshold = threshold
        self._pool = pool  # (its _start_timer: a thread's timer, or the event loop's)
        self._lock = threading.Lock()
        self._out: dict[Any, tuple[float, Frames]] = {}  # in checkout order
        self._reported: dict[Any, Frames] = {}
        self._timer: Any = None

    def taken(self, record: Any) -> None:
        frames = user_frames()
        with self._lock:
            self._out[record] = (time.monotonic(), frames)
            if self._timer is None:
                self._timer = self._pool._start_timer(self._threshold, self._check)

    def returned(self, record: Any, held: float) -> None:
        with self._lock:
            self._out.pop(record, None)
            frames = self._reported.pop(record, None)
        if frames is not None:
            logger.info(
                "a database connection reported as held too long came back after %.3g s, "
                "taken at %s",
                held,
                place(frames),
                extra={"atom_db_held_seconds": held, "atom_db_taken_at": place(frames)},
            )

    def _check(self) -> None:
        overdue = []
        with self._lock:
            self._timer = None
            now = time.monotonic()
            for record, (since, frames) in list(self._out.items()):
                if now - since < self._threshold:
                    self._timer = self._pool._start_timer(
                        since + self._threshold - now, self._check
                    )
                    break
                del self._out[record]
                self._reported[record] = frames
                overdue.append((now - since, frames))
        for held, frames in overdue:
            logger.warning(
                "a database connection has been checked out for %.3g s (leak_threshold=%g s) "
                "and is still held: a session or connection that is never closed, or one "
                "held across slow work. It was taken at (innermost first):\n%s",
                held,
                self._threshold,
                describe(frames),
                extra={"atom_db_held_seconds": held, "atom_db_taken_at": place(frames)},
            )

    def stop(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None


def still_open_places(scopes: Iterable[Any]) -> list[str]:
    """Where the owner of each open scope (a task or a thread, ``scope.owner``) is now:
    the place in the application's code whose session block it has not left.
    """
    current = sys._current_frames()
    lines = []
    for scope in scopes:
        owner = scope.owner
        frames: list[tuple[str, int, str]] = []
        if isinstance(owner, asyncio.Task):
            # (A suspended coroutine's frames are not linked: each is looked at alone.)
            for frame in reversed(owner.get_stack()):
                code = frame.f_code
                if _is_the_applications(code.co_filename):
                    frames.append((code.co_filename, frame.f_lineno, code.co_name))
            name = f"task {owner.get_name()!r}"
        elif isinstance(owner, threading.Thread):
            frames_of(current.get(owner.ident or 0), frames)
            name = f"thread {owner.name!r}"
        else:
            continue
        lines.append(f"{name}, at {place(tuple(frames))}")
    return lines
