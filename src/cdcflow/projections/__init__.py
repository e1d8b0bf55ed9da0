"""Projections kept up to date from staging with DuckDB.

Registry used by the runtime and the CLI: ``bootstrap`` creates control rows for the
enabled projections, ``build_workers`` returns one worker per enabled projection.
"""

from __future__ import annotations

import threading

import psycopg

from cdcflow.config import Settings


def bootstrap(conn: psycopg.Connection, settings: Settings) -> None:
    """Create projection control rows for the enabled projections (idempotent)."""
    return None


def build_workers(
    settings: Settings, serving_dsn: str, stop: threading.Event, wake: threading.Event
) -> list:
    """One worker per enabled projection."""
    return []
