"""Oracle checks: staging's latest state per key must equal the source tables."""

from __future__ import annotations

import psycopg

from tests.workload import TABLES


def source_rows(src: psycopg.Connection, table: str) -> set[str]:
    key, cols = TABLES[table]
    return {r[0] for r in src.execute(f"SELECT ROW({cols})::text FROM {table}").fetchall()}


def staged_latest_rows(serving: psycopg.Connection, table: str) -> set[str]:
    key, cols = TABLES[table]
    rows = serving.execute(
        f"SELECT ROW({cols})::text, __op FROM (SELECT DISTINCT ON ({key}) * FROM stg_cdc_{table} "
        f"WHERE __op <> 3 ORDER BY {key}, __lsn DESC, __seqval DESC) t"
    ).fetchall()
    return {text for text, op in rows if op != 1}


def assert_latest_state_equals_source(
    src: psycopg.Connection, serving: psycopg.Connection, tables: tuple[str, ...] = TABLES
) -> None:
    for table in tables:
        want, got = source_rows(src, table), staged_latest_rows(serving, table)
        assert got == want, f"{table}: missing {sorted(want - got)[:3]}, extra {sorted(got - want)[:3]}"


# -- projections: the same questions asked of the source tables directly -----------

KPI_ORACLE = """
WITH o AS (
    SELECT o.order_id, o.amount, date_trunc('minute', o.created_at) AS m, coalesce(c.segment, 'UNKNOWN') AS seg
    FROM orders o LEFT JOIN customers c ON c.customer_id = o.customer_id
), ord AS (
    SELECT m, seg, count(*) AS n, coalesce(sum(amount), 0) AS amt FROM o GROUP BY m, seg
), pay AS (
    SELECT date_trunc('minute', p.paid_at) AS m, o.seg, coalesce(sum(p.paid_amount), 0) AS paid, count(*) AS n
    FROM payments p JOIN o ON o.order_id = p.order_id GROUP BY 1, 2
)
SELECT coalesce(ord.m, pay.m), coalesce(ord.seg, pay.seg), coalesce(ord.n, 0), coalesce(ord.amt, 0),
       coalesce(pay.paid, 0), coalesce(pay.n, 0)
FROM ord FULL JOIN pay ON ord.m = pay.m AND ord.seg = pay.seg
"""

KPI_PROJECTION = """
SELECT minute_bucket, segment, orders_count, orders_amount_sum, paid_amount_sum, payments_count
FROM proj_orders_kpi_by_minute_segment ORDER BY 1, 2
"""

LATEST_ORACLE = """
SELECT o.order_id, o.customer_id, c.segment, o.amount, o.status, o.created_at, o.updated_at
FROM orders o LEFT JOIN customers c ON c.customer_id = o.customer_id ORDER BY o.order_id
"""

LATEST_PROJECTION = """
SELECT order_id, customer_id, segment, amount, status, created_at, updated_at FROM proj_orders_latest ORDER BY 1
"""


def _rows(conn: psycopg.Connection, query: str) -> set[tuple]:
    conn.execute("SET TIME ZONE 'UTC'")
    return set(conn.execute(query).fetchall())


def assert_projections_equal_source(
    src: psycopg.Connection, serving: psycopg.Connection, *, kpi: bool = True, latest: bool = True
) -> None:
    pairs = []
    if kpi:
        pairs.append(("proj_orders_kpi_by_minute_segment", KPI_ORACLE, KPI_PROJECTION))
    if latest:
        pairs.append(("proj_orders_latest", LATEST_ORACLE, LATEST_PROJECTION))
    for name, oracle, projection in pairs:
        want, got = _rows(src, oracle), _rows(serving, projection)
        assert want, f"{name}: the source has nothing to compare"
        assert got == want, f"{name}: missing {sorted(want - got)[:3]}, extra {sorted(got - want)[:3]}"


# -- any projection: its table against its definition run on the source --------------


def _normal(value: object) -> object:
    """Values as compared: numerics by value (3.50 == 3.5), floats to 12 significant digits."""
    from decimal import Decimal

    if isinstance(value, float):
        return float(f"{value:.12g}")
    if isinstance(value, Decimal):
        return value.normalize() if value.is_finite() else value
    return value


def projection_rows(serving: psycopg.Connection, table: str) -> list[tuple]:
    """The user's columns of a projection table (not cdcflow's __ ones), as a sorted multiset."""
    serving.execute("SET TIME ZONE 'UTC'")
    cols = [
        r[0]
        for r in serving.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped "
            "AND left(attname, 2) <> '__' ORDER BY attnum",
            (table,),
        )
    ]
    rows = serving.execute(f"SELECT {', '.join(cols)} FROM {table}").fetchall()
    return sorted((tuple(_normal(v) for v in r) for r in rows), key=repr)


def query_rows(source: psycopg.Connection, query: str) -> list[tuple]:
    """The definition's query run on the source, as a sorted multiset."""
    source.execute("SET TIME ZONE 'UTC'")
    return sorted((tuple(_normal(v) for v in r) for r in source.execute(query).fetchall()), key=repr)


def assert_projection_matches(source: psycopg.Connection, serving: psycopg.Connection, table: str, query: str) -> int:
    want, got = query_rows(source, query), projection_rows(serving, table)
    w, g = set(want), set(got)
    assert got == want, (
        f"{table}: {len(want)} rows expected, {len(got)} held; missing {sorted(w - g, key=repr)[:3]}, "
        f"unexpected {sorted(g - w, key=repr)[:3]}"
    )
    return len(want)
