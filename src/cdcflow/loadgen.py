"""``cdcflow loadgen``: write customers, orders, order updates and payments to a source.

A :class:`Profile` sets the base rate (orders per second), the duration, how many order
updates, payments, deletes, new customers and segment changes come with each order
(as ratios), and periodic bursts. :func:`run_load` drives it from one or more threads,
each with its own connection: every tick a thread writes the orders that are due as one
transaction of a few multi-row statements (``INSERT ... SELECT FROM unnest(...)``,
``UPDATE ... WHERE id = ANY(...)``), so 10,000 orders/s is ~10 commits/s, not 10,000.

Counts are taken from the statements' row counts, so :class:`LoadStats` is exactly what
the source tables (and ``pg_stat_user_tables``) saw. The run is bounded by the
profile's duration and by ``max_changes``; setting ``stop`` ends it after the current
transaction. Threads own disjoint rows (orders they inserted, customers with
``customer_id % threads == n``), so they never wait on each other's row locks.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg

from cdcflow import db
from cdcflow.errors import CdcflowError, ConfigError
from cdcflow.loadprofiles import PROFILES, Profile, get_profile

__all__ = ["PROFILES", "TABLES", "LoadStats", "Profile", "format_progress", "format_summary", "get_profile", "run_load"]

log = logging.getLogger(__name__)

TABLES = ("customers", "orders", "payments")
SEGMENTS = ("ENTERPRISE", "SMB", "CONSUMER")
#: Orders per transaction at most (a thread that is behind writes several in a row).
MAX_BATCH_ORDERS = 2000
#: A thread writes at least this often when throttled (seconds).
TICK_SECONDS = 0.05
#: Recently inserted orders a thread keeps for updates, payments and deletes.
POOL_SIZE = 50_000

# -- SQL (values are parameters; the tables are the demo schema's fixed names) ---------

SQL_INSERT_CUSTOMERS = """
INSERT INTO customers (segment, is_active, updated_at)
SELECT s, true, now() FROM unnest(%(segments)s::text[]) AS s
RETURNING customer_id"""

SQL_CHANGE_SEGMENTS = """
UPDATE customers AS c SET segment = d.segment, updated_at = now()
FROM unnest(%(ids)s::bigint[], %(segments)s::text[]) AS d(id, segment)
WHERE c.customer_id = d.id"""

SQL_INSERT_ORDERS = """
INSERT INTO orders (customer_id, amount, status, created_at, updated_at)
SELECT d.customer_id, d.amount, 'NEW', now(), now()
FROM unnest(%(customers)s::bigint[], %(amounts)s::numeric[]) AS d(customer_id, amount)
RETURNING order_id"""

SQL_UPDATE_ORDERS = """
UPDATE orders
SET status = CASE status WHEN 'NEW' THEN 'PAID' WHEN 'PAID' THEN 'SHIPPED' ELSE 'CLOSED' END,
    amount = amount + 1,
    updated_at = now()
WHERE order_id = ANY(%(ids)s::bigint[])"""

SQL_INSERT_PAYMENTS = """
INSERT INTO payments (order_id, paid_amount, paid_at)
SELECT order_id, amount, now() FROM orders WHERE order_id = ANY(%(ids)s::bigint[])"""

SQL_DELETE_ORDERS = "DELETE FROM orders WHERE order_id = ANY(%(ids)s::bigint[])"

SQL_CUSTOMER_IDS = "SELECT customer_id FROM customers ORDER BY customer_id DESC LIMIT 100000"

SQL_CHECK_SCHEMA = "SELECT to_regclass('customers'), to_regclass('orders'), to_regclass('payments')"


@dataclass
class LoadStats:
    """What a run wrote, from the statements' row counts."""

    profile: str
    inserts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    updates: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    deletes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    transactions: int = 0
    elapsed: float = 0.0
    target_orders: float = 0.0  # what the profile asked for by now
    stopped_by: str = ""  # duration, max_changes, stop, error

    @property
    def changes(self) -> int:
        return sum(self.inserts.values()) + sum(self.updates.values()) + sum(self.deletes.values())

    @property
    def orders(self) -> int:
        return self.inserts["orders"]

    @property
    def changes_per_second(self) -> float:
        return self.changes / self.elapsed if self.elapsed > 0 else 0.0

    def add(self, other: LoadStats) -> None:
        pairs = ((self.inserts, other.inserts), (self.updates, other.updates), (self.deletes, other.deletes))
        for mine, theirs in pairs:
            for k, v in theirs.items():
                mine[k] += v
        self.transactions += other.transactions

    def as_dict(self) -> dict:
        return {
            "profile": self.profile,
            "changes": self.changes,
            "changes_per_second": round(self.changes_per_second, 1),
            "orders_per_second": round(self.orders / self.elapsed, 1) if self.elapsed > 0 else 0.0,
            "target_orders": round(self.target_orders),
            "elapsed_seconds": round(self.elapsed, 3),
            "transactions": self.transactions,
            "inserts": dict(self.inserts),
            "updates": dict(self.updates),
            "deletes": dict(self.deletes),
            "stopped_by": self.stopped_by,
        }


class _Carry:
    """Turns a fractional ratio into whole counts without drift (0.45 -> 0,1,0,1,...)."""

    def __init__(self) -> None:
        self.rest = 0.0

    def take(self, amount: float) -> int:
        self.rest += amount
        n = math.floor(self.rest)
        self.rest -= n
        return n


class _Writer:
    """One thread's connection and the rows it owns."""

    def __init__(self, dsn: str, profile: Profile, n: int, seed: int) -> None:
        self.profile = profile
        self.n = n
        self.rng = random.Random(seed * 1000 + n)
        self.conn = db.connect(dsn, "source", autocommit=False)
        self.stats = LoadStats(profile.name)
        self.pool: list[int] = []  # order ids this writer inserted and did not delete
        self.customers: list[int] = [r[0] for r in self.conn.execute(SQL_CUSTOMER_IDS).fetchall()]
        self.conn.rollback()
        # Segment changes only touch customers this writer owns (no lock waits between threads).
        self.owned = [c for c in self.customers if c % profile.connections == n]
        self.carry = {k: _Carry() for k in ("upd", "pay", "del", "cust", "seg")}

    def plan(self, orders: int, budget: int | None) -> dict[str, int]:
        """How many rows of each kind go with ``orders`` orders, trimmed to ``budget`` changes."""
        p = self.profile
        n = {
            "orders": orders,
            "cust": self.carry["cust"].take(orders * p.new_customer_ratio),
            "seg": self.carry["seg"].take(orders * p.segment_change_ratio),
            "upd": self.carry["upd"].take(orders * p.update_ratio),
            "pay": self.carry["pay"].take(orders * p.payment_ratio),
            "del": self.carry["del"].take(orders * p.delete_ratio),
        }
        if not self.customers:
            n["cust"] = max(n["cust"], 10)
        if budget is not None:
            for kind in ("del", "seg", "cust", "pay", "upd", "orders"):
                over = sum(n.values()) - budget
                if over <= 0:
                    break
                n[kind] -= min(n[kind], over)
        return n

    def batch(self, orders: int, budget: int | None = None) -> None:
        """Write ``orders`` orders and what comes with them, as one transaction."""
        p, rng, st, conn = self.profile, self.rng, self.stats, self.conn
        n = self.plan(orders, budget)
        orders, n_cust, n_seg, n_upd, n_pay, n_del = n["orders"], n["cust"], n["seg"], n["upd"], n["pay"], n["del"]
        with conn.cursor() as cur:
            if n_cust:
                segs = [rng.choice(SEGMENTS) for _ in range(n_cust)]
                cur.execute(SQL_INSERT_CUSTOMERS, {"segments": segs})
                new = [r[0] for r in cur.fetchall()]
                st.inserts["customers"] += len(new)
                self.customers.extend(new)
                self.owned.extend(c for c in new if c % p.connections == self.n)
            if n_seg and self.owned:
                ids = rng.sample(self.owned, min(n_seg, len(self.owned)))
                cur.execute(SQL_CHANGE_SEGMENTS, {"ids": ids, "segments": [rng.choice(SEGMENTS) for _ in ids]})
                st.updates["customers"] += cur.rowcount
            if orders:
                custs = rng.choices(self.customers or [None], k=orders)
                amounts = [round(rng.uniform(5, 500), 2) for _ in range(orders)]
                cur.execute(SQL_INSERT_ORDERS, {"customers": custs, "amounts": amounts})
                new_orders = [r[0] for r in cur.fetchall()]
                st.inserts["orders"] += len(new_orders)
                self._remember(new_orders)
            if n_upd and self.pool:
                ids = self._sample(n_upd)
                cur.execute(SQL_UPDATE_ORDERS, {"ids": ids})
                st.updates["orders"] += cur.rowcount
            if n_pay and self.pool:
                ids = self._sample(n_pay)
                cur.execute(SQL_INSERT_PAYMENTS, {"ids": ids})
                st.inserts["payments"] += cur.rowcount
            if n_del and len(self.pool) > n_del:
                ids = self._take(n_del)
                cur.execute(SQL_DELETE_ORDERS, {"ids": ids})
                st.deletes["orders"] += cur.rowcount
        conn.commit()
        st.transactions += 1

    def _remember(self, ids: list[int]) -> None:
        pool = self.pool
        room = POOL_SIZE - len(pool)
        pool.extend(ids[:room])
        for i in ids[room:]:
            pool[self.rng.randrange(POOL_SIZE)] = i  # keep a bounded, mostly recent sample

    def _sample(self, k: int) -> list[int]:
        """Distinct ids, biased to recent orders (the newest half of the pool)."""
        pool = self.pool
        recent = pool[len(pool) // 2 :] if len(pool) >= 2 * k else pool
        return self.rng.sample(recent, min(k, len(recent)))

    def _take(self, k: int) -> list[int]:
        """Remove ``k`` random ids from the pool (they are about to be deleted)."""
        pool, out = self.pool, []
        for _ in range(k):
            j = self.rng.randrange(len(pool))
            pool[j], pool[-1] = pool[-1], pool[j]
            out.append(pool.pop())
        return out

    def close(self) -> None:
        try:
            self.conn.rollback()
            self.conn.close()
        except psycopg.Error:
            pass


class _Shared:
    """Budget shared by the threads: stop flag and the change count bound."""

    def __init__(self, max_changes: int | None) -> None:
        self.lock = threading.Lock()
        self.max_changes = max_changes
        self.reserved = 0
        self.error: BaseException | None = None

    def reserve(self, wanted_orders: int, per_order: float) -> tuple[int, int | None]:
        """(orders, change budget) this thread may write now without passing ``max_changes``."""
        if self.max_changes is None:
            return wanted_orders, None
        with self.lock:
            left = self.max_changes - self.reserved
            n = min(wanted_orders, max(0, math.floor(left / per_order)))
            if n == 0 and left > 0:
                n = 1
            budget = min(left, math.ceil(n * per_order) + 8)
            self.reserved += budget
            return n, budget

    def release(self, unused: int) -> None:
        """Give back what a batch reserved but did not write."""
        if self.max_changes is not None and unused > 0:
            with self.lock:
                self.reserved -= unused


def _thread_main(w: _Writer, shared: _Shared, start: float, stop: threading.Event, rate_share: float) -> None:
    p = w.profile
    per_order = p.changes_per_order
    deadline = start + p.duration
    try:
        while not stop.is_set():
            now = time.monotonic()
            if now >= deadline:
                break
            if p.rate > 0:
                due = math.floor(p.orders_due(now - start) * rate_share) - w.stats.orders
                if due <= 0:
                    stop.wait(min(TICK_SECONDS, deadline - now))
                    continue
            else:
                due = MAX_BATCH_ORDERS // 2
            n, budget = shared.reserve(min(due, MAX_BATCH_ORDERS), per_order)
            if n <= 0:
                w.stats.stopped_by = "max_changes"
                break
            before = w.stats.changes
            w.batch(n, budget)
            if budget is not None:
                shared.release(budget - (w.stats.changes - before))
    except BaseException as exc:  # reported by run_load, after the other threads stop
        with shared.lock:
            shared.error = shared.error or exc
        stop.set()


def run_load(
    dsn: str,
    profile: Profile | str,
    stop: threading.Event | None = None,
    progress: Callable[[LoadStats], None] | None = None,
    *,
    max_changes: int | None = None,
    progress_interval: float = 2.0,
    seed: int = 1,
) -> LoadStats:
    """Run ``profile`` against the demo schema at ``dsn``; return what was written.

    Stops at the profile's duration, or after exactly ``max_changes`` (the last
    transactions are sized to fit), or when ``stop`` is set (after the current transaction).
    ``progress`` is called with a running total every ``progress_interval`` seconds.
    """
    p = get_profile(profile) if isinstance(profile, str) else profile
    p.validate()
    stop = stop or threading.Event()
    inner = threading.Event()  # stops the threads; ``stop`` is the caller's
    _check_schema(dsn)
    writers: list[_Writer] = []
    try:
        for n in range(p.connections):
            writers.append(_Writer(dsn, p, n, seed))
    except BaseException:
        for w in writers:
            w.close()
        raise
    shared = _Shared(max_changes)
    start = time.monotonic()
    threads = [
        threading.Thread(
            target=_thread_main, args=(w, shared, start, inner, 1 / p.connections), name=f"loadgen-{w.n}", daemon=True
        )
        for w in writers
    ]
    for t in threads:
        t.start()
    next_report = start + progress_interval
    try:
        while any(t.is_alive() for t in threads) and not stop.is_set():
            now = time.monotonic()
            if progress is not None and now >= next_report:
                progress(_total(p, writers, now - start))
                next_report += progress_interval
            stop.wait(min(0.1, max(0.0, next_report - now)))
    finally:
        inner.set()
        for t in threads:
            t.join(30)
        for w in writers:
            w.close()
    total = _total(p, writers, time.monotonic() - start)
    if shared.error is not None:
        exc = shared.error
        if isinstance(exc, CdcflowError):
            raise exc
        if isinstance(exc, psycopg.Error):
            raise db.wrap_db_error(f"loadgen writing to the source ({total.changes} changes made)", exc) from exc
        raise exc
    if stop.is_set():
        total.stopped_by = "stop"
    elif any(w.stats.stopped_by == "max_changes" for w in writers):
        total.stopped_by = "max_changes"
    else:
        total.stopped_by = "duration"
    return total


def _total(p: Profile, writers: list[_Writer], elapsed: float) -> LoadStats:
    total = LoadStats(p.name)
    for w in writers:
        total.add(w.stats)
    total.elapsed = elapsed
    total.target_orders = p.orders_due(min(elapsed, p.duration)) if p.rate > 0 else 0.0
    return total


def _check_schema(dsn: str) -> None:
    with db.connect(dsn, "source", autocommit=True) as conn:
        try:
            row = conn.execute(SQL_CHECK_SCHEMA).fetchone()
        except psycopg.Error as exc:
            raise db.wrap_db_error("checking the demo schema", exc) from None
    missing = [t for t, reg in zip(TABLES, row or (), strict=True) if reg is None]
    if missing:
        raise ConfigError(
            f"the source has no table {missing[0]!r}: loadgen writes the demo schema "
            "(customers, orders, payments); create it with 'cdcflow bootstrap --demo'"
        )


def format_progress(st: LoadStats, last: LoadStats | None = None) -> str:
    """One progress line: totals, average rate, and the rate since the previous line."""
    line = f"loadgen {st.profile}: {st.elapsed:6.1f}s  {st.changes:>10,d} changes  {st.changes_per_second:>9,.0f}/s avg"
    if last is not None and st.elapsed > last.elapsed:
        line += f"  {(st.changes - last.changes) / (st.elapsed - last.elapsed):>9,.0f}/s now"
    if st.target_orders:
        line += f"  orders {st.orders:,d}/{st.target_orders:,.0f} due"
    return line


def format_summary(st: LoadStats) -> str:
    d = st.as_dict()
    per = ", ".join(f"{t} +{st.inserts[t]}/~{st.updates[t]}/-{st.deletes[t]}" for t in TABLES)
    return (
        f"loadgen {st.profile}: {d['changes']} changes in {d['elapsed_seconds']:.1f}s = "
        f"{d['changes_per_second']:.0f} changes/s ({d['orders_per_second']:.0f} orders/s, "
        f"{st.transactions} transactions; stopped by {st.stopped_by})\n  {per}"
    )
