"""The projection lifecycle against a real serving database, driven cycle by cycle:
cutoff, held captures, the error path, atomicity at the last statement, the self-check,
wake-ups (in process and by NOTIFY) and ``cdcflow rebuild``.

Changes are written straight into staging with chosen positions (above the snapshot),
so each test decides exactly where every watermark stands.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import io
import threading
import time
from contextlib import redirect_stdout
from decimal import Decimal

import psycopg
import pytest

from cdcflow import cli, projections
from cdcflow.bootstrap import bootstrap
from cdcflow.projections import base, closure, incremental
from cdcflow.projections.duckplan import DuckQueries
from cdcflow.projections.selfcheck import SelfCheck
from cdcflow.projections.storage import Layout
from cdcflow.projections.worker import ProjectionWorker
from tests.conftest import wait_until

T0 = dt.datetime(2026, 1, 2, 3, 4, 30, tzinfo=dt.UTC)
KPI = "proj_orders_kpi_by_minute_segment"
LATEST = "proj_orders_latest"


class Serving:
    """A bootstrapped demo (snapshot staged, pipeline not running) to drive by hand."""

    def __init__(self, dbs) -> None:
        self.settings = dbs.settings.replace(enable_proj_orders_latest=True, projection_self_check_seconds=0)
        bootstrap(self.settings, demo=True).source.close()
        self.conn = psycopg.connect(self.settings.serving_dsn, autocommit=True)
        self.conn.execute("SET TimeZone = 'UTC'")
        self.base = int(self.conn.execute("SELECT max(last_lsn) FROM ctl_ingestion_watermarks").fetchone()[0])
        self.duck = base.open_duckdb()

    def close(self) -> None:
        self.conn.close()
        self.duck.close()

    def projection(self, name: str = KPI, settings=None) -> base.Projection:
        """The projection as the worker builds it from its definition."""
        with base.open_connection(self.settings.serving_dsn) as conn:
            return projections.resolve(settings or self.settings, conn, [name])[0]

    def order(
        self,
        lsn: int,
        order_id: int,
        customer_id: int | None,
        amount: str | None,
        op: int = 2,
        created: dt.datetime = T0,
    ) -> None:
        self.conn.execute(
            "INSERT INTO stg_cdc_orders (__lsn, __seqval, __op, __commit_time, order_id, customer_id, amount, status,"
            " created_at, updated_at) VALUES (%s, 0, %s, now(), %s, %s, %s, 'NEW', %s, %s)",
            (self.base + lsn, op, order_id, customer_id, amount, created, created),
        )

    def customer(self, lsn: int, customer_id: int, segment: str, op: int = 4) -> None:
        self.conn.execute(
            "INSERT INTO stg_cdc_customers (__lsn, __seqval, __op, __commit_time, customer_id, segment, is_active,"
            " updated_at) VALUES (%s, 0, %s, now(), %s, %s, true, now())",
            (self.base + lsn, op, customer_id, segment),
        )

    def payment(self, lsn: int, payment_id: int, order_id: int, amount: str, op: int = 2) -> None:
        self.conn.execute(
            "INSERT INTO stg_cdc_payments (__lsn, __seqval, __op, __commit_time, payment_id, order_id, paid_amount,"
            " paid_at) VALUES (%s, 0, %s, now(), %s, %s, %s, %s)",
            (self.base + lsn, op, payment_id, order_id, amount, T0),
        )

    def watermarks(self, **by_table: int) -> None:
        for table, lsn in by_table.items():
            self.conn.execute(
                "UPDATE ctl_ingestion_watermarks SET last_lsn = %s WHERE capture_instance = %s",
                (self.base + lsn, f"public_{table}"),
            )

    def cycle(
        self,
        projection: base.Projection,
        *,
        self_check: bool = False,
        check_keys: list | None = None,
        reader: bool = False,
    ) -> base.CycleResult:
        """One committed cycle; ``reader``: state read on a second connection (as the worker
        does) instead of on the cycle's own before it writes."""
        dsn = self.settings.serving_dsn
        with base.open_connection(dsn) as conn, contextlib.ExitStack() as stack:
            second = stack.enter_context(base.snapshot_connection(dsn)) if reader else None
            result = base.run_cycle(
                conn,
                self.duck,
                projection,
                self.settings,
                self_check=self_check,
                check_keys=check_keys,
                reader=second,
            )
            conn.commit()
        return result

    def _buckets(self, columns: str, minute: dt.datetime) -> list[tuple]:
        return self.conn.execute(
            f"SELECT segment, {columns} FROM proj_orders_kpi_by_minute_segment"
            " WHERE minute_bucket = date_trunc('minute', %s::timestamptz)",
            (minute,),
        ).fetchall()

    def kpi(self, minute: dt.datetime = T0) -> dict[str, tuple]:
        rows = self._buckets("orders_count, orders_amount_sum, paid_amount_sum", minute)
        return {r[0]: tuple(r[1:]) for r in rows}

    def payments_count(self, minute: dt.datetime = T0) -> dict[str, int]:
        return {r[0]: r[1] for r in self._buckets("payments_count", minute)}

    def latest(self, order_id: int) -> tuple | None:
        return self.conn.execute(
            "SELECT customer_id, segment, amount, __source_lsn FROM proj_orders_latest WHERE order_id = %s", (order_id,)
        ).fetchone()

    def meta(self, name: str) -> tuple:
        return self.conn.execute(
            "SELECT status, as_of_lsn, last_error, restated_buckets FROM ctl_projection_metadata"
            " WHERE projection_name = %s",
            (name,),
        ).fetchone()

    def checkpoints(self, name: str) -> set[int]:
        return {
            int(r[0])
            for r in self.conn.execute(
                "SELECT last_lsn FROM ctl_projection_checkpoints WHERE projection_name = %s", (name,)
            )
        }


@pytest.fixture
def srv(edbs):
    s = Serving(edbs)
    yield s
    s.close()


def test_cutoff_is_the_lowest_watermark_and_nothing_beyond_it_shows(srv):
    kpi, latest = srv.projection(KPI), srv.projection(LATEST)
    srv.cycle(kpi), srv.cycle(latest)
    srv.order(10, 100, 1, "5.00")  # customer 1 is ENTERPRISE in the demo seed
    srv.customer(20, 1, "LATE")  # beyond the customers watermark
    srv.order(25, 101, 1, "7.00")  # beyond the cutoff (orders watermark is ahead)
    srv.watermarks(orders=30, customers=15, payments=30)
    a, b = srv.cycle(kpi), srv.cycle(latest)
    assert a.cutoff == b.cutoff == srv.base + 15
    assert srv.kpi() == {"ENTERPRISE": (1, Decimal("5.00"), Decimal("0.00"))}
    assert srv.latest(100) == (1, "ENTERPRISE", Decimal("5.00"), srv.base + 10)
    assert srv.latest(101) is None
    for name in (KPI, LATEST):
        status, as_of, _, _ = srv.meta(name)
        assert status == "OK" and as_of == srv.base + 15 and srv.checkpoints(name) == {srv.base + 15}
    srv.watermarks(customers=30)
    srv.cycle(kpi), srv.cycle(latest)
    assert srv.kpi() == {"LATE": (2, Decimal("12.00"), Decimal("0.00"))}
    assert srv.latest(100)[1] == srv.latest(101)[1] == "LATE"


def test_held_capture_holds_the_cutoff_and_reports_stale(srv):
    kpi = srv.projection()
    srv.cycle(kpi)
    srv.order(10, 100, 1, "5.00")
    srv.watermarks(orders=10)
    srv.conn.execute("UPDATE ctl_ingestion_watermarks SET state = 'GAP' WHERE capture_instance = 'public_payments'")
    srv.cycle(kpi)
    status, as_of, error, _ = srv.meta(KPI)
    assert status == "STALE" and "public_payments" in error and as_of == srv.base
    assert srv.kpi() == {}
    srv.conn.execute("UPDATE ctl_ingestion_watermarks SET state = 'OK', last_lsn = %s", (srv.base + 10,))
    srv.cycle(kpi)
    assert srv.meta(KPI)[:3] == ("OK", srv.base + 10, None)
    assert srv.kpi() == {"ENTERPRISE": (1, Decimal("5.00"), Decimal("0.00"))}


def _broken_groups_diff(monkeypatch, sql_text: str = "SELECT * FROM no_such_table") -> None:
    """The DuckDB step of every grouped projection fails (as a bad transform would)."""
    monkeypatch.setattr(DuckQueries, "groups_diff", lambda self: sql_text)


def test_transform_failure_sets_error_and_next_good_cycle_sets_ok(srv, monkeypatch):
    worker = ProjectionWorker(
        srv.projection(KPI), srv.settings, srv.settings.serving_dsn, threading.Event(), listen=False
    )
    other = ProjectionWorker(
        srv.projection(LATEST), srv.settings, srv.settings.serving_dsn, threading.Event(), listen=False
    )
    worker.cycle(), other.cycle()
    srv.order(10, 100, 1, "5.00")
    srv.watermarks(orders=10, customers=10, payments=10)
    _broken_groups_diff(monkeypatch)
    with pytest.raises(Exception, match="no_such_table") as info:
        worker.cycle()
    base.record_error(worker.conn(), KPI, str(info.value))
    status, as_of, error, _ = srv.meta(KPI)
    assert status == "ERROR" and "no_such_table" in error and as_of == srv.base
    assert srv.checkpoints(KPI) == {srv.base} and srv.kpi() == {}
    other.cycle()  # another projection goes on
    assert srv.meta(LATEST)[:2] == ("OK", srv.base + 10)
    monkeypatch.undo()
    worker.cycle()
    worker.close(), other.close()
    assert srv.meta(KPI)[:3] == ("OK", srv.base + 10, None)
    assert srv.kpi() == {"ENTERPRISE": (1, Decimal("5.00"), Decimal("0.00"))}


def test_worker_loop_records_error_then_recovers(edbs, pipeline, monkeypatch):
    settings = edbs.settings.replace(projection_interval_seconds=0.2)
    bootstrap(settings, demo=True).source.close()
    _broken_groups_diff(monkeypatch, "SELECT broken(")
    with pipeline(settings), psycopg.connect(settings.serving_dsn, autocommit=True) as conn:

        def meta() -> tuple:
            return conn.execute("SELECT status, last_error FROM ctl_projection_metadata").fetchone()

        wait_until(lambda: meta()[0] == "ERROR", what="metadata ERROR")
        assert "syntax error" in meta()[1].lower()
        monkeypatch.undo()
        wait_until(lambda: meta() == ("OK", None), what="metadata OK again")
        assert conn.execute(f"SELECT sum(orders_count) FROM {KPI}").fetchone()[0] == 5


def test_failure_at_the_last_statement_leaves_the_old_state(srv, monkeypatch):
    kpi = srv.projection()
    srv.cycle(kpi)
    before = srv.conn.execute(f"SELECT * FROM {KPI} ORDER BY 1, 2").fetchall()
    srv.order(10, 100, 1, "5.00")
    srv.payment(11, 100, 100, "2.50")
    srv.watermarks(orders=20, customers=20, payments=20)

    def boom(*_args):
        raise RuntimeError("killed before commit")

    monkeypatch.setattr(base, "_as_of_time", boom)  # runs after rows, state and checkpoints are written
    with pytest.raises(RuntimeError):
        srv.cycle(kpi)
    assert srv.conn.execute(f"SELECT * FROM {KPI} ORDER BY 1, 2").fetchall() == before
    assert srv.checkpoints(KPI) == {srv.base} and srv.meta(KPI)[1] == srv.base
    state = "pst_orders_kpi_by_minute_segment__public_orders"
    assert srv.conn.execute(f"SELECT count(*) FROM {state} WHERE order_id = 100").fetchone()[0] == 0
    monkeypatch.undo()
    srv.cycle(kpi)
    assert srv.kpi() == {"ENTERPRISE": (1, Decimal("5.00"), Decimal("2.50"))}
    assert srv.checkpoints(KPI) == {srv.base + 20} and srv.meta(KPI)[1] == srv.base + 20


@pytest.mark.parametrize("reader", [False, True], ids=["state-read-first", "state-read-on-reader"])
def test_late_and_out_of_order_changes(srv, reader, monkeypatch):
    """Payment before its order, an old minute updated late, an order deleted with its payment.

    With ``reader`` the state is read on a second connection while the cycle's own writes the
    new state; here the reads wait until that state is written. The reader must still see the
    state before the cycle, or an update cancels out (before = after) and these buckets keep
    their old values."""
    srv.cycle = functools.partial(srv.cycle, reader=reader)
    if reader:
        written = threading.Event()
        write_state, load = Layout.write_state, closure.Closure.load

        def write_then_signal(self, use, *, fresh):
            stmts = write_state(self, use, fresh=fresh)
            threading.Timer(0.2, written.set).start()  # the statements run right after being built
            return stmts

        def load_after_the_writes(self, conn, deltas):
            assert written.wait(10), "the cycle never wrote its new state"
            return load(self, conn, deltas)

        monkeypatch.setattr(Layout, "write_state", write_then_signal)
        monkeypatch.setattr(closure.Closure, "load", load_after_the_writes)
    kpi = srv.projection()
    srv.cycle(kpi)
    old = T0 - dt.timedelta(days=1)
    srv.payment(1, 500, 900, "3.00")  # order 900 does not exist yet
    srv.watermarks(orders=1, customers=1, payments=1)
    srv.cycle(kpi)
    assert srv.kpi() == {}
    srv.order(2, 900, 2, "10.00", created=old)  # the order arrives (customer 2: SMB)
    srv.watermarks(orders=2, customers=2, payments=2)
    srv.cycle(kpi)
    assert srv.kpi(old) == {"SMB": (1, Decimal("10.00"), Decimal("0.00"))}
    assert srv.kpi() == {"SMB": (0, Decimal("0.00"), Decimal("3.00"))}
    assert srv.payments_count() == {"SMB": 1}  # a payments-only bucket
    srv.order(3, 900, 2, None, op=4, created=old)  # amount set to NULL, a day later
    srv.customer(3, 2, "MOVED")
    srv.watermarks(orders=3, customers=3, payments=3)
    srv.cycle(kpi)
    assert srv.kpi(old) == {"MOVED": (1, Decimal("0.00"), Decimal("0.00"))}
    assert srv.kpi() == {"MOVED": (0, Decimal("0.00"), Decimal("3.00"))}
    srv.payment(4, 500, 900, None, op=1)
    srv.order(4, 900, None, None, op=1)
    srv.watermarks(orders=4, customers=4, payments=4)
    srv.cycle(kpi)
    assert srv.kpi(old) == {} and srv.kpi() == {}
    old_rows = f"SELECT count(*) FROM {KPI} WHERE minute_bucket < '2026-01-03'"
    assert srv.conn.execute(old_rows).fetchone()[0] == 0


def _order_100_applied(srv) -> base.Projection:
    kpi = srv.projection()
    srv.cycle(kpi)
    srv.order(10, 100, 1, "5.00")
    srv.watermarks(orders=10, customers=10, payments=10)
    srv.cycle(kpi, reader=True)
    srv.order(11, 100, 1, "8.00", op=4)
    srv.watermarks(orders=11, customers=11, payments=11)
    return kpi


def test_a_failed_state_read_on_the_reader_fails_the_cycle_and_the_next_one_applies(srv):
    kpi = _order_100_applied(srv)
    with base.open_connection(srv.settings.serving_dsn) as conn:
        reader = base.snapshot_connection(srv.settings.serving_dsn)
        reader.close()  # the reader's connection is gone (a server restart, a network cut)
        with pytest.raises(psycopg.OperationalError):
            base.run_cycle(conn, srv.duck, kpi, srv.settings, reader=reader)
        conn.rollback()
    assert srv.checkpoints(KPI) == {srv.base + 10}
    assert srv.kpi() == {"ENTERPRISE": (1, Decimal("5.00"), Decimal("0.00"))}
    srv.cycle(kpi, reader=True)
    assert srv.kpi() == {"ENTERPRISE": (1, Decimal("8.00"), Decimal("0.00"))}
    assert srv.checkpoints(KPI) == {srv.base + 11}


def test_a_failure_while_the_reader_reads_waits_for_the_reads_to_end(srv, monkeypatch):
    """The cycle's side fails while the reader is still reading: the error surfaces only once
    the reads have ended and the reader's snapshot is closed, so the reader is free for the
    next cycle (a worker reuses it)."""
    kpi = _order_100_applied(srv)
    reads_done = threading.Event()
    load = closure.Closure.load

    def slow(self, conn, deltas):
        time.sleep(0.5)
        try:
            return load(self, conn, deltas)
        finally:
            reads_done.set()

    def boom(*_args, **_kwargs):
        raise RuntimeError("write failed")

    monkeypatch.setattr(closure.Closure, "load", slow)
    monkeypatch.setattr(incremental, "write_arrow", boom)
    dsn = srv.settings.serving_dsn
    with base.open_connection(dsn) as conn, base.snapshot_connection(dsn) as reader:
        with pytest.raises(RuntimeError, match="write failed"):
            base.run_cycle(conn, srv.duck, kpi, srv.settings, reader=reader)
        assert reads_done.is_set()
        assert reader.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        conn.rollback()
        monkeypatch.undo()
        base.run_cycle(conn, srv.duck, kpi, srv.settings, reader=reader)
        conn.commit()
    assert srv.kpi() == {"ENTERPRISE": (1, Decimal("8.00"), Decimal("0.00"))}


def _corrupt_the_current_minute(srv, kpi) -> tuple[dt.datetime, list]:
    """Three orders in the current minute, applied; then three wrong buckets (a count off,
    one missing, one that should not exist). Returns the minute and the good rows."""
    now = srv.conn.execute("SELECT now()").fetchone()[0]
    for i in range(3):
        srv.order(1 + i, 700 + i, 1 + i, "4.00", created=now)
    srv.watermarks(orders=5, customers=5, payments=5)
    srv.cycle(kpi, self_check=True)
    assert srv.meta(KPI)[3] == 0
    good = srv.conn.execute(f"SELECT * FROM {KPI} ORDER BY 1, 2").fetchall()
    minute = "date_trunc('minute', %s::timestamptz)"
    srv.conn.execute(
        f"UPDATE {KPI} SET orders_count = orders_count + 5 WHERE segment = 'ENTERPRISE' AND minute_bucket = {minute}",
        (now,),
    )
    srv.conn.execute(f"DELETE FROM {KPI} WHERE segment = 'SMB' AND minute_bucket = {minute}", (now,))
    srv.conn.execute(
        f"INSERT INTO {KPI} (minute_bucket, segment, orders_count, orders_amount_sum, paid_amount_sum, "
        f"payments_count, __count, __s0, __s1, __s2, __s3) VALUES ({minute}, 'GHOST', 1, 1, 0, 0, 1, 1, 1, 0, 0)",
        (now,),
    )
    return now, good


def _suspects(srv, kpi) -> list:
    with base.snapshot_connection(srv.settings.serving_dsn) as conn:
        return kpi.find_suspects(conn, srv.settings)


def _rows(srv) -> list:
    return srv.conn.execute(f"SELECT * FROM {KPI} ORDER BY 1, 2").fetchall()


def test_self_check_restates_a_corrupted_projection(srv):
    kpi = srv.projection()
    now, good = _corrupt_the_current_minute(srv, kpi)
    srv.cycle(kpi, self_check=False)
    assert srv.meta(KPI)[3] == 0
    srv.cycle(kpi, self_check=True)
    assert srv.meta(KPI)[3] == 3
    assert _rows(srv) == good


def test_snapshot_check_finds_the_wrong_rows_without_the_cycle_lock(srv):
    """The worker's self-check: PostgreSQL runs the definition over the state on a snapshot,
    outside any cycle (a cycle holding the projection's lock does not stop it); only the
    rows found different are checked again, and restated, inside the next cycle."""
    kpi = srv.projection()
    now, good = _corrupt_the_current_minute(srv, kpi)
    with base.open_connection(srv.settings.serving_dsn) as holder:
        holder.execute("SELECT 1 FROM ctl_projection_metadata WHERE projection_name = %s FOR UPDATE", (KPI,))
        found: list = []
        checker = threading.Thread(target=lambda: found.append(_suspects(srv, kpi)))
        checker.start()
        checker.join(30)
        assert not checker.is_alive(), "the snapshot check waited for the cycle's lock"
        holder.rollback()
    (suspects,) = found
    minute = srv.conn.execute("SELECT date_trunc('minute', %s::timestamptz)", (now,)).fetchone()[0]
    assert sorted(suspects) == [(minute, "ENTERPRISE"), (minute, "GHOST"), (minute, "SMB")]
    srv.cycle(kpi, self_check=True, check_keys=suspects)
    assert srv.meta(KPI)[3] == 3
    assert _rows(srv) == good
    # Rows that are right by the time the cycle checks them (corrected meanwhile, say by a
    # rebuild) are left alone: the count of restated rows (a running total) stays.
    assert srv.cycle(kpi, self_check=True, check_keys=suspects).restated == 0
    assert srv.meta(KPI)[3] == 3
    assert _suspects(srv, kpi) == []


def test_self_check_restates_hidden_group_state_too(srv):
    """A bucket whose visible values are right but whose stored sum is wrong is found when
    that sum shows, and the restated group goes on from the right state."""
    kpi = srv.projection()
    srv.cycle(kpi)
    srv.order(10, 100, 1, "5.00")
    srv.watermarks(orders=10, customers=10, payments=10)
    srv.cycle(kpi)
    srv.conn.execute(
        f"UPDATE {KPI} SET __s1 = 99, orders_amount_sum = 99 WHERE segment = 'ENTERPRISE' "
        "AND minute_bucket = date_trunc('minute', %s::timestamptz)",
        (T0,),
    )
    assert len(_suspects(srv, kpi)) == 1
    assert srv.cycle(kpi, self_check=True).restated == 1
    srv.order(11, 101, 1, "1.00")
    srv.watermarks(orders=11, customers=11, payments=11)
    srv.cycle(kpi)
    assert srv.kpi() == {"ENTERPRISE": (2, Decimal("6.00"), Decimal("0.00"))}


@contextlib.contextmanager
def _worker(srv, projection: base.Projection, check_every: float):
    """A projection worker on its own thread, cycling every 0.1 s, self-check every ``check_every``;
    stopped on exit (the time it took to stop is in ``worker.stop_seconds``)."""
    stop = threading.Event()
    settings = srv.settings.replace(projection_self_check_seconds=check_every, projection_interval_seconds=0.1)
    worker = ProjectionWorker(projection, settings, settings.serving_dsn, stop, listen=False)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        yield worker
    finally:
        stopped = time.monotonic()
        stop.set()
        thread.join(30)
        worker.stop_seconds = time.monotonic() - stopped
    assert not thread.is_alive()


def test_worker_self_check_restates_while_cycles_go_on(srv):
    kpi = srv.projection()
    _, good = _corrupt_the_current_minute(srv, kpi)
    with _worker(srv, kpi, 0.2) as worker:
        wait_until(lambda: _rows(srv) == good, what="the corrupted rows restated")
        assert srv.meta(KPI)[3] == 3
        checks = worker.checks
        wait_until(lambda: worker.checks > checks, what="another self-check")  # at its cadence, still
        assert srv.meta(KPI)[3] == 3  # which finds nothing more to restate


def test_a_slow_self_check_is_paced_to_a_tenth_of_the_time(srv, monkeypatch):
    """Asked for every 0.1 s, a check that takes 0.3 s rests 9 x 0.3 s (CHECK_PACE) before the next one:
    it never takes more than a tenth of a core, however large the projection."""
    started: list[float] = []

    def slow(self, conn):
        started.append(time.monotonic())
        conn.execute("SELECT pg_sleep(0.3)")
        return []

    monkeypatch.setattr(SelfCheck, "suspects", slow)
    with _worker(srv, srv.projection(), 0.1):
        wait_until(lambda: len(started) >= 2, timeout=20, what="a second self-check")
    gaps = [b - a for a, b in zip(started, started[1:], strict=False)]
    assert gaps and min(gaps) >= 2.9, gaps  # 0.3 s of check, then at least 9 x 0.3 s of rest


def test_a_rejected_login_for_the_listener_does_not_stop_the_worker(srv):
    """While a password is rotated (or a role is missing) the LISTEN connection cannot log in:
    the worker relies on its interval instead of ending (it crashed the process before)."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(srv.settings.serving_dsn)
    params["user"] = "cdcflow_no_such_role"
    worker = ProjectionWorker(srv.projection(), srv.settings, make_conninfo(**params), threading.Event())
    try:
        assert worker._listen_conn() is None
        assert worker.wait_for_work(0.2) == "interval"
    finally:
        worker.close()


def _full_kpi(srv, tmp_path) -> base.Projection:
    """A projection kept by full recompute (no self-check, no state to read)."""
    (tmp_path / "order_count.sql").write_text("-- mode: full\nSELECT count(*) AS n FROM orders")
    settings = srv.settings.replace(projections_dir=str(tmp_path))
    return srv.projection("proj_order_count", settings)


def test_no_self_check_thread_for_a_projection_without_one(srv, tmp_path):
    with _worker(srv, _full_kpi(srv, tmp_path), 0.05) as worker:
        wait_until(lambda: worker.cycles >= 5, what="cycles")
        assert worker._checker is None and worker.checks == 0


@pytest.mark.parametrize("parallel", [True, False])
def test_parallel_reads_setting_decides_whether_the_worker_reads_on_a_second_connection(srv, parallel, tmp_path):
    settings = srv.settings.replace(projection_parallel_reads=parallel)
    kpi = ProjectionWorker(srv.projection(), settings, settings.serving_dsn, threading.Event(), listen=False)
    full = ProjectionWorker(_full_kpi(srv, tmp_path), settings, settings.serving_dsn, threading.Event(), listen=False)
    try:
        kpi.cycle(), full.cycle()
        srv.order(10, 100, 1, "5.00")
        srv.watermarks(orders=10, customers=10, payments=10)
        kpi.cycle(), full.cycle()
        assert (kpi._reader is not None) is parallel
        assert full._reader is None  # a projection that reads no state on it never opens one
        assert srv.kpi() == {"ENTERPRISE": (1, Decimal("5.00"), Decimal("0.00"))}
    finally:
        kpi.close(), full.close()


def test_stopping_the_worker_cancels_a_running_self_check(srv, monkeypatch):
    def sleeps(self, conn):
        conn.execute("SELECT pg_sleep(60)")
        return []

    monkeypatch.setattr(SelfCheck, "suspects", sleeps)
    with _worker(srv, srv.projection(), 0.1) as worker:
        wait_until(lambda: worker._check_conn is not None, what="the self-check to start")
        cycles = worker.cycles
        wait_until(lambda: worker.cycles >= cycles + 3, what="cycles while the self-check runs")  # not held up
    assert worker.stop_seconds < 10  # SIGTERM exits within seconds
    assert worker._checker is not None and not worker._checker.is_alive()


@pytest.mark.parametrize("signal", ["wake", "notify"])
def test_new_data_starts_a_cycle_before_the_interval(srv, signal):
    stop, wake = threading.Event(), threading.Event()
    settings = srv.settings.replace(projection_interval_seconds=60)
    worker = ProjectionWorker(srv.projection(), settings, settings.serving_dsn, stop, wake, listen=signal == "notify")
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        wait_until(lambda: worker.cycles >= 1, what="first cycle")
        time.sleep(0.3)  # the worker now waits for up to 60 s
        srv.order(10, 100, 1, "5.00")
        srv.watermarks(orders=10, customers=10, payments=10)
        started = time.monotonic()
        if signal == "wake":
            wake.set()
        else:
            srv.conn.execute("SELECT pg_notify('cdcflow_staged', 'source1')")
        wait_until(lambda: srv.meta(KPI)[1] == srv.base + 10, timeout=5, what="a cycle")
        assert time.monotonic() - started < 2
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


def test_rebuild_command_equals_incremental(srv):
    kpi, latest = srv.projection(KPI), srv.projection(LATEST)
    srv.cycle(kpi), srv.cycle(latest)
    srv.order(10, 100, 1, "5.00")
    srv.customer(11, 3, "CHANGED")
    srv.payment(12, 100, 100, "1.25")
    srv.watermarks(orders=20, customers=20, payments=20)
    srv.cycle(kpi), srv.cycle(latest)
    tables = (
        KPI,
        LATEST,
        "pst_orders_kpi_by_minute_segment__public_orders",
        "pst_orders_kpi_by_minute_segment__public_payments",
        "pst_orders_latest__public_customers",
    )
    before = {t: srv.conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() for t in tables}  # noqa: S608
    env = {
        "SOURCE_DSN": srv.settings.source_dsn,
        "SERVING_DSN": srv.settings.serving_dsn,
        "SOURCE_NAME": srv.settings.source_name,
        "ENABLE_PROJ_ORDERS_LATEST": "true",
    }
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli.main(["rebuild", "--all"], env=env) == 0
    assert f"rebuilt {KPI}" in out.getvalue()
    for t in tables:
        assert srv.conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() == before[t], t  # noqa: S608
    assert srv.meta(KPI)[:2] == ("OK", srv.base + 20)
    assert cli.main(["rebuild", "no_such_projection"], env=env) == 2
    with base.open_connection(srv.settings.serving_dsn) as conn:
        assert projections.resolve(srv.settings, conn, ["orders_latest"])[0].name == LATEST
