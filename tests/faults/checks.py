"""End-of-run checks: staging against the load's record and the source, projections
against oracle queries on the source (written here, independently of cdcflow's SQL)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import psycopg

from tests.oracle import KPI_PROJECTION as PROJ_KPI
from tests.oracle import LATEST_ORACLE as ORACLE_LATEST
from tests.oracle import LATEST_PROJECTION as PROJ_LATEST
from tests.oracle import assert_latest_state_equals_source, source_rows
from tests.workload import TABLES, Recorder, assert_staging_matches, staged_changes

# KPI per (minute of created_at, customer's current segment): live orders; plus the paid
# amounts (and the number) of live payments of live orders per (minute of paid_at, that
# order's segment).
# A bucket exists when at least one order or one payment contributes to it.
ORACLE_KPI = """
WITH live_orders AS (
    SELECT o.order_id, o.created_at, o.amount, coalesce(c.segment, 'UNKNOWN') AS segment
    FROM orders o LEFT JOIN customers c ON c.customer_id = o.customer_id
),
by_order AS (
    SELECT date_trunc('minute', created_at) AS minute_bucket, segment,
           count(*) AS orders_count, coalesce(sum(amount), 0) AS orders_amount_sum
    FROM live_orders GROUP BY 1, 2
),
by_payment AS (
    SELECT date_trunc('minute', p.paid_at) AS minute_bucket, lo.segment,
           coalesce(sum(p.paid_amount), 0) AS paid_amount_sum, count(*) AS payments_count
    FROM payments p JOIN live_orders lo ON lo.order_id = p.order_id GROUP BY 1, 2
)
SELECT coalesce(a.minute_bucket, b.minute_bucket) AS minute_bucket, coalesce(a.segment, b.segment) AS segment,
       coalesce(a.orders_count, 0)::bigint, coalesce(a.orders_amount_sum, 0)::numeric(18,2),
       coalesce(b.paid_amount_sum, 0)::numeric(18,2), coalesce(b.payments_count, 0)::bigint
FROM by_order a FULL JOIN by_payment b ON a.minute_bucket = b.minute_bucket AND a.segment = b.segment
ORDER BY 1, 2
"""
LATEST_LSN_MISMATCH = """
SELECT count(*) FROM proj_orders_latest p
WHERE p.__source_lsn IS DISTINCT FROM
      (SELECT max(s.__lsn) FROM stg_cdc_orders s WHERE s.order_id = p.order_id AND s.__op <> 3)
"""
PROJECTIONS = ("proj_orders_kpi_by_minute_segment", "proj_orders_latest")


@dataclass
class CheckResult:
    changes_expected: int = 0
    changes_staged: int = 0
    keys_compared: int = 0
    lost: int = 0
    doubled: int = 0
    source_rows_compared: dict[str, int] = field(default_factory=dict)
    kpi_rows_compared: int = 0
    latest_rows_compared: int = 0
    metadata: dict[str, str] = field(default_factory=dict)
    projections_checked: bool = False
    failures: list[str] = field(default_factory=list)


def source_lsn(source_dsn: str) -> int:
    with psycopg.connect(source_dsn, autocommit=True) as src:
        return int(src.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()[0])


def wait_caught_up(source_dsn: str, serving_dsn: str, source_name: str, timeout: float) -> float:
    """Seconds until every capture's watermark covers the source's WAL position now."""
    started = time.monotonic()
    target = source_lsn(source_dsn)
    deadline = started + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(serving_dsn, autocommit=True, connect_timeout=3) as conn:
                while time.monotonic() < deadline:
                    rows = conn.execute(
                        "SELECT min(last_lsn), count(*) FILTER (WHERE state NOT IN ('OK', 'INIT')) "
                        "FROM ctl_ingestion_watermarks WHERE source_name = %s",
                        (source_name,),
                    ).fetchone()
                    last = rows
                    if rows[0] is not None and int(rows[0]) + 1 >= target:
                        return time.monotonic() - started
                    time.sleep(0.1)
        except psycopg.OperationalError:
            time.sleep(0.2)
    raise AssertionError(
        f"ingestion did not catch up within {timeout:.0f}s: target {target}, (min watermark, captures not OK) = {last}"
    )


def wait_projections(serving_dsn: str, source_name: str, timeout: float) -> float:
    """Seconds until every projection is OK and as of the lowest ingestion watermark."""
    started = time.monotonic()
    deadline = started + timeout
    last: list = []
    with psycopg.connect(serving_dsn, autocommit=True) as conn:
        target = conn.execute(
            "SELECT min(last_lsn) FROM ctl_ingestion_watermarks WHERE source_name = %s", (source_name,)
        ).fetchone()[0]
        while time.monotonic() < deadline:
            last = conn.execute(
                "SELECT projection_name, status, as_of_lsn, last_error FROM ctl_projection_metadata ORDER BY 1"
            ).fetchall()
            names = {r[0] for r in last}
            if names >= set(PROJECTIONS) and all(s == "OK" and a is not None and a >= target for _, s, a, _ in last):
                return time.monotonic() - started
            time.sleep(0.1)
    raise AssertionError(f"projections not OK as of lsn {target} within {timeout:.0f}s: {last}")


def _count_lost_doubled(serving: psycopg.Connection, rec: Recorder) -> tuple[int, int, int]:
    """Per key: changes made but not staged (lost) and staged beyond what was made (doubled)."""
    staged = staged_changes(serving)
    lost = doubled = 0
    for key in set(staged) | set(rec.changes):
        want, got = rec.changes.get(key, []), staged.get(key, [])
        common = 0
        remaining = list(want)
        for change in got:
            if change in remaining:
                remaining.remove(change)
                common += 1
        lost += len(want) - common
        doubled += len(got) - common
    return sum(len(v) for v in staged.values()), lost, doubled


def check_all(source_dsn: str, serving_dsn: str, rec: Recorder, projections: bool) -> CheckResult:
    res = CheckResult(changes_expected=rec.count, keys_compared=len(rec.changes))
    with psycopg.connect(source_dsn, autocommit=True) as src, psycopg.connect(serving_dsn, autocommit=True) as srv:
        for conn in (src, srv):
            conn.execute("SET TimeZone = 'UTC'")
        res.changes_staged, res.lost, res.doubled = _count_lost_doubled(srv, rec)
        try:
            assert_staging_matches(srv, rec)
        except AssertionError as exc:
            res.failures.append(f"staging history: {exc}"[:2000])
        try:
            assert_latest_state_equals_source(src, srv)
        except AssertionError as exc:
            res.failures.append(f"staging latest state: {exc}"[:2000])
        res.source_rows_compared = {t: len(source_rows(src, t)) for t in TABLES}
        if not projections:
            return res
        res.projections_checked = True
        for name, status, last_error in srv.execute(
            "SELECT projection_name, status, last_error FROM ctl_projection_metadata ORDER BY 1"
        ).fetchall():
            res.metadata[name] = status
            if status != "OK":
                res.failures.append(f"{name} metadata status {status}: {last_error}")
        for name in PROJECTIONS:
            if name not in res.metadata:
                res.failures.append(f"{name}: no metadata row")
        for label, oracle, proj in (("kpi", ORACLE_KPI, PROJ_KPI), ("latest", ORACLE_LATEST, PROJ_LATEST)):
            want, got = src.execute(oracle).fetchall(), srv.execute(proj).fetchall()
            if label == "kpi":
                res.kpi_rows_compared = len(want)
            else:
                res.latest_rows_compared = len(want)
            if got != want:
                res.failures.append(f"{label} projection differs from the oracle: {_difference(want, got)}")
        bad = srv.execute(LATEST_LSN_MISMATCH).fetchone()[0]
        if bad:
            res.failures.append(f"proj_orders_latest: {bad} rows whose __source_lsn is not their order's latest change")
    return res


def _difference(want: list, got: list) -> str:
    w, g = set(want), set(got)
    return (
        f"{len(want)} expected rows, {len(got)} rows; missing {sorted(w - g, key=str)[:3]}, "
        f"unexpected {sorted(g - w, key=str)[:3]}"
    )
