"""Control tables: reading watermarks and recording capture states."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import psycopg

from cdcflow import sqlfiles

QUERIES = "serving_runtime.sql"


@dataclass(frozen=True)
class Watermark:
    capture: str
    last_lsn: int
    state: str
    gap_from: int | None
    gap_to: int | None
    last_error: str | None
    rows_staged: int
    last_commit_time: dt.datetime | None
    updated_at: dt.datetime
    engine: str
    source_table: str
    staging_table: str
    #: Where the capture's staged history ends while its table is backfilled.
    backfill_from: int | None = None

    @property
    def active(self) -> bool:
        """Still advancing (not stopped by a gap or a pause)."""
        return self.state not in ("GAP", "PAUSED")

    @property
    def incomplete(self) -> bool:
        """Its table's existing rows are not all staged yet (INIT: not snapshotted; BACKFILL:
        being copied). Such a capture streams, but no projection reads it, and its watermark
        does not set where the stream starts."""
        return self.state in INCOMPLETE_STATES


#: Capture states whose staged rows are not yet the whole table.
INCOMPLETE_STATES = ("INIT", "BACKFILL")


def read_watermarks(conn: psycopg.Connection, source_name: str) -> dict[str, Watermark]:
    rows = conn.execute(sqlfiles.query(QUERIES, "read_watermarks"), {"source": source_name}).fetchall()
    return {
        r[0]: Watermark(
            capture=r[0],
            last_lsn=int(r[1]),
            state=r[2],
            gap_from=int(r[3]) if r[3] is not None else None,
            gap_to=int(r[4]) if r[4] is not None else None,
            last_error=r[5],
            rows_staged=int(r[6]),
            last_commit_time=r[7],
            updated_at=r[8],
            engine=r[9],
            source_table=r[10],
            staging_table=r[11],
            backfill_from=int(r[12]) if r[12] is not None else None,
        )
        for r in rows
    }


def set_capture_state(
    conn: psycopg.Connection,
    source_name: str,
    capture: str,
    state: str,
    error: str | None,
    gap_from: int | None = None,
    gap_to: int | None = None,
) -> None:
    conn.execute(
        sqlfiles.query(QUERIES, "set_capture_state"),
        {
            "source": source_name,
            "capture": capture,
            "state": state,
            "error": error,
            "gap_from": gap_from,
            "gap_to": gap_to,
        },
    )


def record_error(conn: psycopg.Connection, source_name: str, captures: list[str], error: str) -> None:
    conn.execute(
        sqlfiles.query(QUERIES, "set_capture_error"), {"source": source_name, "captures": captures, "error": error}
    )


def commit_snapshot(conn: psycopg.Connection, source_name: str, lsn: int, counts: dict[str, int]) -> None:
    """A snapshot is staged: the captures' watermarks go to its position (with its row
    counts), projections are woken, and it all commits."""
    conn.execute(
        sqlfiles.query(QUERIES, "watermarks_after_snapshot"),
        {"source": source_name, "lsn": lsn, "captures": list(counts), "rows": list(counts.values())},
    )
    conn.execute(sqlfiles.query(QUERIES, "notify_staged"), {"source": source_name})
    conn.commit()
