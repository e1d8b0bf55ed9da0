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
