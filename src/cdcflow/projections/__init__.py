"""Projections: SQL queries over captured tables, kept up to date from staging.

Definitions are ``.sql`` files (:mod:`.definition`): the two shipped with cdcflow, enabled
by their flags (``ENABLE_PROJ_ORDERS_KPI``, ``ENABLE_PROJ_ORDERS_LATEST``), and every
file in ``PROJECTIONS_DIR``. Each one is planned against the serving catalog
(:mod:`.analysis` builds its :mod:`.plan`) and kept incrementally (:mod:`.incremental`),
or by full recompute when it asks for ``mode: full`` (:mod:`.full`). The shared lifecycle
(cutoff, checkpoints, atomic commit, metadata) is in :mod:`.base`, the loop in :mod:`.worker`.

A definition that cannot be used (a syntax error, a table not captured, a construct
outside the fragment) is reported with one line naming its file, and its projection says
ERROR in status; every other projection and ingestion go on, and nothing staged is lost.
A projection whose definition is gone says REMOVED, with how to drop its tables.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from cdcflow import db, sqlfiles
from cdcflow.config import Settings
from cdcflow.errors import ConfigError, DefinitionError
from cdcflow.projections import base, catalog, definition
from cdcflow.projections.definition import Definition
from cdcflow.projections.worker import ProjectionWorker

log = logging.getLogger(__name__)
QUERIES = "projections/registry.sql"


@dataclass
class Definitions:
    """The definitions that are enabled, and the files that could not be read as one."""

    enabled: list[Definition] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (projection name, message)

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.enabled] + [n for n, _ in self.problems]


def definitions(settings: Settings) -> Definitions:
    """The enabled definitions: the built-in ones whose flag is on, then PROJECTIONS_DIR's files."""
    out = Definitions()
    for name, flag in definition.BUILTIN.items():
        if getattr(settings, flag):
            out.enabled.append(definition.builtin(name))
    if settings.projections_dir:
        for path in definition.folder_files(Path(settings.projections_dir)):
            try:
                d = definition.read_file(path)
            except DefinitionError as exc:
                out.problems.append((definition.table_name(path.stem.lower()), str(exc)))
                continue
            if d.name in {e.name for e in out.enabled}:
                out.problems.append(
                    (
                        d.name,
                        f"projection {d.name} ({path}): defined twice (also built in: turn its "
                        "ENABLE_PROJ_ flag off to define your own)",
                    )
                )
                continue
            out.enabled.append(d)
    return out


def build(d: Definition, conn: psycopg.Connection, settings: Settings) -> base.Projection:
    """The projection a definition describes, planned against the serving catalog now."""
    from cdcflow.projections import analysis, full, incremental

    tables = catalog.read(conn, settings.source_name)
    try:
        if d.mode == "full":
            return full.FullProjection(d, tables, analysis.check_full(d, tables, conn))
        projection = incremental.SqlProjection(analysis.analyze(d, tables, conn))
    except DefinitionError:
        raise
    except psycopg.OperationalError:
        raise  # the serving database went away: not the definition's fault
    except Exception as exc:  # a definition that cannot be planned stops only itself
        log.debug("planning %s failed", d.name, exc_info=True)
        raise d.error(
            f"cannot be planned: {db.describe_error(exc) if isinstance(exc, psycopg.Error) else exc}"
        ) from None
    projection.definition_file = d.path
    return projection


def load(settings: Settings, conn: psycopg.Connection) -> tuple[list[base.Projection], list[tuple[str, str]]]:
    """Every enabled projection that can be built, and (name, message) for each that cannot."""
    found = definitions(settings)
    out: list[base.Projection] = []
    problems = list(found.problems)
    for d in found.enabled:
        try:
            out.append(build(d, conn, settings))
        except DefinitionError as exc:
            problems.append((d.name, str(exc)))
    return out, problems


def bootstrap(conn: psycopg.Connection, settings: Settings) -> None:
    """Every enabled definition planned now: control rows for each projection; one line,
    and ERROR in the metadata, for each definition that cannot be used; REMOVED for
    projections no longer defined."""
    found = definitions(settings)
    projections, problems = load(settings, conn)
    for projection in projections:
        base.ensure_control_rows(conn, projection, settings.source_name)
        exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (projection.name,)).fetchone()
        if not (exists and exists[0]):
            # Its tables exist (empty) from now on; its first cycle builds it from staging.
            projection.prepare(conn)
    for name, message in problems:
        _record_problem(conn, name, message)
    removed = conn.execute(sqlfiles.query(QUERIES, "removed"), {"names": found.names}).fetchall()
    for (name,) in removed:
        hint = (
            "no enabled definition any more: it is not maintained; drop its tables with "
            f"'cdcflow projections drop {name}'"
        )
        log.warning("projection %s: %s", name, hint)
        conn.execute(sqlfiles.query(QUERIES, "mark_removed"), {"projection": name, "message": hint})


def _record_problem(conn: psycopg.Connection, name: str, message: str) -> None:
    log.error("%s", message)
    conn.execute(sqlfiles.query("projections/control.sql", "ensure_metadata"), {"projection": name})
    conn.execute(sqlfiles.query("projections/control.sql", "metadata_error"), {"error": message, "projection": name})


def build_workers(
    settings: Settings, serving_dsn: str, stop: threading.Event, wake: threading.Event
) -> list[ProjectionWorker]:
    """One worker per enabled definition; each plans its projection when it starts (and
    again after a failure), so a definition that cannot be used yet stops only itself."""

    def builder(d: Definition, conn: psycopg.Connection) -> base.Projection:
        return build(d, conn, settings)

    return [
        ProjectionWorker(d, settings, serving_dsn, stop, wake, builder=builder) for d in definitions(settings).enabled
    ]


def resolve(settings: Settings, conn: psycopg.Connection, names: list[str] | None) -> list[base.Projection]:
    """Enabled projections by name (``None``: all); an unknown name or a definition that
    cannot be used is a ConfigError / DefinitionError."""
    found = definitions(settings)
    by_name = {d.name: d for d in found.enabled}
    problems = dict(found.problems)
    chosen = list(by_name.values())
    if names is None and problems:
        raise DefinitionError(next(iter(problems.values())))
    if names is not None:
        chosen = []
        for name in names:
            d = by_name.get(name) or by_name.get(f"proj_{name}")
            problem = problems.get(name) or problems.get(f"proj_{name}")
            if problem is not None:
                raise DefinitionError(problem)
            if d is None:
                raise ConfigError(
                    f"no enabled projection named {name!r}: expected one of {', '.join(by_name) or 'none'}"
                )
            chosen.append(d)
    return [build(d, conn, settings) for d in chosen]


def rebuild(settings: Settings, names: list[str] | None = None) -> list[tuple[str, base.CycleResult]]:
    """Rebuild projections (all when ``names`` is None) from staging, each in one transaction.

    Concurrent workers wait on the projection's metadata lock and continue from the
    rebuilt checkpoints afterwards.
    """
    _, serving_dsn = settings.require_dsns()
    out = []
    duck = base.open_duckdb()
    try:
        with base.open_connection(serving_dsn) as conn:
            for projection in resolve(settings, conn, names):
                with db.rolled_back_on_error(conn, f"rebuilding {projection.name}"):
                    result = base.rebuild(conn, duck, projection, settings)
                    conn.commit()
                log.info(
                    "rebuilt %s up to lsn %d: %d rows (%.1f s)",
                    projection.name,
                    result.cutoff,
                    result.rows_changed,
                    result.seconds,
                )
                out.append((projection.name, result))
    finally:
        duck.close()
    return out


def drop(settings: Settings, name: str) -> list[str]:
    """Drop a projection that is no longer enabled: its tables and control rows."""
    _, serving_dsn = settings.require_dsns()
    if name in definitions(settings).names:
        raise ConfigError(f"projection {name} is enabled: remove its definition (or its flag) before dropping it")
    from cdcflow.projections.pgtables import prefix

    with db.connect(serving_dsn, "serving") as conn:
        tables = [
            r[0] for r in conn.execute(sqlfiles.query(QUERIES, "tables_of"), {"name": name, "prefix": prefix(name)})
        ]
        known = conn.execute(sqlfiles.query(QUERIES, "known"), {"projection": name}).fetchone()
        if not tables and not known:
            raise ConfigError(f"no projection named {name!r} in the serving database")
        for t in tables:
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(t)))
        conn.execute(sqlfiles.query(QUERIES, "forget"), {"projection": name})
        conn.commit()
    return tables


__all__ = ["ProjectionWorker", "bootstrap", "build", "build_workers", "definitions", "load", "rebuild", "resolve"]
