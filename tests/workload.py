"""A seeded random workload on the demo schema that records every change it makes.

The record is the test oracle for staging: built from what the source returned to the
workload (``RETURNING``), never from cdcflow's own code.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field

import psycopg

TABLES = {
    "customers": ("customer_id", "customer_id, segment, is_active, updated_at"),
    "orders": ("order_id", "order_id, customer_id, amount, status, created_at, updated_at"),
    "payments": ("payment_id", "payment_id, order_id, paid_amount, paid_at"),
}
SEGMENTS = ("ENTERPRISE", "SMB", "CONSUMER", "PUBLIC")


@dataclass
class Recorder:
    # (table, key) -> [(op, row text or None for deletes)]
    changes: dict[tuple[str, int], list[tuple[int, str | None]]] = field(default_factory=lambda: defaultdict(list))
    transactions: int = 0
    count: int = 0

    def record(self, table: str, op: int, rows: list[tuple[int, str]]) -> None:
        for key, text in rows:
            self.changes[(table, key)].append((op, None if op == 1 else text))
            self.count += 1


def _returning(table: str) -> str:
    key, cols = TABLES[table]
    return f"RETURNING {key}, ROW({cols})::text"


class Workload:
    def __init__(self, conn: psycopg.Connection, seed: int, recorder: Recorder | None = None) -> None:
        self.conn = conn
        self.rng = random.Random(seed)
        self.rec = recorder or Recorder()

    def _ids(self, table: str) -> list[int]:
        key = TABLES[table][0]
        return [r[0] for r in self.conn.execute(f"SELECT {key} FROM {table}").fetchall()]

    def _exec(self, table: str, op: int, query: str, params: tuple = ()) -> None:
        rows = self.conn.execute(query + " " + _returning(table), params).fetchall()
        self.rec.record(table, op, rows)

    def one_statement(self) -> None:
        rng = self.rng
        r = rng.random()
        if r < 0.15:
            self._exec("customers", 2, "INSERT INTO customers (segment) VALUES (%s)", (rng.choice(SEGMENTS),))
        elif r < 0.45:
            custs = self._ids("customers")
            cust = rng.choice(custs) if custs and rng.random() < 0.9 else None
            self._exec(
                "orders",
                2,
                "INSERT INTO orders (customer_id, amount, status, created_at) "
                "VALUES (%s, %s, 'NEW', now() - make_interval(mins => %s))",
                (cust, round(rng.uniform(1, 999), 2) if rng.random() < 0.95 else None, rng.randint(0, 3000)),
            )
        elif r < 0.65:
            orders = self._ids("orders")
            if orders:
                self._exec(
                    "orders",
                    4,
                    "UPDATE orders SET status = %s, amount = %s, updated_at = now() WHERE order_id = %s",
                    (rng.choice(("PAID", "SHIPPED", "CANCELLED")), round(rng.uniform(1, 999), 2), rng.choice(orders)),
                )
        elif r < 0.78:
            orders = self._ids("orders")
            oid = rng.choice(orders) if orders and rng.random() < 0.9 else 10_000_000 + rng.randint(0, 1000)
            self._exec(
                "payments",
                2,
                "INSERT INTO payments (order_id, paid_amount) VALUES (%s, %s)",
                (oid, round(rng.uniform(1, 999), 2)),
            )
        elif r < 0.85:
            custs = self._ids("customers")
            if custs:
                self._exec(
                    "customers",
                    4,
                    "UPDATE customers SET segment = %s, updated_at = now() WHERE customer_id = %s",
                    (rng.choice(SEGMENTS), rng.choice(custs)),
                )
        elif r < 0.93:
            orders = self._ids("orders")
            if orders:
                oid = rng.choice(orders)
                self._exec("payments", 1, "DELETE FROM payments WHERE order_id = %s", (oid,))
                self._exec("orders", 1, "DELETE FROM orders WHERE order_id = %s", (oid,))
        else:
            pays = self._ids("payments")
            if pays:
                self._exec("payments", 1, "DELETE FROM payments WHERE payment_id = %s", (rng.choice(pays),))

    def transaction(self, statements: int | None = None) -> None:
        with self.conn.transaction():
            for _ in range(statements or self.rng.randint(1, 4)):
                self.one_statement()
        self.rec.transactions += 1

    def bulk_transaction(self, rows: int) -> None:
        """One transaction larger than a batch: many inserts and updates in one commit."""
        with self.conn.transaction():
            self._exec(
                "orders",
                2,
                "INSERT INTO orders (customer_id, amount, status) SELECT NULL, g, 'BULK' FROM generate_series(1, %s) g",
                (rows,),
            )
            self._exec("orders", 4, "UPDATE orders SET status = 'BULK2' WHERE status = 'BULK'")
        self.rec.transactions += 1


def staged_changes(serving: psycopg.Connection) -> dict[tuple[str, int], list[tuple[int, str | None]]]:
    """Staging read back in the same shape as Recorder.changes (snapshot rows excluded)."""
    out: dict[tuple[str, int], list[tuple[int, str | None]]] = defaultdict(list)
    for table, (key, cols) in TABLES.items():
        rows = serving.execute(
            f"SELECT {key}, __op, ROW({cols})::text FROM stg_cdc_{table} WHERE __op <> 5 ORDER BY __lsn, __seqval"
        ).fetchall()
        for k, op, text in rows:
            out[(table, k)].append((op, None if op == 1 else text))
    return out


def assert_staging_matches(serving: psycopg.Connection, rec: Recorder) -> None:
    staged = staged_changes(serving)
    expected = {k: v for k, v in rec.changes.items()}
    missing = [k for k in expected if k not in staged]
    extra = [k for k in staged if k not in expected]
    assert not missing, f"keys whose changes never reached staging: {missing[:5]}"
    assert not extra, f"staged keys the workload never changed: {extra[:5]}"
    for k, seq in expected.items():
        assert staged[k] == seq, f"{k}: staged {staged[k]} != made {seq}"
    total = sum(len(v) for v in staged.values())
    assert total == rec.count
