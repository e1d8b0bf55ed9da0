"""Small helpers on a PostgreSQL admin connection, shared by the test fixtures and the
projection fuzzer."""

from __future__ import annotations

import time

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
