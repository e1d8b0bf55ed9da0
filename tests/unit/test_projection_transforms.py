"""The KPI and latest-order transforms as pure functions: hand-made Arrow in, DuckDB out."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pyarrow as pa

from cdcflow import sqlfiles
from cdcflow.projections import base, orders_kpi, orders_latest
from cdcflow.projections.arrowio import key_difference, key_set, keys_literal

M1 = dt.datetime(2026, 1, 1, 10, 1, tzinfo=dt.UTC)
M2 = dt.datetime(2026, 1, 1, 10, 2, tzinfo=dt.UTC)
OLD = dt.datetime(2025, 12, 31, 8, 0, tzinfo=dt.UTC)


def t(schema: pa.Schema, *rows: tuple) -> pa.Table:
    return pa.Table.from_pylist([dict(zip(schema.names, r, strict=True)) for r in rows], schema=schema)


def kpi_diff(d_c=(), d_o=(), d_p=(), s_c=(), s_o=(), s_p=()) -> dict[tuple, tuple]:
    duck = base.open_duckdb()
    inputs = {
        "d_customers": t(orders_kpi.D_CUSTOMERS, *d_c),
        "d_orders": t(orders_kpi.D_ORDERS, *d_o),
        "d_payments": t(orders_kpi.D_PAYMENTS, *d_p),
        "s_customers": t(orders_kpi.S_CUSTOMERS, *s_c),
        "s_orders": t(orders_kpi.S_ORDERS, *s_o),
        "s_payments": t(orders_kpi.S_PAYMENTS, *s_p),
    }
    for name, table in inputs.items():
        duck.register(name, table)
    rows = duck.sql(orders_kpi.transform("bucket_diff")).fetchall()
    duck.close()
    return {(r[0].astimezone(dt.UTC), r[1]): tuple(r[2:]) for r in rows}


def test_new_order_and_payment_count_in_their_minutes():
    diff = kpi_diff(
        s_c=[(1, "SMB")],
        d_o=[(10, False, 1, Decimal("12.50"), M1.replace(second=42))],
        d_p=[(100, False, 10, Decimal("4.00"), M2.replace(second=5))],
    )
    assert diff == {(M1, "SMB"): (1, Decimal("12.50"), 0, 0), (M2, "SMB"): (0, 0, Decimal("4.00"), 1)}


def test_payment_stored_before_its_order_counts_when_the_order_arrives():
    diff = kpi_diff(
        s_c=[(1, "SMB")],
        s_p=[(100, 10, Decimal("4.00"), M2)],
        d_o=[(10, False, 1, Decimal("1.00"), M1)],
    )
    assert diff == {(M1, "SMB"): (1, Decimal("1.00"), 0, 0), (M2, "SMB"): (0, 0, Decimal("4.00"), 1)}


def test_segment_change_moves_old_orders_and_their_payments():
    diff = kpi_diff(
        s_c=[(1, "SMB")],
        s_o=[(10, 1, Decimal("10.00"), OLD)],
        s_p=[(100, 10, Decimal("3.00"), M2)],
        d_c=[(1, False, "ENTERPRISE")],
    )
    assert diff == {
        (OLD, "SMB"): (-1, Decimal("-10.00"), 0, 0),
        (OLD, "ENTERPRISE"): (1, Decimal("10.00"), 0, 0),
        (M2, "SMB"): (0, 0, Decimal("-3.00"), -1),
        (M2, "ENTERPRISE"): (0, 0, Decimal("3.00"), 1),
    }


def test_deleted_customer_makes_orders_unknown_and_null_amount_counts_zero():
    diff = kpi_diff(
        s_c=[(1, "SMB")],
        s_o=[(10, 1, Decimal("10.00"), OLD)],
        d_c=[(1, True, None)],
        d_o=[(10, False, 1, None, OLD)],
    )
    assert diff == {(OLD, "SMB"): (-1, Decimal("-10.00"), 0, 0), (OLD, "UNKNOWN"): (1, Decimal("0.00"), 0, 0)}


def test_order_deleted_with_its_payments_removes_every_contribution():
    diff = kpi_diff(
        s_c=[(1, "SMB")],
        s_o=[(10, 1, Decimal("10.00"), OLD)],
        s_p=[(100, 10, Decimal("3.00"), M2)],
        d_o=[(10, True, None, None, None)],
        d_p=[(100, True, None, None, None)],
    )
    assert diff == {(OLD, "SMB"): (-1, Decimal("-10.00"), 0, 0), (M2, "SMB"): (0, 0, Decimal("-3.00"), -1)}


def test_unaffected_rows_cancel_out():
    rows = dict(s_c=[(1, "SMB")], s_o=[(10, 1, Decimal("10.00"), OLD)], s_p=[(100, 10, Decimal("3.00"), M2)])
    assert kpi_diff(**rows) == {}
    assert kpi_diff(d_o=[(10, False, 1, Decimal("10.00"), OLD)], **rows) == {}


def test_latest_rows_take_the_segment_after_the_delta():
    duck = base.open_duckdb()
    d_o = t(
        orders_latest.D_ORDERS,
        (10, False, 1, Decimal("5.00"), "NEW", M1, M1, Decimal(77)),
        (11, False, 2, None, "NEW", M1, M1, Decimal(78)),
        (12, True, None, None, None, None, None, Decimal(79)),
    )
    d_c = t(orders_latest.D_CUSTOMERS, (1, False, "ENTERPRISE"), (2, True, None))
    s_c = t(orders_latest.S_CUSTOMERS, (1, "SMB"), (2, "SMB"))
    for name, table in {"d_orders": d_o, "d_customers": d_c, "s_customers": s_c}.items():
        duck.register(name, table)
    rows = duck.sql(orders_latest.transform("rows") + " ORDER BY 1").fetchall()
    assert [(r[0], r[2], r[3], int(r[7])) for r in rows] == [
        (10, "ENTERPRISE", Decimal("5.00"), 77),
        (11, None, None, 78),
    ]
    assert sorted(duck.sql(orders_latest.transform("customers")).fetchall()) == [
        (1, False, "ENTERPRISE"),
        (2, True, None),
    ]
    duck.close()


def test_every_transform_and_query_block_is_present():
    names = set(sqlfiles.queries(orders_kpi.DUCK))
    assert {"bucket_diff", "state_orders", "state_payments", "state_customers", "deleted_keys"} <= names
    assert {"delta_orders", "apply_diff", "upsert_state", "delete_state", "restate"} <= set(
        sqlfiles.queries(orders_kpi.PG)
    )
    assert {"rows", "deleted_orders", "customers"} <= set(sqlfiles.queries(orders_latest.DUCK))


def test_key_sets_and_their_literals():
    ids = key_set(pa.chunked_array([[3, 1, None], [3, 2]]), pa.array([2, 7]))
    assert sorted(ids.to_pylist()) == [1, 2, 3, 7]  # distinct, NULLs dropped
    assert sorted(map(int, keys_literal(ids).strip("{}").split(","))) == [1, 2, 3, 7]
    assert keys_literal(key_set(pa.chunked_array([], type=pa.int64()))) == "{}"
    assert keys_literal(key_set(pa.array([-5, 9_000_000_000_000]))) in ("{-5,9000000000000}", "{9000000000000,-5}")
    assert sorted(key_difference(ids, pa.chunked_array([[2, None], [3, 99]])).to_pylist()) == [1, 7]
