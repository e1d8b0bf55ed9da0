"""Ingestion invariants against real PostgreSQL (embedded 18, and 15 when CI sets it)."""

from __future__ import annotations

import psycopg
import pytest

from cdcflow.bootstrap import bootstrap
from cdcflow.positions import parse_pg_lsn
from cdcflow.serving.staging import StagingWriter
from cdcflow.sources.base import copy_line
from tests.conftest import RunningPipeline, wait_caught_up, wait_until
from tests.workload import Recorder, Workload, assert_staging_matches


def _slot_confirmed(dbs) -> int:
    with dbs.source() as c:
        row = c.execute(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", (dbs.settings.slot,)
        ).fetchone()
    return parse_pg_lsn(row[0])


def _watermarks(dbs) -> dict[str, tuple[int, str]]:
    with dbs.serving() as c:
        return {
            r[0]: (int(r[1]), r[2])
            for r in c.execute("SELECT capture_instance, last_lsn, state FROM ctl_ingestion_watermarks").fetchall()
        }


@pytest.mark.parametrize("seed", [1, 2])
def test_exactly_once_in_commit_order(dbs, seed):
    """Random multi-table transactions, one bigger than CDC_BATCH_MAX_ROWS: staging holds
    exactly the changes made, per key in commit order, and the watermark reaches the end."""
    settings = dbs.settings.replace(cdc_batch_max_rows=50)
    bootstrap(settings, demo=True).source.close()
    rec = Recorder()
    with dbs.source() as src, RunningPipeline(settings):
        wl = Workload(src, seed, rec)
        for i in range(120):
            wl.transaction()
            if i == 60:
                wl.bulk_transaction(400)  # 800 changes in one commit, batch cap 50
        end = parse_pg_lsn(src.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])
        wait_caught_up(settings)
    with dbs.serving() as serving:
        assert_staging_matches(serving, rec)
        # The bulk transaction was staged whole: one commit LSN for all its rows.
        lsns = serving.execute("SELECT count(DISTINCT __lsn) FROM stg_cdc_orders WHERE status LIKE 'BULK%'").fetchone()
        assert lsns[0] == 1
    wms = _watermarks(dbs)
    assert {s for _, s in wms.values()} == {"OK"}
    assert min(w for w, _ in wms.values()) + 1 >= end
    assert rec.count > 800


def test_snapshot_rows_stage_before_stream(dbs):
    """Rows that existed before capture began are staged as op 5 before any streamed change."""
    with dbs.source() as src:
        src.execute(open_schema())
        src.execute("INSERT INTO customers (segment) SELECT 'SMB' FROM generate_series(1, 250)")
    settings = dbs.settings
    bootstrap(settings).source.close()
    with dbs.source() as src, RunningPipeline(settings):
        src.execute("UPDATE customers SET segment = 'ENTERPRISE' WHERE customer_id <= 10")
        wait_caught_up(settings)
    with dbs.serving() as s:
        snap = s.execute("SELECT count(*), max(__lsn) FROM stg_cdc_customers WHERE __op = 5").fetchone()
        first_stream = s.execute("SELECT min(__lsn) FROM stg_cdc_customers WHERE __op <> 5").fetchone()[0]
        assert snap[0] == 250
        assert snap[1] < first_stream
        latest = s.execute(
            "SELECT count(*) FROM (SELECT DISTINCT ON (customer_id) segment FROM stg_cdc_customers "
            "ORDER BY customer_id, __lsn DESC, __seqval DESC) t WHERE segment = 'ENTERPRISE'"
        ).fetchone()[0]
        assert latest == 10


def open_schema() -> str:
    from cdcflow import sqlfiles

    return dict(sqlfiles.scripts("source"))["10_schema.sql"]


def test_idle_source_still_advances_slot(dbs):
    """Invariant 7: writes only to uncaptured tables and other databases move the slot."""
    bootstrap(dbs.settings, demo=True).source.close()
    with dbs.source() as src:
        src.execute("CREATE TABLE noise (id serial primary key, v text)")
    with RunningPipeline(dbs.settings):
        wait_caught_up(dbs.settings)
        before_slot = _slot_confirmed(dbs)
        before_wm = min(w for w, _ in _watermarks(dbs).values())
        with dbs.source() as src:
            for _ in range(20):
                src.execute("INSERT INTO noise (v) SELECT repeat('x', 1000) FROM generate_series(1, 200)")
        with dbs.serving() as other_db:  # another database on the same server
            other_db.execute("CREATE TABLE IF NOT EXISTS noise2 AS SELECT g FROM generate_series(1, 50000) g")
        wait_until(lambda: _slot_confirmed(dbs) > before_slot + 100_000, timeout=20, what="slot to advance")
        assert min(w for w, _ in _watermarks(dbs).values()) > before_wm
    with dbs.serving() as s:
        assert s.execute("SELECT count(*) FROM stg_cdc_orders WHERE __op <> 5").fetchone()[0] == 0


def test_staging_unique_position_rejects_duplicates_and_dedupe_inserts_nothing(edbs):
    """Invariant 1 at the writer: the primary key refuses a second copy of a change, and the
    dedupe path used on retry inserts nothing that is already there."""
    bootstrap(edbs.settings, demo=True).source.close()
    from cdcflow.bootstrap import make_source

    source = make_source(edbs.settings)
    specs = {s.capture: s for s in source.describe_tables()}
    source.close()
    lines = [copy_line(10**9, i, 2, None, [i, "SMB", True, "2026-01-01 00:00:00+00"]) for i in range(1, 4)]
    with psycopg.connect(edbs.serving_dsn) as conn:
        w = StagingWriter(conn, specs, "source1")
        for line in lines:
            w.add_line("public_customers", line)
        w.flush()
        conn.commit()
        w = StagingWriter(conn, specs, "source1")
        w.add_line("public_customers", lines[0])
        with pytest.raises(psycopg.errors.UniqueViolation):
            w.flush()
        conn.rollback()
        w = StagingWriter(conn, specs, "source1", dedupe=True)
        for line in lines + [copy_line(10**9, 4, 2, None, [4, "SMB", True, "2026-01-01 00:00:00+00"])]:
            w.add_line("public_customers", line)
        w.flush()
        conn.commit()
        assert w.rows_written == {"public_customers": 1}
        n = conn.execute("SELECT count(*) FROM stg_cdc_customers WHERE __lsn = %s", (10**9,)).fetchone()[0]
        assert n == 4


def test_toast_value_survives_updates_of_other_columns(dbs):
    """An unchanged TOASTed column arrives as 'unchanged': staging keeps the previous value."""
    with dbs.source() as src:
        src.execute("CREATE TABLE docs (id int primary key, body text, n int)")
        src.execute("ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL")
        src.execute("CREATE TABLE docs_full (id int primary key, body text, n int)")
        src.execute("ALTER TABLE docs_full ALTER COLUMN body SET STORAGE EXTERNAL")
        src.execute("ALTER TABLE docs_full REPLICA IDENTITY FULL")
    settings = dbs.settings.replace(capture_tables=("public.docs", "public.docs_full"))
    bootstrap(settings).source.close()
    body = "".join(chr(65 + (i * 7) % 26) for i in range(20_000))
    with dbs.source() as src, RunningPipeline(settings):
        for t in ("docs", "docs_full"):
            src.execute(f"INSERT INTO {t} VALUES (1, %s, 0)", (body,))
            src.execute(f"UPDATE {t} SET n = 1 WHERE id = 1")
            src.execute(f"UPDATE {t} SET n = 2 WHERE id = 1")
        wait_caught_up(settings)
    with dbs.serving() as s:
        for t in ("docs", "docs_full"):
            rows = s.execute(
                f"SELECT n, body FROM stg_cdc_{t} WHERE __op IN (2, 4) ORDER BY __lsn, __seqval"
            ).fetchall()
            assert [r[0] for r in rows] == [0, 1, 2]
            assert all(r[1] == body for r in rows), t


def _backlog(dbs, seed: int, transactions: int):
    """A demo source with ``transactions`` random transactions not yet staged, batches of 50:
    (settings, what was done, the source's WAL position after it)."""
    settings = dbs.settings.replace(cdc_batch_max_rows=50)
    bootstrap(settings, demo=True).source.close()
    rec = Recorder()
    with dbs.source() as src:
        wl = Workload(src, seed, rec)
        for _ in range(transactions):
            wl.transaction()
        end = parse_pg_lsn(src.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])
    return settings, rec, end


def _worker(settings):
    import threading

    from cdcflow.bootstrap import make_source
    from cdcflow.ingest import IngestWorker

    worker = IngestWorker(settings, make_source(settings), settings.serving_dsn, threading.Event(), owner="test")
    lease_conn = psycopg.connect(settings.serving_dsn)
    worker.lease.acquire(lease_conn)
    return worker, lease_conn


def test_queued_commits_stage_exactly_once_and_confirm_only_what_committed(dbs):
    """A backlog is staged batch after batch with each commit queued behind the next read:
    every watermark the slot is confirmed at was committed first, and staging ends exact."""
    settings, rec, end = _backlog(dbs, seed=7, transactions=150)
    worker, lease_conn = _worker(settings)
    queued = 0
    try:
        for _ in range(500):
            worker.cycle()
            queued += worker._follow is not None
            confirmed = _slot_confirmed(dbs)
            # The slot never runs ahead of what staging committed (invariant 2).
            assert min(w for w, _ in _watermarks(dbs).values()) + 1 >= confirmed
            if min(w for w, _ in _watermarks(dbs).values()) + 1 >= end and worker._follow is None:
                break
    finally:
        worker._drop_connections()
        lease_conn.close()
    assert queued > 3, "no batch had its commit queued: the pipelined path was not exercised"
    with dbs.serving() as serving:
        assert_staging_matches(serving, rec)


def test_watermark_moved_under_a_queued_commit_rolls_it_back_and_restarts(dbs):
    """A watermark that changes between reading it and committing a batch after it (a reset
    or resync ran meanwhile) fails that batch's commit. The failure surfaces at the next
    cycle, the worker starts over from the watermark it finds, and nothing is lost or doubled."""
    settings, rec, end = _backlog(dbs, seed=11, transactions=60)
    worker, lease_conn = _worker(settings)
    moved = []
    try:
        for _ in range(50):  # the first read may find the stream not yet sending
            if worker.cycle() and worker._follow is not None:
                break  # a batch's commit is queued
        assert worker._follow is not None
        worker._lane.wait()
        # Someone else moves every watermark by one byte (no commit starts there: nothing is skipped).
        with dbs.serving() as serving:
            serving.execute("UPDATE ctl_ingestion_watermarks SET last_lsn = last_lsn + 1")
        worker.cycle()  # batch 2 is read after the old watermark; its commit is queued and fails
        for _ in range(500):
            try:
                worker.cycle()
            except Exception as exc:  # noqa: BLE001 - what run() would log and retry
                moved.append(str(exc))
                worker._drop_connections()
                continue
            if min(w for w, _ in _watermarks(dbs).values()) + 1 >= end and worker._follow is None:
                break
    finally:
        worker._drop_connections()
        lease_conn.close()
    assert moved and "watermark changed" in moved[0], moved
    with dbs.serving() as serving:
        assert_staging_matches(serving, rec)


_TYPED = """
CREATE TABLE typed (
    id bigint PRIMARY KEY, i int, s smallint, amount numeric(12,2), big numeric, f float8,
    t text, v varchar(20), b boolean, ts timestamptz, tsn timestamp, d date, u uuid, j jsonb,
    raw bytea, arr int[], iv interval, {extra}
)
"""
_TYPED_ROWS = [
    "(1, -5, 3, 12.50, 123456789012345678901234.5, 1.5e300, E'tab\\there\\nnew \\\\ back', 'x', true, "
    "'2026-03-29 01:30:00+01', '2026-01-01 00:00:00.123456', '2026-02-28', "
    "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"k\": [1, 2]}', '\\xdeadbeef', '{1,NULL,3}', '1 day 02:00', {extra})",
    "(2, NULL, NULL, NULL, NULL, 'NaN', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
]


@pytest.mark.parametrize("transfer", ["binary", "text"])
def test_every_type_stages_exactly_in_binary_and_text_transfer(dbs, transfer):
    """Values of many built-in types (escapes, NULLs, NaN, arrays, bytea, jsonb, DST edge
    timestamps) arrive in staging exactly as the source has them, whether the stream is in
    pgoutput's binary mode (COPY BINARY into staging) or in text mode. A column of a type
    that is not built in (an enum) makes cdcflow choose text transfer by itself."""
    from cdcflow.bootstrap import make_source

    extra = "e mood" if transfer == "text" else "n int"
    with dbs.source() as src:
        if transfer == "text":
            src.execute("CREATE TYPE mood AS ENUM ('ok', 'sad')")
            with dbs.serving() as serving:  # staging has the source's column types
                serving.execute("CREATE TYPE mood AS ENUM ('ok', 'sad')")
        src.execute(_TYPED.format(extra=extra))
    settings = dbs.settings.replace(capture_tables=("public.typed",), enable_proj_orders_kpi=False)
    bootstrap(settings).source.close()
    source = make_source(settings)
    try:
        with psycopg.connect(settings.serving_dsn) as conn:
            source.serving_version = conn.info.server_version
        binary, why = source.binary_transfer()
        assert binary == (transfer == "binary"), why
        source.serving_version += 10000  # another major version: never binary
        assert source.binary_transfer()[0] is False
    finally:
        source.close()
    value = "'sad'" if transfer == "text" else "7"
    with dbs.source() as src, RunningPipeline(settings):
        src.execute("INSERT INTO typed VALUES " + _TYPED_ROWS[0].replace("{extra}", value))
        src.execute("INSERT INTO typed VALUES " + _TYPED_ROWS[1])
        src.execute("UPDATE typed SET t = t || E'\\r', amount = amount + 1 WHERE id = 1")
        src.execute("DELETE FROM typed WHERE id = 2")
        src.execute("INSERT INTO typed VALUES " + _TYPED_ROWS[1].replace("(2,", "(3,"))
        wait_caught_up(settings)
        expected = src.execute("SELECT typed::text FROM typed ORDER BY id").fetchall()
    with dbs.serving() as s:
        cols = [
            r[0]
            for r in s.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = 'stg_cdc_typed'::regclass AND attnum > 0 "
                "AND NOT attisdropped AND attname NOT LIKE '\\_\\_%' ORDER BY attnum"
            ).fetchall()
        ]
        latest = s.execute(
            f"SELECT ROW({', '.join(cols)})::text FROM ("
            "  SELECT DISTINCT ON (id) * FROM stg_cdc_typed ORDER BY id, __lsn DESC, __seqval DESC"
            ") x WHERE __op <> 1 ORDER BY id"
        ).fetchall()
        ops = s.execute("SELECT __op, id FROM stg_cdc_typed ORDER BY __lsn, __seqval").fetchall()
        age = s.execute("SELECT max(abs(extract(epoch FROM now() - __commit_time))) FROM stg_cdc_typed").fetchone()
    assert latest == expected
    assert age[0] < 120  # the commit time arrived as a timestamp, not garbage
    assert ops == [(2, 1), (2, 2), (4, 1), (1, 2), (2, 3)]


def test_a_frozen_batch_transaction_is_ended_by_the_server(dbs):
    """The ingestion connection lets a transaction sit idle for at most 3 leases (10 s at
    least): a process frozen between its lease fence and its commit cannot block a takeover
    for longer than that."""
    settings = dbs.settings.replace(lease_seconds=5)
    bootstrap(settings, demo=True).source.close()
    worker, lease_conn = _worker(settings)
    try:
        conn = worker.serving()
        assert conn.execute("SHOW idle_in_transaction_session_timeout").fetchone()[0] == "15s"
        conn.rollback()
        worker.settings = settings.replace(lease_seconds=1)
        assert worker.idle_in_transaction_ms() == 10_000
    finally:
        worker._drop_connections()
        lease_conn.close()
