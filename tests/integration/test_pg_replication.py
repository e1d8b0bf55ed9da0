"""The replication connection against real PostgreSQL (embedded 18, and 15 when CI sets it):
the slot's confirmed position is exactly what cdcflow confirmed, whatever the server sends."""

from __future__ import annotations

import struct
import time

import psycopg
import pytest

from cdcflow.positions import format_pg_lsn, parse_pg_lsn
from cdcflow.sources.pg_replication import ReplicationConnection

SLOT = "cdcflow_transport_test"


def _confirmed(src: psycopg.Connection) -> int:
    row = src.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", (SLOT,))
    return parse_pg_lsn(row.fetchone()[0])


@pytest.fixture
def source(dbs):
    with dbs.source() as src:
        src.autocommit = True
        src.execute("CREATE TABLE published (id int PRIMARY KEY, v text)")
        src.execute("CREATE TABLE unpublished (id serial PRIMARY KEY, v text)")
        src.execute("CREATE PUBLICATION transport_test FOR TABLE published")
        src.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (SLOT,))
        try:
            yield src
        finally:
            src.execute("SELECT pg_drop_replication_slot(%s)", (SLOT,))


def _read_until_commit(repl: ReplicationConnection, timeout: float = 10) -> int:
    """Read the stream until a commit message; its transaction's end LSN."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = repl.read()
        if msg is None:
            repl.send_status(reply=True)
            time.sleep(0.05)
        elif msg[0] == ord("C"):
            (end_lsn,) = struct.unpack_from(">Q", msg, 10)  # flags(1), commit LSN(8), end LSN(8)
            return end_lsn
    raise AssertionError("no commit message arrived")


def test_keepalives_never_move_the_confirmed_position(dbs, source):
    """The server keeps sending keepalives past our position (other tables are written) and,
    with a 1 s wal_sender_timeout, asks for a reply every half second: the connection
    answers (it is not dropped for a timeout) and the slot stays exactly where we confirmed.
    psycopg2's replication cursor moved its flush position to such a keepalive's position
    by itself, which put the slot ahead of the serving watermark."""
    source.execute("INSERT INTO published VALUES (1, 'a')")
    dsn = psycopg.conninfo.make_conninfo(dbs.settings.source_dsn, options="-c wal_sender_timeout=1000")
    repl = ReplicationConnection(dsn)
    try:
        repl.start(SLOT, 0, {"proto_version": "1", "publication_names": "transport_test"})
        end_lsn = _read_until_commit(repl)
        repl.confirm(end_lsn)
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:  # nothing of ours: only keepalives arrive
            source.execute("INSERT INTO unpublished (v) VALUES ('x')")
            assert repl.read() is None
            time.sleep(0.02)
        assert repl.wal_end > end_lsn + 1000, "the server's keepalives did not arrive"
        source.execute("INSERT INTO published VALUES (2, 'b')")
        second = _read_until_commit(repl)  # the stream is alive after 3 s of wal_sender_timeout=1s
        assert second > end_lsn
    finally:
        repl.close()
    assert format_pg_lsn(_confirmed(source)) == format_pg_lsn(end_lsn)


def test_a_replication_error_is_the_servers_error(dbs, source):
    """Starting on a slot that does not exist raises the server's error, SQLSTATE included."""
    repl = ReplicationConnection(dbs.settings.source_dsn)
    try:
        with pytest.raises(psycopg.errors.UndefinedObject, match="does not exist"):
            repl.start("no_such_slot", 0, {"proto_version": "1", "publication_names": "transport_test"})
    finally:
        repl.close()
