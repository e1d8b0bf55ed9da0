"""Ingestion invariants for the SQL Server source: a FAKE SQL Server, the REAL serving
PostgreSQL (embedded), and the real IngestWorker, one per capture instance.

Exactly once under a random workload whose transactions are bigger than the batch cap;
every batch ends at an LSN boundary; an idle capture advances; the cleanup job passing a
watermark puts that capture in GAP without skipping anything; a replay adds nothing.
"""

from __future__ import annotations

import datetime as dt
import random
import threading
from collections import Counter
from decimal import Decimal

import psycopg
import pytest

from cdcflow.errors import TransientError
from cdcflow.ingest import IngestWorker
from cdcflow.serving import schema
from cdcflow.sources.sqlserver import SqlServerSource, stage_initial_snapshot, stage_snapshot
from tests.conftest import wait_until
from tests.fakes.fake_mssql import FakeCdcServer

DSN = "mssql://sa:Fake-Pw-1@fake-host:1433/demo"
DEMO = ("public.customers", "public.orders", "public.payments")
TABLES = ("customers", "orders", "payments")
KEYS = {"customers": "customer_id", "orders": "order_id", "payments": "payment_id"}


class RecordingSource:
    """Wraps a source to record every batch: (after, end_lsn, [(lsn, seqval, op)])."""

    def __init__(self, inner: SqlServerSource) -> None:
        self.inner = inner
        self.batches: list[tuple[int, int, list[tuple[int, int, int]]]] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def read_batch(self, after_lsn, max_rows, sink, wait_seconds):
        seen: list[tuple[int, int, int]] = []

        class Tee:
            def add_line(self, capture, line):
                seen.append(tuple(int(x) for x in line.split(b"\t", 3)[:3]))  # type: ignore[arg-type]
                sink.add_line(capture, line)

        result = self.inner.read_batch(after_lsn, max_rows, Tee(), wait_seconds)
        self.batches.append((after_lsn, result.end_lsn, seen))
        return result


class Pipeline:
    def __init__(self, edbs, seed: int, cap: int) -> None:
        self.fake = FakeCdcServer(seed=seed)
        self.rng = random.Random(seed)
        root = SqlServerSource(DSN, DEMO, driver=self.fake.driver())
        root.prepare(demo=True)
        self.settings = edbs.settings.replace(cdc_batch_max_rows=cap, source_name="mssql1", poll_interval_seconds=0.01)
        self.serving_dsn = edbs.serving_dsn
        self.specs = root.describe_tables()
        sources = root.per_capture()
        with psycopg.connect(self.serving_dsn) as conn:
            schema.run_scripts(conn, "serving")
            for spec in self.specs:
                schema.ensure_staging(conn, spec)
            schema.ensure_control_rows(conn, "mssql1", "sqlserver", self.specs)
            conn.commit()
            self.snapshot_w = {
                s.describe_tables()[0].capture: stage_initial_snapshot(s, conn, "mssql1") for s in sources
            }
        self.sources = {c: RecordingSource(s) for c, s in zip(self.snapshot_w, sources, strict=True)}
        self.stop = threading.Event()
        self.close_later: IngestWorker | None = None
        # One worker per capture instance. IngestWorker's lease is per source ("ingest:<source>"),
        # so the three share one owner here; cycle() takes the lease as run()'s keeper would.
        self.workers = {
            c: IngestWorker(self.settings, s, self.serving_dsn, self.stop, owner="fake-test")
            for c, s in self.sources.items()
        }
        self.lease_conn = psycopg.connect(self.serving_dsn)

    def close(self) -> None:
        for worker in [*self.workers.values(), *([self.close_later] if self.close_later else [])]:
            worker._drop_connections()  # what run() does on its way out
        self.lease_conn.close()

    def cycle(self, capture: str) -> bool:
        worker = self.workers[capture]
        worker.lease.acquire(self.lease_conn)
        return worker.cycle()

    def random_transaction(self, size: int) -> None:
        rng = self.rng
        now = dt.datetime(2026, 1, 1) + dt.timedelta(seconds=rng.randint(0, 10**6))
        with self.fake.transaction() as tx:
            for _ in range(size):
                table = rng.choice(TABLES)
                keys = tx.live_keys(table)
                r = rng.random()
                if r < 0.45 or not keys:
                    tx.insert(table, **_values(table, rng, now))
                elif r < 0.7:
                    tx.update(table, rng.choice(keys), **_values(table, rng, now))
                elif r < 0.78:  # a key change recorded as an op 3/4 pair (trace flag 8207)
                    tx.change_key(table, rng.choice(keys))
                elif r < 0.85:  # recorded as delete + insert, insert first by seqval (KB 3030352)
                    tx.split_update(table, rng.choice(keys), **_values(table, rng, now))
                else:
                    tx.delete(table, rng.choice(keys))

    def drain(self) -> int:
        """Cycle each worker until its watermark is the max LSN. Returns how many cycles met
        already-staged rows (TransientError, retried with duplicate filtering, as run() does)."""
        replays = 0
        for capture in self.workers:
            for _ in range(10_000):
                try:
                    self.cycle(capture)
                except TransientError as exc:
                    assert "duplicate" in str(exc)
                    replays += 1
                if self.watermarks()[capture][0] == self.fake.max_lsn():
                    break
            else:
                raise AssertionError(f"{capture} did not catch up")
        return replays

    def watermarks(self) -> dict[str, tuple]:
        rows = self.lease_conn.execute(
            "SELECT capture_instance, last_lsn, state, gap_from_lsn, gap_to_lsn FROM ctl_ingestion_watermarks "
            "WHERE source_name = 'mssql1'"
        ).fetchall()
        self.lease_conn.commit()
        return {r[0]: (int(r[1]), r[2], r[3] and int(r[3]), r[4] and int(r[4])) for r in rows}

    def staged(self, table: str, where: str = "__op <> 5") -> list[tuple[int, int, int]]:
        """(lsn, op, key) of each staged row (the staged seqval is a position: see mssql_changes)."""
        key = KEYS[table]
        with psycopg.connect(self.serving_dsn) as c:
            rows = c.execute(f"SELECT __lsn, __op, {key} FROM stg_cdc_{table} WHERE {where}").fetchall()  # noqa: S608
        return sorted((int(a), int(o), int(k)) for a, o, k in rows)

    def expected(self, table: str) -> list[tuple[int, int, int]]:
        """What the fake recorded, as staged: op 3 only as the delete of a key an update changed."""
        changes = self.fake.captures[f"dbo_{table}"].changes
        new_key = {(c.lsn, c.seqval, c.command_id): c.values[0] for c in changes if c.op == 4}
        out = [(c.lsn, c.op, int(c.values[0])) for c in changes if c.op != 3]
        out += [
            (c.lsn, 1, int(c.values[0]))
            for c in changes
            if c.op == 3 and new_key[(c.lsn, c.seqval, c.command_id)] != c.values[0]
        ]
        return sorted(out)

    def latest_state(self, table: str) -> dict[int, tuple]:
        key = KEYS[table]
        with psycopg.connect(self.serving_dsn) as c:
            rows = c.execute(
                f"SELECT DISTINCT ON ({key}) {key}, __op, {_compare_column(table)} FROM stg_cdc_{table} "  # noqa: S608
                f"WHERE __op <> 3 ORDER BY {key}, __lsn DESC, __seqval DESC"
            ).fetchall()
        return {r[0]: r[2] for r in rows if r[1] != 1}


@pytest.fixture
def make_pipeline(edbs):
    made: list[Pipeline] = []

    def make(seed: int, cap: int) -> Pipeline:
        made.append(Pipeline(edbs, seed, cap))
        return made[-1]

    yield make
    for p in made:
        p.close()


def _values(table: str, rng: random.Random, now: dt.datetime) -> dict:
    if table == "customers":
        return {
            "segment": rng.choice(["SMB", "ENTERPRISE", "CONSUMER", "tab\there"]),
            "is_active": rng.random() < 0.8,
            "updated_at": now,
        }
    if table == "orders":
        return {
            "customer_id": rng.randint(1, 9),
            "amount": Decimal(rng.randint(1, 99_999)) / 100,
            "status": rng.choice(["NEW", "PAID", "SHIPPED"]),
            "created_at": now,
            "updated_at": now,
        }
    return {"order_id": rng.randint(1, 9), "paid_amount": Decimal(rng.randint(1, 99_999)) / 100, "paid_at": now}


def _compare_column(table: str) -> str:
    return {"customers": "segment", "orders": "amount", "payments": "paid_amount"}[table]


def _fake_state(p: Pipeline, table: str) -> dict[int, object]:
    t = p.fake.tables[("dbo", table)]
    col = next(i for i, c in enumerate(t.columns) if c.name == _compare_column(table))
    return {k: row[col] for k, row in t.rows.items()}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fake_source_exactly_once_whole_lsns_idle_advance_and_replay(make_pipeline, seed):
    p = make_pipeline(seed, cap=4)
    for _ in range(80):
        p.random_transaction(p.rng.choice([1, 2, 3, 6, 11, 25]))  # many bigger than the cap of 4
        if p.rng.random() < 0.15:
            p.fake.idle_scan()
        if p.rng.random() < 0.5:
            p.cycle(p.rng.choice(list(p.workers)))
    assert p.drain() == 0

    for table in TABLES:
        capture = f"dbo_{table}"
        # Exactly once: every change the fake recorded (op 3 is not read) is staged once.
        assert p.staged(table) == p.expected(table)
        assert len(p.staged(table, "__op = 5")) == (5 if table == "customers" else 0)
        # The latest state per key equals the source table (snapshot rows + changes).
        assert p.latest_state(table) == _fake_state(p, table)
        # Every batch ended at an LSN boundary: each LSN it touched came whole.
        per_lsn = Counter(lsn for lsn, _, _ in p.expected(table))
        batches = p.sources[capture].batches
        assert any(len(seen) > 4 for _, _, seen in batches), "no transaction bigger than the cap was read"
        for after, end, seen in batches:
            for lsn, n in Counter(pos[0] for pos in seen).items():
                assert n == per_lsn[lsn] and after < lsn <= end

    # Idle advance: only orders changes, then a capture-job scan: payments advances with no rows.
    with p.fake.transaction() as tx:
        tx.insert("orders", **_values("orders", p.rng, dt.datetime(2026, 2, 1)))
    p.fake.idle_scan()
    before = len(p.staged("payments"))
    p.cycle("dbo_payments")
    assert p.watermarks()["dbo_payments"][0] == p.fake.max_lsn()
    assert len(p.staged("payments")) == before
    p.drain()

    # Replay: move a watermark back to the snapshot; re-reading stages nothing new.
    counts = {t: len(p.staged(t)) for t in TABLES}
    with psycopg.connect(p.serving_dsn) as c:
        c.execute(
            "UPDATE ctl_ingestion_watermarks SET last_lsn = %s WHERE capture_instance = 'dbo_orders'",
            (p.snapshot_w["dbo_orders"],),
        )
    assert p.drain() >= 1  # the re-read met staged rows...
    assert {t: len(p.staged(t)) for t in TABLES} == counts  # ...and inserted none of them again
    assert p.staged("orders") == p.expected("orders")


def test_fake_cleanup_past_watermark_sets_gap_and_skips_nothing(make_pipeline):
    p = make_pipeline(seed=5, cap=3)
    for _ in range(10):
        p.random_transaction(4)
    p.drain()
    w = p.watermarks()["dbo_customers"][0]
    staged_before = p.staged("customers")
    for _ in range(10):  # changes the ingestor has not read yet...
        p.random_transaction(4)
    with p.fake.transaction() as tx:
        tx.insert("customers", **_values("customers", p.rng, dt.datetime(2026, 3, 1)))
        gone = tx.live_keys("customers")[0]
        tx.delete("customers", gone)  # a delete the gap swallows
    mark = p.fake.cleanup("dbo_customers")  # ...removed by the cleanup job
    assert mark > w

    worker = p.workers["dbo_customers"]
    p.close_later = worker
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: p.watermarks()["dbo_customers"][1] == "GAP", timeout=20, what="capture state GAP")
    finally:
        p.stop.set()
        thread.join(10)
    last_lsn, state, gap_from, gap_to = p.watermarks()["dbo_customers"]
    assert (last_lsn, state, gap_from, gap_to) == (w, "GAP", w, mark)  # never advanced past the gap
    assert p.staged("customers") == staged_before  # nothing after the gap was staged as if it were whole

    # The other captures are separate ingestors and keep going.
    p.stop.clear()
    customers = p.workers.pop("dbo_customers")
    p.drain()
    assert p.watermarks()["dbo_orders"][0] == p.fake.max_lsn()
    assert p.staged("orders") == p.expected("orders")

    # Resync repairs the gap: fresh snapshot, a delete for the key that vanished, state OK.
    with psycopg.connect(p.serving_dsn) as conn:
        w2 = stage_snapshot(p.sources["dbo_customers"].inner, conn, "mssql1", repair=True)
        assert stage_snapshot(p.sources["dbo_customers"].inner, conn, "mssql1", repair=True) == w2  # twice: fine
    assert p.watermarks()["dbo_customers"] == (w2, "OK", None, None)
    assert gone not in p.latest_state("customers")
    assert p.latest_state("customers") == _fake_state(p, "customers")
    p.workers["dbo_customers"] = customers
    for _ in range(5):
        p.random_transaction(4)
    p.drain()
    assert p.latest_state("customers") == _fake_state(p, "customers")
