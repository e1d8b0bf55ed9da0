"""Least privilege against the real PostgreSQL: bootstrap names each missing privilege,
and the pipeline runs with a source role that has REPLICATION and SELECT only."""

from __future__ import annotations

import os

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from cdcflow import privileges, sqlfiles
from cdcflow.bootstrap import bootstrap, make_source
from cdcflow.privileges import PrivilegeError
from tests.conftest import RunningPipeline, wait_caught_up, wait_until
from tests.oracle import assert_latest_state_equals_source


def as_role(dsn: str, role: str) -> str:
    params = conninfo_to_dict(dsn)
    params["user"] = role
    return make_conninfo(**params)


@pytest.fixture
def roles(edbs):
    """A source role and a serving role with no privileges yet (roles are cluster-wide)."""
    n = f"{os.getpid()}_{id(edbs) % 100000}"
    reader, owner = f"cdct_reader_{n}", f"cdct_owner_{n}"
    with edbs.server.admin() as a:
        for r in (reader, owner):
            a.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(r)))
            a.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(r)))
    with edbs.source() as src:  # the demo tables, owned by the admin (as an application's would be)
        for name, text in sqlfiles.scripts("source"):
            if name.startswith(("10_", "20_")):
                src.execute(text)
    settings = edbs.settings.replace(
        source_dsn=as_role(edbs.source_dsn, reader), serving_dsn=as_role(edbs.serving_dsn, owner), metrics_port=0
    )
    yield edbs, settings, reader, owner
    with edbs.server.admin() as a:
        a.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = ANY(%s)", ([reader, owner],))
    for dsn in (edbs.source_dsn, edbs.serving_dsn):
        with psycopg.connect(dsn, autocommit=True) as c:
            for r in (reader, owner):
                c.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(r)))
    with edbs.server.admin() as a:
        # The slot belongs to no role; conftest drops it with the databases.
        for r in (reader, owner):
            a.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(r)))


def grant(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        for s in statements:
            c.execute(s)  # type: ignore[arg-type]  # test DDL


def error_of(settings) -> str:
    with pytest.raises(PrivilegeError) as info:
        bootstrap(settings)
    return str(info.value)


def test_bootstrap_names_each_missing_privilege_then_runs_with_least_privilege(roles):
    edbs, settings, reader, owner = roles
    msg = error_of(settings)
    assert "\n" not in msg
    assert f"role {reader} lacks REPLICATION: ALTER ROLE {reader} REPLICATION" in msg
    assert f"role {reader} lacks SELECT on public.orders: GRANT SELECT ON public.orders TO {reader}" in msg
    assert f"role {reader} cannot create publication" in msg and "CREATE PUBLICATION" in msg
    assert f"role {owner} lacks CREATE on schema public of the serving database" in msg
    assert f"GRANT CREATE ON SCHEMA public TO {owner}" in msg

    # Grant exactly what the messages say, one at a time: each one disappears from the message.
    grant(edbs.server.admin_dsn, f"ALTER ROLE {reader} REPLICATION")
    msg = error_of(settings)
    assert "REPLICATION" not in msg and "lacks SELECT on public.orders" in msg
    grant(edbs.source_dsn, f"GRANT SELECT ON public.customers, public.orders, public.payments TO {reader}")
    grant(edbs.serving_dsn, f"GRANT CREATE ON SCHEMA public TO {owner}")
    msg = error_of(settings)
    assert "lacks SELECT" not in msg and f"role {owner}" not in msg
    # Only the publication is left: the admin creates it, as the message says.
    create = msg[msg.index("CREATE PUBLICATION") :]
    assert create.startswith(
        f"CREATE PUBLICATION {settings.publication} FOR TABLE public.customers, "
        "public.orders, public.payments WITH (publish = 'insert, update, delete, truncate')"
    )
    grant(edbs.source_dsn, create)
    assert "CREATE PUBLICATION" not in _problems(settings)


def _problems(settings) -> str:
    source = make_source(settings)
    try:
        privileges.check(settings, source)
    except PrivilegeError as exc:
        return str(exc)
    finally:
        source.close()
    return ""


def test_select_only_role_runs_with_an_admin_made_publication(roles):
    edbs, settings, reader, owner = roles
    grant(edbs.server.admin_dsn, f"ALTER ROLE {reader} REPLICATION")
    grant(
        edbs.source_dsn,
        f"GRANT SELECT ON public.customers, public.orders, public.payments TO {reader}",
        f"CREATE PUBLICATION {settings.publication} FOR TABLE public.customers, public.orders, public.payments "
        "WITH (publish = 'insert, update, delete, truncate')",
    )
    grant(edbs.serving_dsn, f"GRANT CREATE ON SCHEMA public TO {owner}")
    source = make_source(settings)
    try:
        source.ensure_publication()  # what bootstrap does after the check (closed here if it fails)
    finally:
        source.close()
    run_and_check(edbs, settings, owner)


def run_and_check(edbs, settings, owner: str) -> None:
    bootstrap(settings).source.close()
    with psycopg.connect(edbs.serving_dsn) as c:
        owners = {
            r[0]
            for r in c.execute(
                "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class WHERE relkind = 'r' "
                "AND (relname LIKE 'ctl\\_%' OR relname LIKE 'stg\\_cdc\\_%' OR relname LIKE 'proj\\_%')"
            ).fetchall()
        }
    assert owners == {owner}
    with RunningPipeline(settings), edbs.source() as src:
        src.execute("INSERT INTO orders (customer_id, amount) VALUES (1, 99.5)")
        src.execute("UPDATE customers SET segment = 'SMB' WHERE customer_id = 2")
        wait_caught_up(settings)
        with edbs.serving() as srv:
            assert_latest_state_equals_source(src, srv)
            wait_until(
                lambda: srv.execute("SELECT status FROM ctl_projection_metadata").fetchone()[0] == "OK",
                timeout=20,
                what="projection OK",
            )


def test_publication_missing_a_table_and_foreign_owned_serving_tables(roles):
    edbs, settings, reader, owner = roles
    grant(edbs.server.admin_dsn, f"ALTER ROLE {reader} REPLICATION")
    grant(
        edbs.source_dsn,
        f"GRANT SELECT ON public.customers, public.orders, public.payments TO {reader}",
        f"CREATE PUBLICATION {settings.publication} FOR TABLE public.orders, public.customers",
    )
    grant(
        edbs.serving_dsn, f"GRANT CREATE ON SCHEMA public TO {owner}", "CREATE TABLE ctl_ingestion_watermarks (x int)"
    )  # made by someone else
    msg = error_of(settings)
    assert (
        f"publication {settings.publication} (owner postgres) does not publish public.payments: have its owner "
        f"run ALTER PUBLICATION {settings.publication} ADD TABLE public.payments"
    ) in msg
    assert (
        f"role {owner} does not own public.ctl_ingestion_watermarks (owner postgres) in the serving database: "
        f"ALTER TABLE public.ctl_ingestion_watermarks OWNER TO {owner}"
    ) in msg


def test_role_that_owns_the_tables_lets_bootstrap_create_the_publication(roles):
    edbs, settings, reader, owner = roles
    grant(edbs.server.admin_dsn, f"ALTER ROLE {reader} REPLICATION")
    grant(
        edbs.source_dsn,
        *(f"ALTER TABLE public.{t} OWNER TO {reader}" for t in ("customers", "orders", "payments")),
        f"GRANT CREATE ON DATABASE {conninfo_to_dict(edbs.source_dsn)['dbname']} TO {reader}",
    )
    grant(edbs.serving_dsn, f"GRANT CREATE ON SCHEMA public TO {owner}")
    run_and_check(edbs, settings, owner)
    with edbs.source() as src:
        assert (
            src.execute(
                "SELECT count(*) FROM pg_publication_tables WHERE pubname = %s", (settings.publication,)
            ).fetchone()[0]
            == 3
        )
