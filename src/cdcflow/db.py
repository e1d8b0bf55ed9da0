"""Connections: psycopg 3 for regular work, wrapped errors, and bounded waiting with backoff.

Driver errors are turned into cdcflow's types here, once: a refused or dropped
connection is a :class:`TransientError` (retried), a rejected login or a missing
database is a :class:`TerminalError` (retrying will not help). Messages are redacted.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import psycopg

from cdcflow.errors import CdcflowError, TerminalError, TransientError
from cdcflow.redact import REDACTOR

log = logging.getLogger(__name__)
T = TypeVar("T")

# libpq reports these before a session exists, so there is no SQLSTATE to read.
_TERMINAL_CONNECT_MARKERS = (
    "password authentication failed",
    "no password supplied",
    "authentication failed",
    "does not exist",  # database or role
    "invalid connection option",
    "invalid dsn",
    'missing "=" after',
    "invalid uri",
    "is not permitted to log in",
    "permission denied",
    "pg_hba.conf rejects",
)


def describe_error(exc: BaseException) -> str:
    """One line, redacted, for logs and status."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return REDACTOR(text)


def wrap_connect_error(what: str, exc: Exception) -> CdcflowError:
    msg = describe_error(exc)
    low = msg.lower()
    if any(m in low for m in _TERMINAL_CONNECT_MARKERS):
        return TerminalError(f"cannot connect to the {what} database: {msg}")
    return TransientError(f"cannot connect to the {what} database: {msg}")


def wrap_db_error(what: str, exc: Exception) -> CdcflowError:
    """A driver error during work: lost connections are transient, the rest terminal."""
    if isinstance(exc, CdcflowError):
        return exc
    msg = describe_error(exc)
    if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError, psycopg.errors.AdminShutdown, OSError)):
        return TransientError(f"{what}: {msg}")
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate and (sqlstate.startswith("08") or sqlstate.startswith("57") or sqlstate in ("40001", "40P01", "55006")):
        return TransientError(f"{what}: {msg}")
    return TerminalError(f"{what}: {msg}")


#: libpq settings that notice a peer gone silently (a network partition) on TCP connections:
#: keepalive probes after 10 s idle, and unacknowledged data for 30 s closes the connection.
#: libpq ignores them on Unix sockets. An explicit value in a DSN overrides them.
TCP_LIVENESS = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}


def with_liveness(dsn: str) -> str:
    """``dsn`` with the TCP_LIVENESS settings it does not set itself."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(dsn)
    for key, value in TCP_LIVENESS.items():
        params.setdefault(key, value)
    return make_conninfo(**params)  # type: ignore[arg-type]


def close_quietly(conn: object | None) -> None:
    """Close a connection (psycopg's or a driver's) that may already be broken."""
    if conn is None:
        return
    try:
        conn.close()  # type: ignore[attr-defined]
    except Exception:  # already broken; closing is best effort
        pass


def safe_rollback(conn: psycopg.Connection | None) -> None:
    """Roll back if the connection still works; a lost connection has nothing to roll back."""
    if conn is None or conn.closed:
        return
    try:
        conn.rollback()
    except psycopg.Error:
        pass


@contextmanager
def rolled_back_on_error(conn: psycopg.Connection, what: str) -> Iterator[None]:
    """Work on ``conn`` that rolls back if it raises; a driver error comes out wrapped, naming ``what``."""
    try:
        yield
    except psycopg.Error as exc:
        safe_rollback(conn)
        raise wrap_db_error(what, exc) from None
    except BaseException:
        safe_rollback(conn)
        raise


def connect(dsn: str, what: str, *, autocommit: bool = False, timeout: float = 10) -> psycopg.Connection:
    """A psycopg connection, or a wrapped error naming which database failed."""
    try:
        return psycopg.connect(with_liveness(dsn), autocommit=autocommit, connect_timeout=max(1, int(timeout)))
    except psycopg.Error as exc:
        raise wrap_connect_error(what, exc) from None


class Backoff:
    """Exponential backoff with full jitter, capped (psycopg_pool's AttemptWithBackoff idea)."""

    def __init__(self, initial: float = 0.2, maximum: float = 10.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.attempt = 0

    def next_delay(self) -> float:
        delay = min(self.maximum, self.initial * (2**self.attempt))
        self.attempt += 1
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self.attempt = 0


def wait_for(
    what: str,
    attempt: Callable[[], T],
    deadline_seconds: float,
    stop: threading.Event | None = None,
) -> T:
    """Call ``attempt`` until it succeeds, a terminal error, or the deadline.

    One progress line per failed attempt; at the deadline, one error that says what to do.
    """
    deadline = time.monotonic() + deadline_seconds
    backoff = Backoff(initial=0.5, maximum=5.0)
    n = 0
    while True:
        n += 1
        try:
            return attempt()
        except TransientError as exc:
            left = deadline - time.monotonic()
            if left <= 0 or (stop is not None and stop.is_set()):
                raise TerminalError(
                    f"the {what} database did not answer within {deadline_seconds:g}s ({exc}); "
                    f"check that it is running and the DSN's host and port, or raise STARTUP_WAIT_SECONDS"
                ) from None
            delay = min(left, backoff.next_delay())
            log.warning("waiting for the %s database (attempt %d, retry in %.1fs): %s", what, n, delay, exc)
            if stop is not None:
                if stop.wait(delay):
                    raise TerminalError(f"stopped while waiting for the {what} database") from None
            else:
                time.sleep(delay)
