"""Least privilege: check, before bootstrap changes anything, that each role can do its job.

Source role (PostgreSQL): ``REPLICATION`` (a logical slot and the replication stream)
and ``SELECT`` (with ``USAGE`` on the schema) on each captured table, nothing else. The
publication is either created beforehand by the tables' owner or an admin, or created by
bootstrap, which then needs ``CREATE`` on the database and ownership of every captured
table (PostgreSQL's rule for ``CREATE PUBLICATION ... FOR TABLE``).

Serving role: ``CREATE`` on the schema cdcflow's tables go to (the first of its
``search_path``), and ownership of cdcflow's tables there (``ctl_*``, ``stg_cdc_*``,
``proj_*``, ``pst_*``) once they exist.

Every missing privilege is named with the statement that grants it, all of them in one
line, e.g. ``role cdc_reader lacks REPLICATION: ALTER ROLE cdc_reader REPLICATION``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import psycopg

from cdcflow import db, sqlfiles
from cdcflow.config import Settings
from cdcflow.errors import TerminalError

if TYPE_CHECKING:
    from cdcflow.sources.base import Source

QUERIES = "privileges.sql"
PUBLISH = "WITH (publish = 'insert, update, delete, truncate')"


class PrivilegeError(TerminalError):
    """A database role lacks a privilege cdcflow needs."""


def source_problems(conn: psycopg.Connection, settings: Settings) -> list[str]:
    """What the source role lacks (empty: nothing). Names come quoted as SQL needs them."""
    row = conn.execute(sqlfiles.query(QUERIES, "source_role"), {"publication": settings.publication}).fetchone()
    assert row is not None
    role, superuser, replication, dbname, can_create, p = row
    if superuser:
        return []
    out = []
    if not replication:
        out.append(f"role {role} lacks REPLICATION: ALTER ROLE {role} REPLICATION")
    pairs = [t.split(".", 1) for t in settings.capture_tables]
    tables = conn.execute(
        sqlfiles.query(QUERIES, "captured_tables"),
        {"schemas": [s for s, _ in pairs], "tables": [t for _, t in pairs]},
    ).fetchall()
    not_owned: list[str] = []
    for schema, name, usage, select, owns, owner in tables:
        if not usage:
            out.append(f"role {role} lacks USAGE on schema {schema}: GRANT USAGE ON SCHEMA {schema} TO {role}")
        if not select:
            out.append(f"role {role} lacks SELECT on {name}: GRANT SELECT ON {name} TO {role}")
        if not owns:
            not_owned.append(f"{name} (owner {owner})")
    pub = conn.execute(sqlfiles.query(QUERIES, "publication"), {"publication": settings.publication}).fetchone()
    captured = [t[1] for t in tables]
    if pub is None:
        if not can_create:
            out.append(
                f"role {role} lacks CREATE on database {dbname} to create publication {p}: "
                f"GRANT CREATE ON DATABASE {dbname} TO {role}, or have an admin create the publication"
            )
        if not_owned:
            out.append(
                f"role {role} cannot create publication {p}: it does not own {', '.join(not_owned)}; have the "
                f"owner run CREATE PUBLICATION {p} FOR TABLE {', '.join(captured)} {PUBLISH}"
            )
    else:
        owns_pub, pub_owner, all_tables, published = pub
        missing = [] if all_tables else [t for t in captured if t not in set(published or [])]
        if missing and not owns_pub:
            out.append(
                f"publication {p} (owner {pub_owner}) does not publish {', '.join(missing)}: have its owner run "
                f"ALTER PUBLICATION {p} ADD TABLE {', '.join(missing)}"
            )
    return out


def serving_problems(conn: psycopg.Connection) -> list[str]:
    """What the serving role lacks (empty: nothing)."""
    row = conn.execute(sqlfiles.query(QUERIES, "serving_role")).fetchone()
    assert row is not None
    role, superuser, schema, can_create, dbname = row
    if superuser:
        return []
    if schema is None:
        return [
            f"role {role} has no schema to create tables in (its search_path names none that exists) in the "
            f"serving database {dbname}: CREATE SCHEMA cdcflow AUTHORIZATION {role}; "
            f"ALTER ROLE {role} SET search_path = cdcflow"
        ]
    out = []
    if not can_create:
        out.append(
            f"role {role} lacks CREATE on schema {schema} of the serving database {dbname}: "
            f"GRANT CREATE ON SCHEMA {schema} TO {role}"
        )
    for table, owner in conn.execute(sqlfiles.query(QUERIES, "foreign_owned_tables")).fetchall():
        out.append(
            f"role {role} does not own {table} (owner {owner}) in the serving database: "
            f"ALTER TABLE {table} OWNER TO {role}"
        )
    return out


def check(settings: Settings, source: Source) -> None:
    """Raise :class:`PrivilegeError` naming every missing privilege, the source's (as its
    engine checks them) and the serving role's."""
    try:
        problems = source.privilege_problems(settings)
        _, serving_dsn = settings.require_dsns()
        with db.connect(serving_dsn, "serving", autocommit=True) as conn:
            try:
                problems += serving_problems(conn)
            except psycopg.Error as exc:
                raise db.wrap_db_error("checking the serving role's privileges", exc) from None
        if problems:
            raise PrivilegeError("; ".join(problems))
    except BaseException:
        source.close()  # bootstrap stops here: leave no connection behind
        raise
