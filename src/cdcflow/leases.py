"""PostgreSQL leases with fencing: any number of ``cdcflow run`` processes, one owner each.

Each ingestion stream (``ingest:<source>``) and each projection (``projection:<name>``)
is a resource. A worker acquires its lease before working and renews it well before it
expires (every ``ttl / 3``); a process that dies stops renewing and another takes over
once the lease expires (``LEASE_SECONDS``). Every commit calls :meth:`Lease.fence` in its
own transaction: it checks owner, token and expiry with ``clock_timestamp()`` and locks
the row, so a paused owner whose lease was taken over cannot commit when it resumes, and
a takeover waits for a commit already under way.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid

import psycopg

from cdcflow import db, sqlfiles
from cdcflow.errors import TransientError

log = logging.getLogger(__name__)
QUERIES = "leases.sql"


class LeaseLost(TransientError):
    """This process no longer holds the lease: another instance owns the work now."""


def _pid_alive(pid: int) -> bool:
    """Does a process with this PID exist on this host?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def instance_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Lease:
    def __init__(self, resource: str, owner: str, ttl: float) -> None:
        self.resource = resource
        self.owner = owner
        self.ttl = ttl
        self.token: int | None = None
        self._renewed = 0.0

    @property
    def held(self) -> bool:
        return self.token is not None and time.monotonic() - self._renewed < self.ttl

    def due(self) -> bool:
        """True when the lease should be (re)acquired now."""
        return self.token is None or time.monotonic() - self._renewed >= self.ttl / 3

    def acquire(self, conn: psycopg.Connection) -> bool:
        """Take or renew the lease in its own short transaction. Returns whether we hold it."""
        started = time.monotonic()
        row = conn.execute(
            sqlfiles.query(QUERIES, "acquire"), {"resource": self.resource, "owner": self.owner, "ttl": self.ttl}
        ).fetchone()
        conn.commit()
        if row is None and self._holder_is_dead(conn):
            row = conn.execute(
                sqlfiles.query(QUERIES, "acquire"), {"resource": self.resource, "owner": self.owner, "ttl": self.ttl}
            ).fetchone()
            conn.commit()
        if row is None:
            if self.token is not None:
                log.warning("lost lease %s: another instance owns it now", self.resource)
            self.token = None
            return False
        if self.token != row[0]:
            log.info("acquired lease %s (token %d)", self.resource, row[0])
        self.token = int(row[0])
        self._renewed = started
        return True

    def _holder_is_dead(self, conn: psycopg.Connection) -> bool:
        """A restart after a crash on the same host need not wait out the old lease: when the
        holder is a process of this host that no longer exists, its lease ends now. (A PID
        reused by an unrelated process only means waiting for the lease to expire.)"""
        row = conn.execute(sqlfiles.query(QUERIES, "holder"), {"resource": self.resource}).fetchone()
        conn.commit()
        if row is None:
            return False
        host, _, rest = row[0].partition(":")
        pid = rest.partition(":")[0]
        if host != socket.gethostname() or not pid.isdigit() or _pid_alive(int(pid)):
            return False
        log.info("lease %s: holder %s is gone (process %s no longer exists); taking over", self.resource, row[0], pid)
        conn.execute(sqlfiles.query(QUERIES, "expire_owner"), {"resource": self.resource, "owner": row[0]})
        conn.commit()
        return True

    def fence(self, conn: psycopg.Connection, token: int | None) -> None:
        """In the caller's open transaction: raise LeaseLost unless we still hold the lease
        with ``token``, the one we held when the work being committed began."""
        if token is None:
            raise LeaseLost(f"lease {self.resource} is not held by this process")
        row = conn.execute(
            sqlfiles.query(QUERIES, "fence"), {"resource": self.resource, "owner": self.owner, "token": token}
        ).fetchone()
        if row is None:
            raise LeaseLost(f"lease {self.resource} expired or was taken over: this commit is abandoned")

    def release(self, conn: psycopg.Connection) -> None:
        if self.token is None:
            return
        try:
            conn.rollback()
            conn.execute(sqlfiles.query(QUERIES, "release"), {"resource": self.resource, "owner": self.owner})
            conn.commit()
        except psycopg.Error as exc:  # the lease expires by itself
            log.debug("could not release lease %s: %s", self.resource, exc)
        self.token = None


class LeaseKeeper:
    """Acquires and renews one lease on its own connection, in a thread, every ``ttl / 3``
    (every ``ttl / 10`` while another process holds it, to take over promptly).

    Renewal is independent of the worker's progress, so a long batch keeps its lease; a
    process that stops (SIGKILL, SIGSTOP, a lost network) stops renewing and loses it.
    """

    def __init__(self, lease: Lease, dsn: str) -> None:
        self.lease = lease
        self.dsn = dsn
        self.stop = threading.Event()  # set by the worker once its last commit is done
        self.changed = threading.Event()  # set when the lease is gained or lost
        self._thread = threading.Thread(target=self._run, name=f"lease[{lease.resource}]", daemon=True)

    def start(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def _run(self) -> None:
        conn: psycopg.Connection | None = None
        try:
            while not self.stop.is_set():
                had = self.lease.held
                try:
                    if conn is None or conn.closed:
                        # Autocommit: a renewal's row lock lasts one statement, so a process
                        # frozen mid-renewal cannot keep another instance from taking over.
                        conn = psycopg.connect(
                            db.with_liveness(self.dsn),
                            connect_timeout=max(1, int(self.lease.ttl / 3)),
                            autocommit=True,
                        )
                    self.lease.acquire(conn)
                except psycopg.Error as exc:
                    log.warning("lease %s: renewal failed (%s)", self.lease.resource, " ".join(str(exc).split()))
                    if conn is not None:
                        conn.close()
                    conn = None
                if had != self.lease.held:
                    self.changed.set()
                self.stop.wait(self.lease.ttl / 3 if self.lease.held else self.lease.ttl / 10)
        finally:
            if conn is not None and not conn.closed:
                self.lease.release(conn)
                conn.close()

    def stop_and_release(self, timeout: float) -> None:
        """Stop renewing and give the lease up (the worker has finished its last commit)."""
        self.stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)


def live_holder(conn: psycopg.Connection, resource: str) -> str | None:
    """Who holds ``resource`` now (None: nobody, or a process of this host that is gone)."""
    row = conn.execute(sqlfiles.query(QUERIES, "holder"), {"resource": resource}).fetchone()
    conn.commit()
    if row is None:
        return None
    host, _, rest = row[0].partition(":")
    pid = rest.partition(":")[0]
    if host == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid)):
        return None
    return str(row[0])


def list_leases(conn: psycopg.Connection) -> list[tuple]:
    try:
        return conn.execute(sqlfiles.query(QUERIES, "list_leases")).fetchall()
    except psycopg.errors.UndefinedTable:
        conn.rollback()
        return []
