"""Where the catch-up benchmarks run (``catchup``, ``peers``, ``snapshot``): the embedded
server or the one at a DSN, its benchmark databases and slots, and which code was measured.

An embedded server the benchmark started is stopped by ``Server.close()``; one that was
running before (a test session's, or one started by hand) is left running.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import psycopg
from psycopg import sql

from cdcflow.positions import parse_pg_lsn
from cdcflow.redact import redact_dsn

ROOT = Path.cwd()  # the project folder when run from a checkout: git info, data dir, results
SRC_DB, SRV_DB = "cdcflow_bench_source", "cdcflow_bench_serving"
SLOT_PREFIX = "cdcflow_bench_"


def _dsn(base: str, dbname: str) -> str:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(base)
    params["dbname"] = dbname
    return make_conninfo(**params)


def _code_version() -> dict:
    """Which cdcflow was measured (read-only git queries)."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"commit": git("rev-parse", "--short", "HEAD"), "dirty": bool(git("status", "--porcelain", "--", "src"))}


def _lsn(conn: psycopg.Connection) -> int:
    return parse_pg_lsn(conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])


class Server:
    """Where the benchmark runs: the embedded server (default) or the one at ``dsn``."""

    def __init__(self, dsn: str | None, data_dir: Path, recvlogical: str | None) -> None:
        self.embedded = None
        if dsn is None:
            from cdcflow.embedded import EmbeddedPostgres

            self.embedded = EmbeddedPostgres(data_dir)
            self.admin_dsn = self.embedded.dsn("postgres")
            self.recvlogical = [str(self.embedded.bin_path / "pg_recvlogical")]
        else:
            self.admin_dsn = dsn
            binary = recvlogical or shutil.which("pg_recvlogical") or "pg_recvlogical"
            # Debian's PostgreSQL binaries refuse to run as root, and peer auth wants the postgres user.
            as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
            self.recvlogical = [*as_postgres, binary]

    def admin(self) -> psycopg.Connection:
        return psycopg.connect(self.admin_dsn, autocommit=True)

    def describe(self) -> dict:
        with self.admin() as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]
            settings = dict(
                conn.execute(
                    "SELECT name, setting FROM pg_settings WHERE name IN "
                    "('shared_buffers','logical_decoding_work_mem','fsync','synchronous_commit','max_wal_size')"
                ).fetchall()
            )
        return {
            "server": "embedded" if self.embedded else redact_dsn(self.admin_dsn),
            "version": version,
            "settings": settings,
        }

    def close(self) -> None:
        """Stop the embedded server if this benchmark started it (see ``EmbeddedPostgres.release``)."""
        if self.embedded is not None:
            self.embedded.release()


def _drop_bench(server: Server, databases: tuple[str, ...] = (SRC_DB, SRV_DB)) -> None:
    with server.admin() as conn:
        for pid in conn.execute(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name LIKE %s AND active_pid IS NOT NULL",
            (SLOT_PREFIX + "%",),
        ).fetchall():
            conn.execute("SELECT pg_terminate_backend(%s)", pid)
        for _ in range(50):
            busy = conn.execute(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE %s AND active_pid IS NOT NULL",
                (SLOT_PREFIX + "%",),
            ).fetchone()[0]
            if not busy:
                break
            time.sleep(0.1)
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name LIKE %s",
            (SLOT_PREFIX + "%",),
        )
        for name in databases:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
