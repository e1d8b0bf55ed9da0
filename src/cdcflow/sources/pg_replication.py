"""PostgreSQL's streaming replication protocol, on libpq through psycopg's ``pq`` layer.

A :class:`ReplicationConnection` is a ``replication=database`` connection that runs
replication commands (``CREATE_REPLICATION_SLOT``) and streams one logical slot in
``COPY BOTH`` mode: XLogData messages carry pgoutput's messages, keepalives carry the
server's position (``wal_end``), and standby status updates go back.

The flush position sent to the server is only ever the one :meth:`confirm` was given: the
ingestion worker confirms after the serving commit, so the slot never starts after the
serving watermark. (psycopg2's replication cursor, used before, moves its flush position
to a keepalive's position by itself once everything received looks confirmed; with
transactions whose messages start before an earlier commit, or at a server's shutdown,
that put the slot ahead of the watermark: a false, or real, GAP after the next restart.)

Message formats: https://www.postgresql.org/docs/current/protocol-replication.html
"""

from __future__ import annotations

import struct
import time

import psycopg
from psycopg import pq

from cdcflow.positions import format_pg_lsn

#: XLogData: 'w', dataStart, walEnd, sendTime, then the plugin's message.
XLOG_DATA = 0x77
XLOG_HEADER = 1 + 8 + 8 + 8
#: Primary keepalive: 'k', walEnd, sendTime, replyRequested.
KEEPALIVE = 0x6B
#: A status update goes to the server at least this often while the stream is read.
STATUS_SECONDS = 10.0

_U64 = struct.Struct(">Q")
_STATUS = struct.Struct(">cQQQqB")  # 'r', write, flush, apply, clock, replyRequested
#: The protocol's clock: microseconds since 2000-01-01 UTC.
_EPOCH_2000 = 946_684_800


class ReplicationConnection:
    """One replication connection: commands, then at most one logical stream."""

    def __init__(self, dsn: str) -> None:
        self._conn = psycopg.connect(dsn, replication="database", autocommit=True)
        self._pg = self._conn.pgconn
        #: The server's position from its last keepalive: every change of the publication
        #: committed before it has been sent.
        self.wal_end = 0
        self._flushed = 0  # 0: nothing confirmed yet (the server ignores an invalid position)
        self._last_status = time.monotonic()

    def command(self, text: str) -> list[tuple[str | None, ...]]:
        """Run a replication command (simple protocol); its rows as text."""
        res = self._pg.exec_(text.encode())
        if res.status not in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK):
            raise psycopg.errors.error_from_result(res)
        return [
            tuple(None if (v := res.get_value(r, c)) is None else bytes(v).decode() for c in range(res.nfields))
            for r in range(res.ntuples)
        ]

    def start(self, slot: str, start_lsn: int, options: dict[str, str]) -> None:
        """Stream logical slot ``slot`` from ``start_lsn`` with the plugin's ``options``."""
        opts = ", ".join(f"{quote_ident(k)} {quote_literal(v)}" for k, v in options.items())
        res = self._pg.exec_(
            f"START_REPLICATION SLOT {quote_ident(slot)} LOGICAL {format_pg_lsn(start_lsn)} ({opts})".encode()
        )
        if res.status != pq.ExecStatus.COPY_BOTH:
            raise psycopg.errors.error_from_result(res)
        self._last_status = time.monotonic()

    def read(self) -> bytes | None:
        """The next message of the plugin, or None when none has arrived. Keepalives move
        ``wal_end`` and are answered, when the server asks, with the confirmed position."""
        pg = self._pg
        consumed = False
        while True:
            n, data = pg.get_copy_data(1)
            if n > 0:
                kind = data[0]
                if kind == XLOG_DATA:
                    return bytes(data[XLOG_HEADER:])
                if kind == KEEPALIVE:
                    (self.wal_end,) = _U64.unpack_from(data, 1)
                    if data[17]:
                        self.send_status()
                    continue
                raise psycopg.OperationalError(f"unexpected replication message type {bytes(data[:1])!r}")
            if n == 0 and not consumed:
                pg.consume_input()  # reads what the socket has; raises if the connection broke
                consumed = True
                continue
            if n == 0:
                if time.monotonic() - self._last_status >= STATUS_SECONDS:
                    self.send_status()
                return None
            self._ended()

    def confirm(self, lsn: int) -> None:
        """Tell the server that everything before ``lsn`` is safely stored: the slot resumes there."""
        self._flushed = max(self._flushed, lsn)
        self.send_status()

    def send_status(self, *, reply: bool = False) -> None:
        """A standby status update with the confirmed position; ``reply`` asks for a keepalive."""
        clock = int((time.time() - _EPOCH_2000) * 1_000_000)
        f = self._flushed
        self._pg.put_copy_data(_STATUS.pack(b"r", f, f, f, clock, 1 if reply else 0))
        self._pg.flush()
        self._last_status = time.monotonic()

    def fileno(self) -> int:
        """The socket, for ``select``."""
        return self._pg.socket

    def close(self) -> None:
        self._conn.close()

    def _ended(self) -> None:
        """The stream stopped: the server ended the copy (a shutdown, an error) or the
        connection broke. Raises the server's error when it sent one."""
        pg = self._pg
        res = pg.get_result()
        if res is not None and res.status == pq.ExecStatus.FATAL_ERROR:
            raise psycopg.errors.error_from_result(res)
        message = pg.error_message.decode(errors="replace").strip()
        raise psycopg.OperationalError(f"the replication stream ended: {message or 'the server closed it'}")


def quote_ident(name: str) -> str:
    """Quote an identifier for the replication protocol's own grammar (no psycopg.sql there)."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
