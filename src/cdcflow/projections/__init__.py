"""Projections kept up to date from staging with DuckDB.

Registry used by the runtime and the CLI: ``bootstrap`` creates control rows for the
enabled projections, ``build_workers`` returns one worker per enabled projection, and
``rebuild`` recomputes projections from staging. The shared lifecycle (cutoff,
checkpoints, atomic commit, metadata) is in :mod:`.base`, the loop in :mod:`.worker`,
one module (+ ``sql/projections/<name>*.sql``) per projection.
"""

from __future__ import annotations

import logging
import threading

import psycopg

from cdcflow import db
from cdcflow.config import Settings
from cdcflow.errors import ConfigError
from cdcflow.projections import base
from cdcflow.projections.orders_kpi import OrdersKpi
from cdcflow.projections.orders_latest import OrdersLatest
from cdcflow.projections.worker import ProjectionWorker

log = logging.getLogger(__name__)

ALL: dict[str, type[base.Projection]] = {OrdersKpi.name: OrdersKpi, OrdersLatest.name: OrdersLatest}


def enabled(settings: Settings) -> list[base.Projection]:
    out: list[base.Projection] = []
    if settings.enable_proj_orders_kpi:
        out.append(OrdersKpi())
    if settings.enable_proj_orders_latest:
        out.append(OrdersLatest())
    return out


def bootstrap(conn: psycopg.Connection, settings: Settings) -> None:
    """Create projection control rows for the enabled projections (idempotent)."""
    for projection in enabled(settings):
        base.ensure_control_rows(conn, projection, settings.source_name)


def build_workers(
    settings: Settings, serving_dsn: str, stop: threading.Event, wake: threading.Event
) -> list[ProjectionWorker]:
    """One worker per enabled projection."""
    return [ProjectionWorker(p, settings, serving_dsn, stop, wake) for p in enabled(settings)]


def resolve(names: list[str] | None) -> list[base.Projection]:
    """Projections by name (``None``: all of them); an unknown name is a ConfigError."""
    if names is None:
        return [cls() for cls in ALL.values()]
    out = []
    for name in names:
        cls = ALL.get(name) or ALL.get(f"proj_{name}")
        if cls is None:
            raise ConfigError(f"no projection named {name!r}: expected one of {', '.join(ALL)}")
        out.append(cls())
    return out


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
            for projection in resolve(names):
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


__all__ = ["ALL", "ProjectionWorker", "bootstrap", "build_workers", "enabled", "rebuild", "resolve"]
