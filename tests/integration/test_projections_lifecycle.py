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
from cdcflow.projections import base, orders_kpi
from cdcflow.projections.orders_kpi import OrdersKpi
from cdcflow.projections.orders_latest import OrdersLatest
from cdcflow.projections.worker import ProjectionWorker
from cdcflow.serving import schema
from tests.conftest import wait_until

T0 = dt.datetime(2026, 1, 2, 3, 4, 30, tzinfo=dt.UTC)


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
        check_minutes: list | None = None,
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
                check_minutes=check_minutes,
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
    srv.cycle(OrdersKpi()), srv.cycle(OrdersLatest())
    srv.order(10, 100, 1, "5.00")  # customer 1 is ENTERPRISE in the demo seed
    srv.customer(20, 1, "LATE")  # beyond the customers watermark
    srv.order(25, 101, 1, "7.00")  # beyond the cutoff (orders watermark is ahead)
    srv.watermarks(orders=30, customers=15, payments=30)
    kpi, latest = srv.cycle(OrdersKpi()), srv.cycle(OrdersLatest())
    assert kpi.cutoff == latest.cutoff == srv.base + 15
    assert srv.kpi() == {"ENTERPRISE": (1, Decimal("5.00"), Decimal("0.00"))}
    assert srv.latest(100) == (1, "ENTERPRISE", Decimal("5.00"), srv.base + 10)
    assert srv.latest(101) is None
    for name in (OrdersKpi.name, OrdersLatest.name):
        status, as_of, _, _ = srv.meta(name)
        assert status == "OK" and as_of == srv.base + 15 and srv.checkpoints(name) == {srv.base + 15}
    srv.watermarks(customers=30)
    srv.cycle(OrdersKpi()), srv.cycle(OrdersLatest())
    assert srv.kpi() == {"LATE": (2, Decimal("12.00"), Decimal("0.00"))}
    assert srv.latest(100)[1] == srv.latest(101)[1] == "LATE"


def test_held_capture_holds_the_cutoff_and_reports_stale(srv):
    srv.cycle(OrdersKpi())
    srv.order(10, 100, 1, "5.00")
    srv.watermarks(orders=10)
    srv.conn.execute("UPDATE ctl_ingestion_watermarks SET state = 'GAP' WHERE capture_instance = 'public_payments'")
    srv.cycle(OrdersKpi())
    status, as_of, error, _ = srv.meta(OrdersKpi.name)
    assert status == "STALE" and "public_payments" in error and as_of == srv.base
    assert srv.kpi() == {}
    srv.conn.execute("UPDATE ctl_ingestion_watermarks SET state = 'OK', last_lsn = %s", (srv.base + 10,))
    srv.cycle(OrdersKpi())
    assert srv.meta(OrdersKpi.name)[:3] == ("OK", srv.base + 10, None)
    assert srv.kpi() == {"ENTERPRISE": (1, Decimal("5.00"), Decimal("0.00"))}


def test_transform_failure_sets_error_and_next_good_cycle_sets_ok(srv, monkeypatch):
    worker = ProjectionWorker(OrdersKpi(), srv.settings, srv.settings.serving_dsn, threading.Event(), listen=False)
    other = ProjectionWorker(OrdersLatest(), srv.settings, srv.settings.serving_dsn, threading.Event(), listen=False)
    worker.cycle(), other.cycle()
    srv.order(10, 100, 1, "5.00")
    srv.watermarks(orders=10, customers=10, payments=10)
    good = orders_kpi.transform
    monkeypatch.setattr(
        orders_kpi, "transform", lambda name: "SELECT * FROM no_such_table" if name == "bucket_diff" else good(name)
    )
    with pytest.raises(Exception, match="no_such_table") as info:
        worker.cycle()
    base.record_error(worker.conn(), worker.projection, str(info.value))
    status, as_of, error, _ = srv.meta(OrdersKpi.name)
    assert status == "ERROR" and "no_such_table" in error and as_of == srv.base
    assert srv.checkpoints(OrdersKpi.name) == {srv.base} and srv.kpi() == {}
    other.cycle()  # another projection goes on
    assert srv.meta(OrdersLatest.name)[:2] == ("OK", srv.base + 10)
    monkeypatch.setattr(orders_kpi, "transform", good)
    worker.cycle()
    worker.close(), other.close()
    assert srv.meta(OrdersKpi.name)[:3] == ("OK", srv.base + 10, None)
    assert srv.kpi() == {"ENTERPRISE": (1, Decimal("5.00"), Decimal("0.00"))}


def test_worker_loop_records_error_then_recovers(edbs, pipeline, monkeypatch):
    settings = edbs.settings.replace(projection_interval_seconds=0.2)
    bootstrap(settings, demo=True).source.close()
    good = orders_kpi.transform
    monkeypatch.setattr(orders_kpi, "transform", lambda name: "SELECT broken(" if name == "bucket_diff" else good(name))
    with pipeline(settings), psycopg.connect(settings.serving_dsn, autocommit=True) as conn:

        def meta() -> tuple:
            return conn.execute("SELECT status, last_error FROM ctl_projection_metadata").fetchone()

        wait_until(lambda: meta()[0] == "ERROR", what="metadata ERROR")
        assert "syntax error" in meta()[1].lower()
        monkeypatch.setattr(orders_kpi, "transform", good)
        wait_until(lambda: meta() == ("OK", None), what="metadata OK again")
        assert conn.execute("SELECT sum(orders_count) FROM proj_orders_kpi_by_minute_segment").fetchone()[0] == 5


def test_failure_at_the_last_statement_leaves_the_old_state(srv, monkeypatch):
    srv.cycle(OrdersKpi())
    before = srv.conn.execute("SELECT * FROM proj_orders_kpi_by_minute_segment ORDER BY 1, 2").fetchall()
    srv.order(10, 100, 1, "5.00")
    srv.payment(11, 100, 100, "2.50")
    srv.watermarks(orders=20, customers=20, payments=20)

    def boom(*_args):
        raise RuntimeError("killed before commit")

    monkeypatch.setattr(base, "_as_of_time", boom)  # runs after rows, state and checkpoints are written
    with pytest.raises(RuntimeError):
        srv.cycle(OrdersKpi())
    assert srv.conn.execute("SELECT * FROM proj_orders_kpi_by_minute_segment ORDER BY 1, 2").fetchall() == before
    assert srv.checkpoints(OrdersKpi.name) == {srv.base} and srv.meta(OrdersKpi.name)[1] == srv.base
    assert srv.conn.execute("SELECT count(*) FROM pst_kpi_orders WHERE order_id = 100").fetchone()[0] == 0
    monkeypatch.undo()
    srv.cycle(OrdersKpi())
    assert srv.kpi() == {"ENTERPRISE": (1, Decimal("5.00"), Decimal("2.50"))}
    assert srv.checkpoints(OrdersKpi.name) == {srv.base + 20} and srv.meta(OrdersKpi.name)[1] == srv.base + 20


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
        query, read_state = orders_kpi._q, OrdersKpi._state

        def q(name, **identifiers):
            if name == "upsert_state":
                threading.Timer(0.2, written.set).start()  # it runs right after being built
            return query(name, **identifiers)

        def state_after_the_writes(self, conn, *args):
            assert written.wait(10), "the cycle never wrote its new state"
            return read_state(self, conn, *args)

        monkeypatch.setattr(orders_kpi, "_q", q)
        monkeypatch.setattr(OrdersKpi, "_state", state_after_the_writes)
    srv.cycle(OrdersKpi())
    old = T0 - dt.timedelta(days=1)
    srv.payment(1, 500, 900, "3.00")  # order 900 does not exist yet
    srv.watermarks(orders=1, customers=1, payments=1)
    srv.cycle(OrdersKpi())
    assert srv.kpi() == {}
    srv.order(2, 900, 2, "10.00", created=old)  # the order arrives (customer 2: SMB)
    srv.watermarks(orders=2, customers=2, payments=2)
    srv.cycle(OrdersKpi())
    assert srv.kpi(old) == {"SMB": (1, Decimal("10.00"), Decimal("0.00"))}
    assert srv.kpi() == {"SMB": (0, Decimal("0.00"), Decimal("3.00"))}
    assert srv.payments_count() == {"SMB": 1}  # keeps the payments-only bucket alive
    srv.order(3, 900, 2, None, op=4, created=old)  # amount set to NULL, a day later
    srv.customer(3, 2, "MOVED")
    srv.watermarks(orders=3, customers=3, payments=3)
    srv.cycle(OrdersKpi())
    assert srv.kpi(old) == {"MOVED": (1, Decimal("0.00"), Decimal("0.00"))}
    assert srv.kpi() == {"MOVED": (0, Decimal("0.00"), Decimal("3.00"))}
    srv.payment(4, 500, 900, None, op=1)
    srv.order(4, 900, None, None, op=1)
    srv.watermarks(orders=4, customers=4, payments=4)
    srv.cycle(OrdersKpi())
    assert srv.kpi(old) == {} and srv.kpi() == {}
    old_rows = "SELECT count(*) FROM proj_orders_kpi_by_minute_segment WHERE minute_bucket < '2026-01-03'"
    assert srv.conn.execute(old_rows).fetchone()[0] == 0


def _order_100_applied(srv) -> None:
    srv.cycle(OrdersKpi())
    srv.order(10, 100, 1, "5.00")
    srv.watermarks(orders=10, customers=10, payments=10)
    srv.cycle(OrdersKpi(), reader=True)
    srv.order(11, 100, 1, "8.00", op=4)
    srv.watermarks(orders=11, customers=11, payments=11)


def test_a_failed_state_read_on_the_reader_fails_the_cycle_and_the_next_one_applies(srv):
    _order_100_applied(srv)
    with base.open_connection(srv.settings.serving_dsn) as conn:
        reader = base.snapshot_connection(srv.settings.serving_dsn)
        reader.close()  # the reader's connection is gone (a server restart, a network cut)
        with pytest.raises(psycopg.OperationalError):
            base.run_cycle(conn, srv.duck, OrdersKpi(), srv.settings, reader=reader)
        conn.rollback()
    assert srv.checkpoints(OrdersKpi.name) == {srv.base + 10}
    assert srv.kpi() == {"ENTERPRISE": (1, Decimal("5.00"), Decimal("0.00"))}
    srv.cycle(OrdersKpi(), reader=True)
    assert srv.kpi() == {"ENTERPRISE": (1, Decimal("8.00"), Decimal("0.00"))}
    assert srv.checkpoints(OrdersKpi.name) == {srv.base + 11}


def test_a_failure_while_the_reader_reads_waits_for_the_reads_to_end(srv, monkeypatch):
    """The cycle's side fails while the reader is still reading: the error surfaces only once
    the reads have ended and the reader's snapshot is closed, so the reader is free for the
    next cycle (a worker reuses it)."""
    _order_100_applied(srv)
    reads_done = threading.Event()
    slow_state = OrdersKpi._state

    def slow(self, conn, *args):
        time.sleep(0.5)
        try:
            return slow_state(self, conn, *args)
        finally:
            reads_done.set()

    def boom(*_args, **_kwargs):
        raise RuntimeError("write failed")

    monkeypatch.setattr(OrdersKpi, "_state", slow)
    monkeypatch.setattr(orders_kpi, "write_arrow", boom)
    dsn = srv.settings.serving_dsn
    with base.open_connection(dsn) as conn, base.snapshot_connection(dsn) as reader:
        with pytest.raises(RuntimeError, match="write failed"):
            base.run_cycle(conn, srv.duck, OrdersKpi(), srv.settings, reader=reader)
        assert reads_done.is_set()
        assert reader.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        conn.rollback()
        monkeypatch.undo()
        base.run_cycle(conn, srv.duck, OrdersKpi(), srv.settings, reader=reader)
        conn.commit()
    assert srv.kpi() == {"ENTERPRISE": (1, Decimal("8.00"), Decimal("0.00"))}


def _corrupt_the_current_minute(srv) -> tuple[dt.datetime, list]:
    """Three orders in the current minute, applied; then three wrong buckets in the recompute
    window (a count off, one missing, one that should not exist) and one outside it.
    Returns the minute and the good rows."""
    now = srv.conn.execute("SELECT now()").fetchone()[0]
    for i in range(3):
        srv.order(1 + i, 700 + i, 1 + i, "4.00", created=now)
    srv.watermarks(orders=5, customers=5, payments=5)
    srv.cycle(OrdersKpi(), self_check=True)
    assert srv.meta(OrdersKpi.name)[3] == 0
    good = srv.conn.execute("SELECT * FROM proj_orders_kpi_by_minute_segment ORDER BY 1, 2").fetchall()
    srv.conn.execute(
        "UPDATE proj_orders_kpi_by_minute_segment SET orders_count = orders_count + 5 "
        "WHERE segment = 'ENTERPRISE' AND minute_bucket = date_trunc('minute', %s::timestamptz)",
        (now,),
    )
    srv.conn.execute(
        "DELETE FROM proj_orders_kpi_by_minute_segment WHERE segment = 'SMB' "
        "AND minute_bucket = date_trunc('minute', %s::timestamptz)",
        (now,),
    )
    srv.conn.execute(
        "INSERT INTO proj_orders_kpi_by_minute_segment "
        "VALUES (date_trunc('minute', %s::timestamptz), 'GHOST', 1, 1, 0, now())",
        (now,),
    )
    srv.conn.execute("INSERT INTO proj_orders_kpi_by_minute_segment VALUES ('2020-01-01', 'OUTSIDE', 1, 1, 0, now())")
    return now, good


def _suspects(srv) -> list:
    with base.snapshot_connection(srv.settings.serving_dsn) as conn:
        return OrdersKpi().window_suspects(conn, srv.settings)


def _fixed(srv) -> list:
    return srv.conn.execute(
        "SELECT * FROM proj_orders_kpi_by_minute_segment WHERE segment <> 'OUTSIDE' ORDER BY 1, 2"
    ).fetchall()


def test_self_check_restates_a_corrupted_window(srv):
    _, good = _corrupt_the_current_minute(srv)
    srv.cycle(OrdersKpi(), self_check=False)
    assert srv.meta(OrdersKpi.name)[3] == 0
    srv.cycle(OrdersKpi(), self_check=True)
    assert srv.meta(OrdersKpi.name)[3] == 3
    assert [r[:5] for r in _fixed(srv)] == [r[:5] for r in good]


def test_snapshot_check_finds_the_wrong_minutes_without_the_cycle_lock(srv):
    """The worker's self-check: the window is recomputed on a snapshot, outside any cycle
    (a cycle holding the projection's lock does not stop it), and only the minutes found
    different are checked again, and restated, inside the next cycle."""
    now, good = _corrupt_the_current_minute(srv)
    with base.open_connection(srv.settings.serving_dsn) as holder:
        holder.execute(
            "SELECT 1 FROM ctl_projection_metadata WHERE projection_name = %s FOR UPDATE", (OrdersKpi.name,)
        )  # a cycle in progress
        found: list = []
        checker = threading.Thread(target=lambda: found.append(_suspects(srv)))
        checker.start()
        checker.join(30)
        assert not checker.is_alive(), "the snapshot check waited for the cycle's lock"
        holder.rollback()
    (suspects,) = found
    minute = srv.conn.execute("SELECT date_trunc('minute', %s::timestamptz)", (now,)).fetchone()[0]
    assert suspects == [minute]  # not the bucket outside the window, and nothing twice
    srv.cycle(OrdersKpi(), self_check=True, check_minutes=suspects)
    assert srv.meta(OrdersKpi.name)[3] == 3
    assert [r[:5] for r in _fixed(srv)] == [r[:5] for r in good]
    # A minute that is right by the time the cycle checks it (corrected meanwhile, say by a
    # rebuild) is left alone: the count of restated buckets (a running total) stays.
    assert srv.cycle(OrdersKpi(), self_check=True, check_minutes=suspects).restated == 0
    assert srv.meta(OrdersKpi.name)[3] == 3
    assert _suspects(srv) == []


def test_snapshot_check_goes_slice_by_slice_and_a_pause_can_stop_it(srv):
    """The window is checked a minute at a time with a pause in between (where the worker
    lets the cycles run and a stop end the check); a payment whose order is in the slice
    before is still counted (the previous slice's orders are kept)."""
    srv.cycle(OrdersKpi())
    now = srv.conn.execute("SELECT date_trunc('minute', now()) + interval '2 minutes'").fetchone()[0]
    srv.order(1, 800, 1, "6.00", created=now - dt.timedelta(minutes=1))  # the slice before the payment's
    srv.payment(2, 900, 800, "2.50")
    srv.conn.execute("UPDATE stg_cdc_payments SET paid_at = %s WHERE payment_id = 900", (now,))
    srv.watermarks(orders=5, customers=5, payments=5)
    srv.cycle(OrdersKpi())
    pauses: list[float] = []
    with base.snapshot_connection(srv.settings.serving_dsn) as conn:
        assert OrdersKpi().window_suspects(conn, srv.settings, pause=lambda took: pauses.append(took) or True) == []
    window = srv.settings.projection_recompute_window_minutes
    assert len(pauses) == window  # window + 1 slices of a minute, a pause between each two
    srv.conn.execute(
        "UPDATE proj_orders_kpi_by_minute_segment SET paid_amount_sum = 9 WHERE minute_bucket = %s", (now,)
    )
    with base.snapshot_connection(srv.settings.serving_dsn) as conn:
        assert OrdersKpi().window_suspects(conn, srv.settings, pause=lambda took: True) == [now]
        stopped: list[float] = []
        assert OrdersKpi().window_suspects(conn, srv.settings, pause=lambda took: stopped.append(took) and False) == []
    assert len(stopped) == 1  # stopped after the first slice: the wrong minute was not reached


def test_self_check_counts_payments_in_the_window_for_orders_made_before_it(srv):
    """A payment in the window whose order was made before it: the check reads that order
    by key (the window's own orders it already has). Without it the payment would drop out
    of the recomputed truth and a right bucket would look wrong."""
    srv.cycle(OrdersKpi())
    # In the window, but not in the current minute, where the demo's own orders are.
    now = srv.conn.execute("SELECT now() + interval '2 minutes'").fetchone()[0]
    srv.order(1, 800, 1, "6.00", created=now - dt.timedelta(days=1))  # ENTERPRISE, before the window
    srv.order(2, 801, 2, "4.00", created=now)  # SMB, in the window
    srv.payment(3, 900, 800, "2.50")
    srv.payment(4, 901, 801, "1.50")
    srv.conn.execute("UPDATE stg_cdc_payments SET paid_at = %s WHERE payment_id IN (900, 901)", (now,))
    srv.watermarks(orders=5, customers=5, payments=5)
    srv.cycle(OrdersKpi())
    assert srv.kpi(now) == {
        "ENTERPRISE": (0, Decimal("0.00"), Decimal("2.50")),
        "SMB": (1, Decimal("4.00"), Decimal("1.50")),
    }
    assert _suspects(srv) == []
    assert srv.cycle(OrdersKpi(), self_check=True).restated == 0
    srv.conn.execute(
        "UPDATE proj_orders_kpi_by_minute_segment SET paid_amount_sum = 9 WHERE segment = 'ENTERPRISE'"
        " AND minute_bucket = date_trunc('minute', %s::timestamptz)",
        (now,),
    )
    minute = srv.conn.execute("SELECT date_trunc('minute', %s::timestamptz)", (now,)).fetchone()[0]
    assert _suspects(srv) == [minute]
    assert srv.cycle(OrdersKpi(), self_check=True, check_minutes=[minute]).restated == 1
    assert srv.kpi(now)["ENTERPRISE"] == (0, Decimal("0.00"), Decimal("2.50"))


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
    _, good = _corrupt_the_current_minute(srv)
    with _worker(srv, OrdersKpi(), 0.2) as worker:
        wait_until(lambda: [r[:5] for r in _fixed(srv)] == [r[:5] for r in good], what="the window restated")
        assert srv.meta(OrdersKpi.name)[3] == 3
        checks = worker.checks
        wait_until(lambda: worker.checks > checks, what="another self-check")  # at its cadence, still
        assert srv.meta(OrdersKpi.name)[3] == 3  # which finds nothing more to restate


class _SlowCheck(OrdersKpi):
    """A self-check that reads for 60 s (a huge window)."""

    def window_suspects(self, conn, settings, pause=None):
        conn.execute("SELECT pg_sleep(60)")
        return []


class _CheckTaking(OrdersKpi):
    """A self-check that takes ``seconds`` (a busy window), counting its runs."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.started = seconds, []

    def window_suspects(self, conn, settings, pause=None):
        self.started.append(time.monotonic())
        conn.execute("SELECT pg_sleep(%s)", (self.seconds,))
        return []


def test_a_slow_self_check_is_paced_to_a_tenth_of_the_time(srv):
    """Asked for every 0.1 s, a check that takes 0.3 s rests 9 x 0.3 s (CHECK_PACE) before the next one:
    it never takes more than a tenth of a core, however busy the window."""
    projection = _CheckTaking(0.3)
    with _worker(srv, projection, 0.1):
        wait_until(lambda: len(projection.started) >= 2, timeout=20, what="a second self-check")
    gaps = [b - a for a, b in zip(projection.started, projection.started[1:], strict=False)]
    assert gaps and min(gaps) >= 2.9, gaps  # 0.3 s of check, then at least 9 x 0.3 s of rest


def test_a_rejected_login_for_the_listener_does_not_stop_the_worker(srv):
    """While a password is rotated (or a role is missing) the LISTEN connection cannot log in:
    the worker relies on its interval instead of ending (it crashed the process before)."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(srv.settings.serving_dsn)
    params["user"] = "cdcflow_no_such_role"
    worker = ProjectionWorker(OrdersKpi(), srv.settings, make_conninfo(**params), threading.Event())
    try:
        assert worker._listen_conn() is None
        assert worker.wait_for_work(0.2) == "interval"
    finally:
        worker.close()


def test_no_self_check_thread_for_a_projection_without_one(srv):
    with _worker(srv, OrdersLatest(), 0.05) as worker:
        wait_until(lambda: worker.cycles >= 5, what="cycles")
        assert worker._checker is None and worker.checks == 0


@pytest.mark.parametrize("parallel", [True, False])
def test_parallel_reads_setting_decides_whether_the_worker_reads_on_a_second_connection(srv, parallel):
    settings = srv.settings.replace(projection_parallel_reads=parallel)
    kpi = ProjectionWorker(OrdersKpi(), settings, settings.serving_dsn, threading.Event(), listen=False)
    latest = ProjectionWorker(OrdersLatest(), settings, settings.serving_dsn, threading.Event(), listen=False)
    try:
        kpi.cycle(), latest.cycle()
        srv.order(10, 100, 1, "5.00")
        srv.watermarks(orders=10, customers=10, payments=10)
        kpi.cycle(), latest.cycle()
        assert (kpi._reader is not None) is parallel
        assert latest._reader is None  # a projection that reads no state on it never opens one
        assert srv.kpi() == {"ENTERPRISE": (1, Decimal("5.00"), Decimal("0.00"))}
    finally:
        kpi.close(), latest.close()


def test_stopping_the_worker_cancels_a_running_self_check(srv):
    with _worker(srv, _SlowCheck(), 0.1) as worker:
        wait_until(lambda: worker._check_conn is not None, what="the self-check to start")
        cycles = worker.cycles
        wait_until(lambda: worker.cycles >= cycles + 3, what="cycles while the self-check runs")  # not held up
    assert worker.stop_seconds < 10  # SIGTERM exits within seconds
    assert worker._checker is not None and not worker._checker.is_alive()


@pytest.mark.parametrize("signal", ["wake", "notify"])
def test_new_data_starts_a_cycle_before_the_interval(srv, signal):
    stop, wake = threading.Event(), threading.Event()
    settings = srv.settings.replace(projection_interval_seconds=60)
    worker = ProjectionWorker(OrdersKpi(), settings, settings.serving_dsn, stop, wake, listen=signal == "notify")
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
        wait_until(lambda: srv.meta(OrdersKpi.name)[1] == srv.base + 10, timeout=5, what="a cycle")
        assert time.monotonic() - started < 2
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


def test_rebuild_command_equals_incremental(srv):
    srv.order(10, 100, 1, "5.00")
    srv.customer(11, 3, "CHANGED")
    srv.payment(12, 100, 100, "1.25")
    srv.watermarks(orders=20, customers=20, payments=20)
    srv.cycle(OrdersKpi()), srv.cycle(OrdersLatest())
    tables = ("proj_orders_kpi_by_minute_segment", "proj_orders_latest", "pst_kpi_orders", "pst_kpi_payments")
    before = {t: srv.conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() for t in tables}  # noqa: S608
    env = {
        "SOURCE_DSN": srv.settings.source_dsn,
        "SERVING_DSN": srv.settings.serving_dsn,
        "SOURCE_NAME": srv.settings.source_name,
    }
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli.main(["rebuild", "--all"], env=env) == 0
    assert "rebuilt proj_orders_kpi_by_minute_segment" in out.getvalue()
    for t in tables:
        rows = srv.conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()  # noqa: S608
        if t.startswith("proj_orders_kpi"):
            rows, before[t] = [r[:5] + r[6:] for r in rows], [r[:5] + r[6:] for r in before[t]]  # not updated_at
        assert rows == before[t], t
    assert srv.meta(OrdersKpi.name)[:2] == ("OK", srv.base + 20)
    assert cli.main(["rebuild", "no_such_projection"], env=env) == 2
    assert projections.resolve(["orders_latest"])[0].name == "proj_orders_latest"


def test_an_existing_deployment_moves_its_bucket_counts_into_the_projection(srv):
    """A serving database of the previous release kept the payments counts in pst_kpi_buckets."""
    srv.order(10, 100, 1, "5.00")
    srv.payment(11, 100, 100, "2.50")
    srv.payment(12, 101, 100, "1.00")
    srv.watermarks(orders=20, customers=20, payments=20)
    srv.cycle(OrdersKpi())
    rows = "SELECT minute_bucket, segment, orders_count, orders_amount_sum, paid_amount_sum, payments_count "
    rows += "FROM proj_orders_kpi_by_minute_segment ORDER BY 1, 2"
    good = srv.conn.execute(rows).fetchall()
    assert srv.payments_count() == {"ENTERPRISE": 2}
    # Back to the previous release's layout, as its bootstrap left it.
    srv.conn.execute(
        "CREATE TABLE pst_kpi_buckets (minute_bucket timestamptz NOT NULL, segment text NOT NULL,"
        " orders_count bigint NOT NULL, orders_amount_sum numeric(18,2) NOT NULL,"
        " paid_amount_sum numeric(18,2) NOT NULL, payments_count bigint NOT NULL,"
        " PRIMARY KEY (minute_bucket, segment))"
    )
    srv.conn.execute(f"INSERT INTO pst_kpi_buckets {rows}")  # noqa: S608
    srv.conn.execute("ALTER TABLE proj_orders_kpi_by_minute_segment DROP COLUMN payments_count")
    srv.conn.execute("DELETE FROM ctl_schema_version WHERE folder = 'serving'")
    with psycopg.connect(srv.settings.serving_dsn) as conn:
        schema.run_scripts(conn, "serving")
        conn.commit()
    assert srv.conn.execute(rows).fetchall() == good
    assert srv.conn.execute("SELECT to_regclass('pst_kpi_buckets')").fetchone()[0] is None
    srv.conn.execute("DELETE FROM ctl_schema_version WHERE folder = 'serving'")
    with psycopg.connect(srv.settings.serving_dsn) as conn:
        schema.run_scripts(conn, "serving")  # again: the scripts are idempotent
        conn.commit()
    assert srv.conn.execute(rows).fetchall() == good
    # The migrated counts are the ones cycles go on from: the last payment leaves, the bucket stays.
    srv.payment(21, 100, 100, "2.50", op=1)
    srv.watermarks(orders=22, customers=22, payments=22)
    srv.cycle(OrdersKpi())
    assert srv.payments_count() == {"ENTERPRISE": 1}
    assert srv.kpi() == {"ENTERPRISE": (1, Decimal("5.00"), Decimal("1.00"))}
