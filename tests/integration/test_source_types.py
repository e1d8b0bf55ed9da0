"""Columns whose type exists only in the source (enum, domain, composite, extension types,
arrays of them) are staged all the same: a domain as the built-in type under it, the others
as text holding the value as the source prints it; from bootstrap, and when the table is
added later."""

from __future__ import annotations

import logging

import psycopg

from cdcflow.bootstrap import bootstrap
from tests.conftest import RunningPipeline, wait_caught_up, wait_until
from tests.integration.test_projections_oracle import settle
from tests.oracle import assert_projection_matches

QUERY = "SELECT w.m, count(*) AS n, sum(w.d) AS d FROM weird w GROUP BY w.m"


def _extension_type(src: psycopg.Connection) -> str | None:
    """citext where the server ships it (PostgreSQL's contrib), else pgvector's vector."""
    available = {r[0] for r in src.execute("SELECT name FROM pg_available_extensions")}
    for ext, typ in (("citext", "citext"), ("vector", "vector(3)")):
        if ext in available:
            src.execute(f"CREATE EXTENSION IF NOT EXISTS {ext}")
            return typ
    return None


def _create(src: psycopg.Connection, table: str, ext: str | None) -> list[str]:
    src.execute(f"""
        CREATE TABLE {table} (
            id int PRIMARY KEY, m mood, d posnum, dd posnum_small, c pair, ms mood[]
            {", e " + ext if ext else ""}
        )""")
    cols = ["id", "m", "d", "dd", "c", "ms"] + (["e"] if ext else [])
    value = {"citext": "'MiXeD Case'", "vector(3)": "'[1,2.5,3]'"}.get(ext or "", "")
    src.execute(
        f"INSERT INTO {table} SELECT g, (ARRAY['sad','ok','happy'])[g % 3 + 1]::mood, g * 1.25, g % 50, "
        f"ROW(g, 'p' || g)::pair, ARRAY['ok','sad']::mood[]{', ' + value if ext else ''} "
        "FROM generate_series(1, 200) g"
    )
    return cols


def _assert_staged_as_source(src, serving, table: str, cols: list[str]) -> None:
    row = ", ".join(cols)
    want = {r[0] for r in src.execute(f"SELECT ROW({row})::text FROM {table}")}
    got = {
        r[0]
        for r in serving.execute(
            f"SELECT ROW({row})::text FROM (SELECT DISTINCT ON (id) * FROM stg_cdc_{table} WHERE __op <> 3 "
            "ORDER BY id, __lsn DESC, __seqval DESC) s WHERE __op <> 1"
        )
    }
    assert got == want, f"{table}: missing {sorted(want - got)[:2]}, extra {sorted(got - want)[:2]}"


def test_source_only_types_are_staged_from_bootstrap_and_when_added(dbs, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    with dbs.source() as src:
        src.execute("CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')")
        src.execute("CREATE DOMAIN posnum AS numeric(10,2) CHECK (VALUE >= 0)")
        src.execute("CREATE DOMAIN posnum_small AS posnum CHECK (VALUE < 1000)")  # a domain over a domain
        src.execute("CREATE TYPE pair AS (a int, b text)")
        ext = _extension_type(src)
        cols = _create(src, "weird", ext)
    folder = tmp_path / "projections"
    folder.mkdir()
    (folder / "moods.sql").write_text(QUERY + "\n")
    settings = dbs.settings.replace(
        capture_tables=("public.weird",),
        projections_dir=str(folder),
        enable_proj_orders_latest=False,
        enable_proj_orders_kpi=False,
    )
    bootstrap(settings).source.close()
    assert "weird.m: enum mood exists only in the source; staged as text" in caplog.text
    with dbs.serving() as serving:
        types = dict(
            serving.execute(
                "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = 'stg_cdc_weird'::regclass AND attnum > 0"
            ).fetchall()
        )
    assert types["d"] == "numeric(10,2)" and types["dd"] == "numeric(10,2)" and types["m"] == "text", types
    with dbs.source() as src, RunningPipeline(settings):
        src.execute("UPDATE weird SET m = 'happy', c = ROW(id, NULL)::pair, ms = ARRAY['happy']::mood[] WHERE id < 20")
        src.execute("DELETE FROM weird WHERE id BETWEEN 190 AND 195")
        wait_caught_up(settings)
        settle(settings)
        with dbs.serving() as serving:
            _assert_staged_as_source(src, serving, "weird", cols)
            assert assert_projection_matches(src, serving, "proj_moods", QUERY) == 3
        # The same types in a table added to the running deployment: backfilled.
        _create(src, "weird2", ext)
    two = settings.replace(capture_tables=("public.weird", "public.weird2"))
    bootstrap(two).source.close()
    with dbs.source() as src, RunningPipeline(two):
        src.execute("UPDATE weird2 SET m = 'sad' WHERE id > 150")
        with dbs.serving() as serving:
            wait_until(
                lambda: (
                    serving.execute(
                        "SELECT state FROM ctl_ingestion_watermarks WHERE capture_instance = 'public_weird2'"
                    ).fetchone()[0]
                    == "OK"
                ),
                timeout=60,
                what="weird2 backfilled",
            )
            wait_caught_up(two)
            _assert_staged_as_source(src, serving, "weird2", cols)
