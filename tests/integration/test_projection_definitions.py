"""Projection definitions as a user meets them: bad files get one line each (naming the file,
the construct and why) while everything else keeps running; a new file is built, a changed
one rebuilt, a removed one says how to drop its tables; ``cdcflow projections`` tells
which exist, how each is kept, and what it reads and keeps."""

from __future__ import annotations

import io
import logging
from contextlib import redirect_stdout

import psycopg
import pytest

from cdcflow import cli, projections
from cdcflow.bootstrap import bootstrap
from tests.conftest import wait_caught_up, wait_until
from tests.integration.test_projections_oracle import Workload, settle

GOOD = "SELECT o.status, count(*) AS n, sum(o.amount) AS amount FROM orders o GROUP BY o.status"
BAD = {
    "typo": ("SELECT o.status FROM orders o WHERE", "syntax error at line 1"),
    "unknown_table": ("SELECT n.x FROM nonesuch n", "table public.nonesuch is not a captured table"),
    "not_captured": ("SELECT e.id AS id FROM extra e", "table public.extra is not a captured table"),
    "window": (
        "SELECT o.order_id, row_number() OVER (ORDER BY o.created_at) AS rn FROM orders o",
        "window function ROW_NUMBER() OVER (ORDER BY o.created_at) is not in the incremental fragment",
    ),
    "no_key": (
        "SELECT c.segment, o.status FROM customers c JOIN orders o ON o.customer_id = c.customer_id",
        "no key: a row of this query is not identified",
    ),
    "wrong_key": (
        "-- key: customer_id\nSELECT o.customer_id, o.amount FROM orders o",
        "key (customer_id) does not identify a row",
    ),
    "missing_column": ("SELECT o.order_id, o.discount FROM orders o", "column o.discount does not exist"),
}


def _env(settings, folder, **extra) -> dict[str, str]:
    env = {
        "SOURCE_DSN": settings.source_dsn,
        "SERVING_DSN": settings.serving_dsn,
        "SOURCE_NAME": settings.source_name,
        "SOURCE_SLOT_NAME": settings.slot,
        "SOURCE_PUBLICATION": settings.publication,
        "PROJECTIONS_DIR": str(folder),
    }
    env.update(extra)
    return env


def _cli(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    out = io.StringIO()
    with redirect_stdout(out):
        code = cli.main(args, env=env)
    return code, out.getvalue()


def test_bad_definitions_get_one_line_each_and_everything_else_keeps_running(dbs, pipeline, tmp_path, caplog):
    folder = tmp_path / "defs"
    folder.mkdir()
    (folder / "status_totals.sql").write_text(GOOD)
    for name, (text, _) in BAD.items():
        (folder / f"{name}.sql").write_text(text)
    with psycopg.connect(dbs.source_dsn, autocommit=True) as src:
        src.execute("CREATE TABLE extra (id int PRIMARY KEY)")
    settings = dbs.settings.replace(projections_dir=str(folder))
    caplog.set_level(logging.ERROR, logger="cdcflow")
    bootstrap(settings, demo=True).source.close()
    for name, (_, why) in BAD.items():
        lines = [r.getMessage() for r in caplog.records if f"proj_{name} " in r.getMessage()]
        assert len(lines) == 1 and why in lines[0] and f"{folder / name}.sql" in lines[0], (name, lines)
        assert "\n" not in lines[0]
    with pipeline(settings), psycopg.connect(settings.source_dsn, autocommit=True) as src:
        Workload(src, 5).run(400)
        wait_caught_up(settings)
        with psycopg.connect(settings.serving_dsn, autocommit=True) as srv:

            def good_and_kpi_ok() -> bool:
                rows = dict(srv.execute("SELECT projection_name, status FROM ctl_projection_metadata").fetchall())
                return rows.get("proj_status_totals") == "OK" and rows.get("proj_orders_kpi_by_minute_segment") == "OK"

            wait_until(good_and_kpi_ok, what="the good projections OK")
            want = sorted(src.execute(GOOD).fetchall())
            wait_until(
                lambda: sorted(srv.execute("SELECT status, n, amount FROM proj_status_totals").fetchall()) == want,
                what="the good projection to equal its query on the source",
            )
            meta = dict(
                srv.execute(
                    "SELECT projection_name, last_error FROM ctl_projection_metadata WHERE status = 'ERROR'"
                ).fetchall()
            )
            assert set(meta) == {f"proj_{n}" for n in BAD}
            for name, (_, why) in BAD.items():
                assert why in meta[f"proj_{name}"] and f"{name}.sql" in meta[f"proj_{name}"]
    code, out = _cli(["projections", "check"], _env(settings, folder))
    assert code == 2
    assert "ok       proj_status_totals: incremental (grouped)" in out
    assert sum(line.startswith("refused  ") for line in out.splitlines()) == len(BAD)


def test_a_definition_added_changed_and_removed(dbs, pipeline, tmp_path):
    folder = tmp_path / "defs"
    folder.mkdir()
    settings = dbs.settings.replace(projections_dir=str(folder), enable_proj_orders_kpi=False)
    bootstrap(settings, demo=True).source.close()
    with psycopg.connect(settings.source_dsn, autocommit=True) as src:
        Workload(src, 3).run(300)
        # Added while nothing ran: built from staging at the next start, then kept incrementally.
        (folder / "totals.sql").write_text(GOOD)
        with pipeline(settings):
            settle(settings)
            with psycopg.connect(settings.serving_dsn, autocommit=True) as srv:
                assert sorted(srv.execute("SELECT status, n, amount FROM proj_totals").fetchall()) == sorted(
                    src.execute(GOOD).fetchall()
                )
                first = srv.execute("SELECT definition_digest FROM ctl_projection_metadata").fetchone()[0]
        # Changed: rebuilt (new columns) at the next start.
        changed = "SELECT o.status, count(*) AS n, max(o.amount) AS top FROM orders o GROUP BY o.status"
        (folder / "totals.sql").write_text(changed)
        Workload(src, 4).run(200)
        with pipeline(settings):
            settle(settings)
            with psycopg.connect(settings.serving_dsn, autocommit=True) as srv:
                assert sorted(srv.execute("SELECT status, n, top FROM proj_totals").fetchall()) == sorted(
                    src.execute(changed).fetchall()
                )
                assert srv.execute("SELECT definition_digest FROM ctl_projection_metadata").fetchone()[0] != first
        # Removed: it says so, and how to drop its tables; it no longer holds back compaction.
        (folder / "totals.sql").unlink()
        bootstrap(settings).source.close()  # as 'cdcflow run' does on start
        with pipeline(settings):
            wait_caught_up(settings)
        env = _env(settings, folder, ENABLE_PROJ_ORDERS_KPI="false")
        code, out = _cli(["status"], env)
        assert "proj_totals" in out and "REMOVED" in out
        with psycopg.connect(settings.serving_dsn, autocommit=True) as srv:
            status, error = srv.execute(
                "SELECT status, last_error FROM ctl_projection_metadata WHERE projection_name = 'proj_totals'"
            ).fetchone()
        assert status == "REMOVED" and "cdcflow projections drop proj_totals" in error
        code, out = _cli(["projections", "drop", "proj_totals"], env)
        assert code == 0 and "pst_totals__public_orders" in out
        with psycopg.connect(settings.serving_dsn, autocommit=True) as srv:
            left = srv.execute("SELECT relname FROM pg_class WHERE relname LIKE '%totals%'").fetchall()
            assert left == []
            assert srv.execute("SELECT count(*) FROM ctl_projection_metadata").fetchone()[0] == 0


def test_projections_list_and_explain_say_how_each_is_kept(dbs, tmp_path):
    folder = tmp_path / "defs"
    folder.mkdir()
    (folder / "totals.sql").write_text(GOOD)
    (folder / "ranked.sql").write_text(
        "-- mode: full\nSELECT o.order_id, rank() OVER (ORDER BY o.amount DESC) AS r FROM orders o"
    )
    settings = dbs.settings.replace(projections_dir=str(folder), enable_proj_orders_latest=True)
    bootstrap(settings, demo=True).source.close()
    env = _env(settings, folder, ENABLE_PROJ_ORDERS_LATEST="true")
    code, out = _cli(["projections"], env)
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert (
        "incremental" in lines["proj_orders_latest"]
        and "rows; reads public_customers, public_orders" in (lines["proj_orders_latest"])
    )
    assert (
        "incremental" in lines["proj_orders_kpi_by_minute_segment"]
        and "grouped over UNION ALL" in (lines["proj_orders_kpi_by_minute_segment"])
    )
    assert "full" in lines["proj_ranked"]
    code, out = _cli(["projections", "explain", "orders_latest"], env)
    assert code == 0
    assert "result: table proj_orders_latest, keyed by (order_id)" in out
    assert "joins: o.(customer_id) = c.(customer_id) [left, o preserved]" in out
    assert "public.customers (capture public_customers) -> pst_orders_latest__public_customers" in out
    code, out = _cli(["projections", "explain", "proj_orders_kpi_by_minute_segment"], env)
    assert "branch 2: p.(order_id) = o.(order_id) [inner]" in out and "__count: input rows of the group" in out
    code, out = _cli(["projections", "explain", "ranked"], env)
    assert "recomputed in full" in out
    with pytest.raises(SystemExit):
        cli.main(["projections", "frobnicate"], env=env)
    with psycopg.connect(settings.serving_dsn) as conn:
        assert {p.name for p in projections.load(settings, conn)[0]} == {
            "proj_orders_kpi_by_minute_segment",
            "proj_orders_latest",
            "proj_totals",
            "proj_ranked",
        }
