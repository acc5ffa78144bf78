"""A session of the store per HTTP request or background job, found by whoever runs inside it.

The server holds one root ``Store``; ``bound_session(root)`` marks the code that runs inside it (an
HTTP request, a job) as owning a session of its own: ``current(root)`` then returns that session's
connection (a DuckDB cursor, a pooled PostgreSQL connection, a reused Spark session), opened on first
use and closed when the block ends.  Outside any bound session ``current(root)`` is the root itself.
The binding lives in a context variable, so it follows a request into the worker thread that runs
its handler, and work submitted to another thread pool (the job runner) starts unbound and binds its
own.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from typing import Any

from mercia.cdm.store import Store

_bound: ContextVar[tuple[Session, ...]] = ContextVar("mercia_sessions", default=())


class Session:
    """One request's or job's own connection to ``root``, opened when first used.

    ``lock`` serialises threads that share this session (rare: a request's own helpers); ``state``
    holds per-session bookkeeping of the layers above (e.g. governance's transaction depth)."""

    def __init__(self, root: Store):
        self.root = root
        self.lock = threading.RLock()
        self.state: dict[Any, Any] = {}
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        with self.lock:
            if self._store is None:
                self._store = self.root._open_session()
            return self._store

    @property
    def opened(self) -> bool:
        return self._store is not None

    def close(self) -> None:
        with self.lock:
            if self._store is not None:
                store, self._store = self._store, None
                store.close()


@contextmanager
def bound_session(root: Store) -> Iterator[Session]:
    """Run the block with a session of its own on ``root`` (see the module docstring)."""
    session = Session(root)
    token = _bound.set((*_bound.get(), session))
    try:
        yield session
    finally:
        _bound.reset(token)
        session.close()


@contextmanager
def bound_sessions(*roots: Store) -> Iterator[None]:
    """Run the block with a session of its own on each of ``roots`` (a server's state and research
    stores)."""
    with ExitStack() as stack:
        for root in roots:
            stack.enter_context(bound_session(root))
        yield


def session_for(root: Store) -> Session | None:
    """The innermost session bound on ``root`` in this context, if any."""
    for session in reversed(_bound.get()):
        if session.root is root:
            return session
    return None


def current(root: Store) -> Store:
    """The connection code running here should use for ``root``: its session's, else ``root``."""
    session = session_for(root)
    return session.store if session is not None else root
