"""Small helpers on a PostgreSQL admin connection, shared by the test fixtures and the
projection fuzzer."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import psycopg


def drop_slot(conn: psycopg.Connection, slot: str, attempts: int = 100) -> None:
    """Drop a replication slot, ending the backend that holds it first (a killed pipeline's
    walsender can keep it active for a moment). Missing slots are fine."""
    for _ in range(attempts):
        row = conn.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
        if row is None:
            return
        if row[0] is None:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            return
        conn.execute("SELECT pg_terminate_backend(%s)", (row[0],))
        time.sleep(0.1)


def running_postmasters(*roots: Path) -> dict[int, Path]:
    """The PostgreSQL servers running now (``.../bin/postgres -D <data dir>``) whose data
    dir is one of ``roots`` or under one: pid -> data dir. (``-ww``: ps cuts the command
    line to the terminal's width, or to 80 columns under pytest, without it.)"""
    ps = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout  # noqa: S607
    found: dict[int, Path] = {}
    for line in ps.splitlines():
        m = re.match(r"\s*(\d+)\s+\S*bin/postgres -D (\S+)", line)
        if m:
            data_dir = Path(m.group(2))
            if any(data_dir == r or Path(r) in data_dir.parents for r in roots):
                found[int(m.group(1))] = data_dir
    return found
