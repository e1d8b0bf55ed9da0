"""A table added to a running deployment, and a capture resynced alone: backfilled while
the other captures stream on, none of them re-read, no GAP, nothing lost or doubled."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time

import psycopg
import pytest

from cdcflow import admin, status
from cdcflow.bootstrap import bootstrap
from tests.conftest import RunningPipeline, wait_caught_up, wait_until
from tests.integration.test_projections_oracle import Workload, settle
from tests.oracle import assert_latest_state_equals_source, assert_projection_matches

EXTRA_ROWS = 30_000
EXTRA_QUERY = (
    "SELECT e.kind, count(*) AS n, sum(e.v) AS v, count(o.order_id) AS with_order "
    "FROM extra e LEFT JOIN orders o ON o.order_id = e.order_id GROUP BY e.kind"
)
TABLES = ("customers", "orders", "payments")


def _create_extra(src: psycopg.Connection) -> None:
    """The added table. One row in ten has a ``doc`` too big to stay in the row (stored out
    of line, TOAST): an update that leaves it unchanged does not resend it."""
    src.execute(
        "CREATE TABLE extra (id bigserial PRIMARY KEY, kind text NOT NULL, v numeric(12,2), order_id bigint, doc text)"
    )
    src.execute(
        "INSERT INTO extra (kind, v, order_id, doc) SELECT 'k' || (g %% 7), g / 100.0, g %% 400 + 1, "
        "CASE WHEN g %% 10 = 0 THEN (SELECT string_agg(md5(g::text || ':' || i), '') "
        "FROM generate_series(1, 200) i) END FROM generate_series(1, %s) g",
        (EXTRA_ROWS,),
    )


def _extra_writes(src: psycopg.Connection, rng: random.Random) -> None:
    """One transaction on extra: inserts, updates that move rows between groups, deletes."""
    with src.transaction():
        src.execute("INSERT INTO extra (kind, v, order_id) VALUES (%s, %s, %s)", (f"k{rng.randrange(9)}", 1.5, 7))
        lo = rng.randrange(1, EXTRA_ROWS)
        src.execute(
            "UPDATE extra SET kind = %s, v = v + 1 WHERE id BETWEEN %s AND %s", (f"k{rng.randrange(9)}", lo, lo + 20)
        )
        src.execute("DELETE FROM extra WHERE id = %s", (rng.randrange(1, EXTRA_ROWS),))


def _staged(serving: psycopg.Connection) -> dict[str, tuple[int, int]]:
    """Per demo table: (snapshot rows staged, all rows staged)."""
    return {
        t: serving.execute(f"SELECT count(*) FILTER (WHERE __op = 5), count(*) FROM stg_cdc_{t}").fetchone()  # type: ignore[misc]
        for t in TABLES
    }


def _assert_extra_staged_once(src: psycopg.Connection, serving: psycopg.Connection) -> None:
    """Staging's latest state of extra equals the source's rows, and nothing streamed before
    the backfill's snapshot position stays staged beside it: each change reaches staging
    once, in the snapshot or streamed after it."""
    want = {r[0] for r in src.execute("SELECT ROW(id, kind, v, order_id, md5(doc))::text FROM extra")}
    got = {
        r[0]
        for r in serving.execute(
            "SELECT ROW(id, kind, v, order_id, md5(doc))::text FROM (SELECT DISTINCT ON (id) * FROM "
            "stg_cdc_extra WHERE __op <> 3 ORDER BY id, __lsn DESC, __seqval DESC) s WHERE __op <> 1"
        )
    }
    assert got == want, f"missing {sorted(want - got)[:3]}, extra {sorted(got - want)[:3]}"
    before = serving.execute(
        "SELECT count(*) FROM stg_cdc_extra WHERE __lsn < (SELECT min(__lsn) FROM stg_cdc_extra WHERE __op = 5)"
    ).fetchone()[0]
    assert before == 0, f"{before} changes streamed before the snapshot's position are staged beside it"


class _Watch(threading.Thread):
    """Samples every capture's state and watermark while the test runs."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn, self.stop = dsn, threading.Event()
        self.states: dict[str, set[str]] = {}
        self.backwards: list[str] = []

    def run(self) -> None:
        last: dict[str, int] = {}
        with psycopg.connect(self.dsn, autocommit=True) as c:
            while not self.stop.wait(0.05):
                for cap, state, lsn in c.execute(
                    "SELECT capture_instance, state, last_lsn FROM ctl_ingestion_watermarks"
                ):
                    self.states.setdefault(cap, set()).add(state)
                    if lsn < last.get(cap, 0):
                        self.backwards.append(f"{cap}: {last[cap]} -> {lsn}")
                    last[cap] = int(lsn)


def _load(dsn: str, stop: threading.Event, errors: list, extra: bool) -> None:
    try:
        with psycopg.connect(dsn, autocommit=True) as c:
            wl, rng = Workload(c, 3), random.Random(3)
            while not stop.is_set():
                wl.run(10)
                if extra:
                    _extra_writes(c, rng)
    except BaseException as exc:  # noqa: BLE001 - reported by the test
        errors.append(exc)


@pytest.mark.parametrize("writes_to_extra", [True, False], ids=["extra-written", "extra-quiet"])
def test_table_added_while_streaming_is_backfilled_and_nothing_is_reread(dbs, tmp_path, writes_to_extra):
    folder = tmp_path / "projections"
    folder.mkdir()
    (folder / "extra_kinds.sql").write_text(EXTRA_QUERY + "\n")
    three = dbs.settings.replace(projection_interval_seconds=0.2)
    bootstrap(three, demo=True).source.close()
    with dbs.source() as src, RunningPipeline(three):
        Workload(src, 1).run(300)
        _create_extra(src)
        wait_caught_up(three)
    four = three.replace(capture_tables=(*three.capture_tables, "public.extra"), projections_dir=str(folder))
    with dbs.serving() as serving:
        before = _staged(serving)
    watch = _Watch(dbs.serving_dsn)
    watch.start()
    stop, errors = threading.Event(), []
    load = threading.Thread(target=_load, args=(dbs.source_dsn, stop, errors, writes_to_extra))
    load.start()
    try:
        bootstrap(four).source.close()  # what 'cdcflow run' does first: publication, staging, control row
        with RunningPipeline(four):
            wait_until(lambda: "OK" in watch.states.get("public_extra", ()), timeout=120, what="extra backfilled")
            stop.wait(1.0)
            stop.set()
            load.join(30)
            assert not errors, errors
            settle(four, timeout=90)
            with dbs.source() as src, dbs.serving() as serving:
                assert_latest_state_equals_source(src, serving)
                _assert_extra_staged_once(src, serving)
                # Each row of the backfill's snapshot staged once.
                assert (
                    serving.execute(
                        "SELECT count(*) FROM (SELECT id FROM stg_cdc_extra WHERE __op = 5 "
                        "GROUP BY id HAVING count(*) > 1) d"
                    ).fetchone()[0]
                    == 0
                )
                assert assert_projection_matches(src, serving, "proj_extra_kinds", EXTRA_QUERY) > 0
                after = _staged(serving)
    finally:
        stop.set()
        load.join(30)
        watch.stop.set()
        watch.join(5)
    # The other captures were never re-read (no new snapshot rows) and never stopped.
    for t in TABLES:
        assert after[t][0] == before[t][0], f"{t} was re-snapshotted: {before[t]} -> {after[t]}"
        assert watch.states[f"public_{t}"] == {"OK"}, watch.states
    assert "GAP" not in watch.states["public_extra"] and "BACKFILL" in watch.states["public_extra"], watch.states
    assert not watch.backwards, watch.backwards


def test_resync_of_one_capture_rereads_only_it(dbs):
    """A TRUNCATE stops one capture (GAP); 'cdcflow resync public_orders' repairs it alone,
    while 'cdcflow run' streams, and the other captures' staging does not move."""
    bootstrap(dbs.settings, demo=True).source.close()
    with dbs.source() as src, RunningPipeline(dbs.settings):
        Workload(src, 2).run(300)
        wait_caught_up(dbs.settings)
        src.execute("TRUNCATE orders")
        src.execute("INSERT INTO orders (customer_id, amount) SELECT g % 10 + 1, g FROM generate_series(1, 500) g")
        wait_until(lambda: any(c.state == "GAP" for c in status.collect(dbs.settings).captures), what="orders in GAP")
        wait_caught_up(dbs.settings, timeout=30)
        with dbs.serving() as serving:
            before = {t: serving.execute(f"SELECT count(*) FROM stg_cdc_{t}").fetchone()[0] for t in TABLES}
            rows_staged = dict(serving.execute("SELECT capture_instance, rows_staged FROM ctl_ingestion_watermarks"))
        admin.resync(dbs.settings, ["public_orders"])
        wait_caught_up(dbs.settings)
        with dbs.serving() as serving:
            after = {t: serving.execute(f"SELECT count(*) FROM stg_cdc_{t}").fetchone()[0] for t in TABLES}
            staged_after = dict(serving.execute("SELECT capture_instance, rows_staged FROM ctl_ingestion_watermarks"))
            states = dict(serving.execute("SELECT capture_instance, state FROM ctl_ingestion_watermarks"))
            assert_latest_state_equals_source(src, serving)
    assert set(states.values()) == {"OK"}, states
    for t in ("customers", "payments"):
        assert after[t] == before[t] and staged_after[f"public_{t}"] == rows_staged[f"public_{t}"], (t, before, after)
    assert after["orders"] > before["orders"]


def test_full_resync_completes_beside_a_table_no_longer_captured(dbs):
    """A table taken out of CAPTURE_TABLES keeps its control row (OK, at its old position,
    never to move again). A full resync (the slot is gone) of the remaining captures must
    not wait for that row: every capture still captured is OK after 'cdcflow resync'."""
    bootstrap(dbs.settings, demo=True).source.close()
    two = dbs.settings.replace(capture_tables=("public.customers", "public.orders"))
    with dbs.source() as src:
        Workload(src, 2).run(50)
        with RunningPipeline(dbs.settings):
            wait_caught_up(dbs.settings)
        src.execute("SELECT pg_drop_replication_slot(%s)", (dbs.settings.slot,))
        src.execute("INSERT INTO orders (customer_id, amount) VALUES (1, 3.5)")
    admin.resync(two, None)
    with dbs.serving() as serving:
        states = dict(serving.execute("SELECT capture_instance, state FROM ctl_ingestion_watermarks"))
        with dbs.source() as src:
            assert_latest_state_equals_source(src, serving, tables=("customers", "orders"))
    assert states["public_customers"] == states["public_orders"] == "OK", states


def _capture_state(dbs, capture: str) -> str | None:
    with dbs.serving() as s:
        row = s.execute("SELECT state FROM ctl_ingestion_watermarks WHERE capture_instance = %s", (capture,)).fetchone()
    return row[0] if row else None


def _all_states(dbs) -> set[str]:
    with dbs.serving() as s:
        return {r[0] for r in s.execute("SELECT state FROM ctl_ingestion_watermarks")}


def _chunks_done(dbs) -> int:
    with dbs.serving() as s:
        return s.execute("SELECT count(*) FROM ctl_backfill_chunks").fetchone()[0]


@pytest.mark.parametrize("copy", ["table-added", "initial-snapshot"])
def test_sigkill_during_a_chunked_copy_resumes_it_and_nothing_is_lost_or_doubled(edbs, tmp_path, copy):
    """'cdcflow run' is SIGKILLed at random moments of a table's chunked copy, at least five
    times, while every table is written: the copy of a table added to a running deployment,
    or the initial snapshot of all four (then the first run's bootstrap takes it). Each
    restart resumes from the chunks done (the rows copied over all attempts stay well below
    one copy per attempt), and at the end staging holds the big table's rows and the other
    tables' changes exactly."""
    # 'initial-snapshot': the demo schema and control rows only; the first run snapshots.
    bootstrap(edbs.settings, demo=True, snapshot_now=copy == "table-added").source.close()
    with edbs.source() as src:
        src.execute(
            "CREATE TABLE extra (id bigserial PRIMARY KEY, kind text NOT NULL, v numeric(12,2), order_id bigint, "
            "doc text)"
        )
        src.execute(
            "INSERT INTO extra (kind, v, order_id, doc) SELECT 'k' || (g %% 7), g / 100.0, g %% 400 + 1, "
            "CASE WHEN g %% 100 = 0 THEN (SELECT string_agg(md5(g::text || ':' || i), '') "
            "FROM generate_series(1, 200) i) END FROM generate_series(1, %s) g",
            (300_000,),
        )
        src.execute("ANALYZE extra")  # the planner's rows per block size the chunks
    four = edbs.settings.replace(capture_tables=(*edbs.settings.capture_tables, "public.extra"))
    env = edbs.env(
        CAPTURE_TABLES=",".join(four.capture_tables), LOG_LEVEL="info", LEASE_SECONDS="3", SNAPSHOT_CHUNK_ROWS="15000"
    )
    stop, errors = threading.Event(), []
    load = threading.Thread(target=_load, args=(edbs.source_dsn, stop, errors, True))
    load.start()
    rng = random.Random(11)
    mid_backfill = 0
    proc: subprocess.Popen | None = None
    with open(tmp_path / "run.log", "wb") as log:
        try:
            for _ in range(6):
                proc = subprocess.Popen([sys.executable, "-m", "cdcflow", "run"], env=env, stdout=log, stderr=log)
                # Killed at a random moment after this run has committed a chunk of its own.
                seen = _chunks_done(edbs)
                wait_until(lambda seen=seen: _chunks_done(edbs) > seen, timeout=60, what="a chunk copied")
                time.sleep(rng.uniform(0.0, 0.3))
                state = _capture_state(edbs, "public_extra")
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(30)
                proc = None
                mid_backfill += state == "BACKFILL"
            proc = subprocess.Popen([sys.executable, "-m", "cdcflow", "run"], env=env, stdout=log, stderr=log)
            wait_until(lambda: _all_states(edbs) == {"OK"}, timeout=120, what="every copy done")
            stop.set()
            load.join(30)
            assert not errors, errors
            wait_caught_up(four, timeout=60)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
            proc = None
        finally:
            stop.set()
            load.join(30)
            if proc is not None:  # a wait above failed: the run must not outlive the test
                proc.kill()
                proc.wait(30)
    assert mid_backfill >= 5, f"only {mid_backfill} kills landed during the backfill"
    with edbs.source() as src, edbs.serving() as serving:
        assert_latest_state_equals_source(src, serving)
        _assert_extra_staged_once(src, serving)
        positions, copied, twice = serving.execute(
            "SELECT count(DISTINCT __lsn), count(*), count(*) - count(DISTINCT (__lsn, id)) "
            "FROM stg_cdc_extra WHERE __op = 5"
        ).fetchone()
        assert twice == 0, f"{twice} rows staged twice by one snapshot"
        assert positions >= 2, "the copy never resumed: every chunk came from one snapshot"
        assert copied < 300_000 * 1.5, f"{copied} rows copied for a 300,000-row table: chunks were copied again"
        assert serving.execute("SELECT count(*) FROM ctl_backfill_chunks").fetchone()[0] == 0
        # No temporary slot outlived its process.
        assert (
            src.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE '%backfill%'").fetchone()[0]
            == 0
        )
    assert "resuming" in (tmp_path / "run.log").read_text(), "no restart resumed from the chunks done"


def test_a_row_moved_into_a_copied_chunk_between_attempts_keeps_its_toast_value(edbs, tmp_path):
    """A copy stopped after a few chunks resumes with a new snapshot that reads only the
    block ranges not done. A row that an update moved meanwhile from a range not done into
    one done is in neither snapshot's chunks, and its streamed update did not resend its
    TOAST value (it left it unchanged): the backfill must fetch that row again by key, or
    staging keeps the row without its value."""
    bootstrap(edbs.settings, demo=True, snapshot_now=True).source.close()
    with edbs.source() as src:
        src.execute("CREATE TABLE extra (id bigserial PRIMARY KEY, kind text NOT NULL, doc text)")
        src.execute(
            "INSERT INTO extra (kind, doc) SELECT 'k' || (g % 7), CASE WHEN g % 100 = 0 THEN "
            "(SELECT string_agg(md5(g::text || ':' || i), '') FROM generate_series(1, 200) i) END "
            "FROM generate_series(1, 300000) g"
        )
        src.execute("ANALYZE extra")
    four = edbs.settings.replace(capture_tables=(*edbs.settings.capture_tables, "public.extra"))
    env = edbs.env(
        CAPTURE_TABLES=",".join(four.capture_tables), LOG_LEVEL="info", LEASE_SECONDS="3", SNAPSHOT_CHUNK_ROWS="15000"
    )
    proc: subprocess.Popen | None = None
    with open(tmp_path / "run.log", "wb") as log:
        try:
            proc = subprocess.Popen([sys.executable, "-m", "cdcflow", "run"], env=env, stdout=log, stderr=log)
            wait_until(lambda: _chunks_done(edbs) > 0, timeout=60, what="a chunk copied")
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
            with edbs.serving() as serving:
                ranges = serving.execute("SELECT first_block, last_block FROM ctl_backfill_chunks").fetchall()
            assert ranges and all(last is not None for _, last in ranges), f"the copy finished first: {ranges}"
            done_to = min(last for _, last in ranges)  # blocks [0, done_to) are copied (chunks go in order)
            assert min(first for first, _ in ranges) == 0, ranges
            with edbs.source() as src:
                # Room in the copied blocks, then updates of rows with a TOAST value from blocks
                # not copied: their new versions land in the room (the free space map says so).
                src.execute("DELETE FROM extra WHERE ctid < %s::tid", (f"({done_to},0)",))
                src.execute("VACUUM extra")
                moved = src.execute(
                    "UPDATE extra SET kind = 'moved' WHERE id IN (SELECT id FROM extra WHERE doc IS NOT NULL "
                    "AND ctid >= %s::tid ORDER BY id DESC LIMIT 20) RETURNING id, (ctid::text::point)[0]",
                    (f"({done_to + 40},0)",),
                ).fetchall()
                landed = [i for i, block in moved if block < done_to]
                assert landed, f"no update moved its row into the copied blocks [0, {done_to}): {moved}"
            proc = subprocess.Popen([sys.executable, "-m", "cdcflow", "run"], env=env, stdout=log, stderr=log)
            wait_until(lambda: _all_states(edbs) == {"OK"}, timeout=120, what="the copy done")
            wait_caught_up(four, timeout=60)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
            proc = None
        finally:
            if proc is not None:
                proc.kill()
                proc.wait(30)
    with edbs.source() as src, edbs.serving() as serving:
        want = dict(src.execute("SELECT id, md5(doc) FROM extra WHERE id = ANY(%s)", (landed,)).fetchall())
        got = dict(
            serving.execute(
                "SELECT DISTINCT ON (id) id, md5(doc) FROM stg_cdc_extra WHERE id = ANY(%s) AND __op <> 3 "
                "ORDER BY id, __lsn DESC, __seqval DESC",
                (landed,),
            ).fetchall()
        )
        assert got == want, f"rows moved into copied blocks lost their TOAST value: {got} != {want}"
        assert_latest_state_equals_source(src, serving)


def test_staging_indexes_that_exist_are_ensured_without_locking_the_table(demo_source):
    """A backfill's completion ensures the staging indexes while it holds the capture's row
    lock; an ingestion batch that has written the staging table waits for that lock. An
    index build (even CREATE INDEX IF NOT EXISTS) would wait for the batch: a deadlock."""
    from cdcflow.serving import schema
    from cdcflow.sources.postgres import PostgresSource

    settings = demo_source.settings
    source = PostgresSource(settings.source_dsn, settings.capture_tables, settings.slot, settings.publication)
    try:
        spec = next(s for s in source.describe_tables() if s.name == "customers")
    finally:
        source.close()
    with demo_source.serving() as batch, demo_source.serving() as completion:
        batch.execute("BEGIN")
        batch.execute(
            "INSERT INTO stg_cdc_customers (__lsn, __seqval, __op, customer_id, segment) VALUES (1, 1, 2, -1, 'x')"
        )  # uncommitted: the batch holds the staging table's ROW EXCLUSIVE lock
        completion.execute("SET lock_timeout = '2s'")
        completion.execute("BEGIN")
        schema.ensure_indexes(completion, spec)  # raises LockNotAvailable if it needs a lock
        completion.execute("ROLLBACK")
        batch.execute("ROLLBACK")
