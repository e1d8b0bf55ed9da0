"""What logical decoding needs on a PostgreSQL source: the publication and the replication
slot (its state, creation with an exported snapshot, dropping, and the gap check a
stream makes before it starts), over the source's regular and replication connections.

:class:`SlotManagement` is the part of :class:`cdcflow.sources.postgres.PostgresSource`
that talks to the server about them; the stream and the catalog are in that module.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from cdcflow import db, sqlfiles
from cdcflow.errors import GapError, SourceConfigError, TransientError
from cdcflow.positions import format_pg_lsn, parse_pg_lsn
from cdcflow.sources.base import TableSpec
from cdcflow.sources.pg_replication import ReplicationConnection, quote_ident

log = logging.getLogger(__name__)
QUERIES = "source_postgres.sql"


@dataclass
class SlotState:
    confirmed_flush: int | None
    restart_lsn: int | None
    wal_status: str | None
    active_pid: int | None
    plugin: str
    database: str


class SlotManagement:
    """The source's connections, publication and replication slot."""

    dsn: str
    slot: str
    publication: str
    _conn: psycopg.Connection | None

    if TYPE_CHECKING:  # what the source class that mixes this in provides

        def describe_tables(self) -> list[TableSpec]: ...

        def close(self) -> None: ...

    # -- regular connection -----------------------------------------------------

    def conn(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = db.connect(self.dsn, "source", autocommit=True)
        return self._conn

    def _one(self, name: str, params: dict | None = None, **idents: sql.Composable):
        try:
            return self.conn().execute(sqlfiles.query(QUERIES, name, **idents), params or {}).fetchone()
        except psycopg.Error as exc:
            self.close()
            raise db.wrap_db_error("source query " + name, exc) from None

    def ensure_publication(self) -> None:
        specs = self.describe_tables()
        tables = sql.SQL(", ").join(sql.Identifier(s.schema, s.name) for s in specs)
        pub = sql.Identifier(self.publication)
        try:
            exists = (
                self.conn()
                .execute(
                    sqlfiles.query("source/30_enable_cdc.sql", "publication_exists"), {"publication": self.publication}
                )
                .fetchone()
            )
        except psycopg.Error as exc:
            raise db.wrap_db_error("reading publications", exc) from None
        if exists:
            published = {
                r[0]
                for r in self.conn()
                .execute(
                    sqlfiles.query("source/30_enable_cdc.sql", "publication_tables"), {"publication": self.publication}
                )
                .fetchall()
            }
            if published == {s.qualified for s in specs}:
                return  # already right: no ALTER, which only the publication's owner may run
        name = "alter_publication" if exists else "create_publication"
        try:
            self.conn().execute(sqlfiles.query("source/30_enable_cdc.sql", name, publication=pub, tables=tables))
        except psycopg.errors.InsufficientPrivilege as exc:
            raise SourceConfigError(
                f"cannot {'alter' if exists else 'create'} publication {self.publication}: "
                f"{db.describe_error(exc)}; run bootstrap as the tables' owner, or create the "
                "publication yourself"
            ) from None
        except psycopg.Error as exc:
            raise db.wrap_db_error("creating the publication", exc) from None

    def slot_state(self) -> SlotState | None:
        row = self._one("slot_state", {"slot": self.slot})
        if row is None:
            return None
        _, plugin, database, confirmed, restart, wal_status, active_pid = row
        return SlotState(
            confirmed_flush=parse_pg_lsn(confirmed) if confirmed else None,
            restart_lsn=parse_pg_lsn(restart) if restart else None,
            wal_status=wal_status,
            active_pid=active_pid,
            plugin=plugin,
            database=database,
        )

    def sample_position(self) -> tuple[int, int | None]:
        """(newest WAL position, WAL the slot keeps on disk or None without a slot)."""
        row = self._one("position_and_retained_bytes", {"slot": self.slot})
        assert row is not None
        return parse_pg_lsn(row[0]), None if row[1] is None else int(row[1])

    def retained_wal_bytes(self) -> int | None:
        return self.sample_position()[1]

    def drop_slot(self) -> None:
        self._one("terminate_slot_reader", {"slot": self.slot})
        for _ in range(50):
            state = self.slot_state()
            if state is None or state.active_pid is None:
                break
            time.sleep(0.1)
        self._one("drop_slot", {"slot": self.slot})

    # -- gap detection ----------------------------------------------------------

    def verify_slot(self, watermark: int) -> None:
        """Raise GapError if the slot cannot serve every change after ``watermark``."""
        state = self.slot_state()
        if state is None:
            raise GapError(
                f"replication slot {self.slot} is missing: changes after {format_pg_lsn(watermark)} "
                "cannot be read; run 'cdcflow resync' to re-snapshot",
                watermark,
                None,
            )
        if state.wal_status == "lost":
            raise GapError(
                f"replication slot {self.slot} lost the WAL it needed (wal_status=lost, "
                "max_slot_wal_keep_size exceeded); run 'cdcflow resync' to re-snapshot",
                watermark,
                state.confirmed_flush,
            )
        if state.confirmed_flush is not None and state.confirmed_flush > watermark + 1:
            raise GapError(
                f"replication slot {self.slot} starts at {format_pg_lsn(state.confirmed_flush)}, after "
                f"our watermark {format_pg_lsn(watermark)}: the slot cannot send the changes in between "
                "again; run 'cdcflow resync' to re-snapshot",
                watermark,
                state.confirmed_flush,
            )

    # -- replication connection -------------------------------------------------

    def _replication_connect(self) -> ReplicationConnection:
        try:
            return ReplicationConnection(db.with_liveness(self.dsn))
        except psycopg.Error as exc:
            raise db.wrap_connect_error("source (replication)", exc) from None

    def create_slot_with_snapshot(self, *, temporary: bool = False) -> tuple[int, str, ReplicationConnection]:
        """Create the slot over the replication protocol, exporting its snapshot.

        Returns (consistent point, snapshot name, the replication connection). The
        snapshot stays importable only while that connection is open and idle: the
        caller reads the tables with ``SET TRANSACTION SNAPSHOT`` and then closes it.

        ``temporary``: a slot of its own, gone when that connection closes, never streamed
        from (so it holds WAL only while the caller reads): a one-table backfill's split point.
        """
        name = f"{self.slot}_backfill_{os.getpid()}"[:63] if temporary else self.slot
        kind = "TEMPORARY LOGICAL" if temporary else "LOGICAL"
        conn = self._replication_connect()
        try:
            rows = conn.command(f"CREATE_REPLICATION_SLOT {quote_ident(name)} {kind} pgoutput EXPORT_SNAPSHOT")
            _, consistent_point, snapshot_name, _ = rows[0]
        except psycopg.Error as exc:
            conn.close()
            if "already exists" in str(exc):
                raise TransientError(f"replication slot {name} was created concurrently") from None
            raise db.wrap_db_error(f"creating replication slot {name}", exc) from None
        assert consistent_point is not None and snapshot_name is not None
        if not temporary:
            log.info("created replication slot %s at %s", name, consistent_point)
        return parse_pg_lsn(consistent_point), snapshot_name, conn
