"""The embedded server applies the settings it is given, restarting when one needs it."""

from __future__ import annotations

import os

import psycopg

from cdcflow.embedded import EmbeddedPostgres
from tests.conftest import ROOT


def _show(pg: EmbeddedPostgres, name: str) -> str:
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        return str(conn.execute(f"SHOW {name}").fetchone()[0])


def test_settings_are_applied_and_a_restart_happens_only_when_needed():
    data_dir = ROOT / ".cdcflow" / f"test-pg-settings-{os.getpid()}"
    try:
        pg = EmbeddedPostgres(data_dir, {"shared_buffers": "144MB", "work_mem": "5MB"})
        assert (_show(pg, "shared_buffers"), _show(pg, "work_mem")) == ("144MB", "5MB")
        assert _show(pg, "wal_level") == "logical"  # cdcflow's own settings stay
        started = pg._server.get_pid()
        pg = EmbeddedPostgres(data_dir, {"work_mem": "6MB"})  # reloadable: no restart
        assert _show(pg, "work_mem") == "6MB" and pg._server.get_pid() == started
        pg = EmbeddedPostgres(data_dir, {"shared_buffers": "160MB"})  # only a restart applies it
        assert _show(pg, "shared_buffers") == "160MB" and pg._server.get_pid() != started
        pg = EmbeddedPostgres(data_dir)  # no settings: the data dir keeps what it has
        assert _show(pg, "shared_buffers") == "160MB"
    finally:
        EmbeddedPostgres.wipe(data_dir)
