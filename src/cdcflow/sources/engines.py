"""Which engine a source is, chosen once, here, from ``SOURCE_DSN``'s scheme:
``mssql://`` or ``sqlserver://`` is SQL Server, anything else PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable

from cdcflow.config import Settings
from cdcflow.sources.base import Source
from cdcflow.sources.mssql_support import is_sqlserver_dsn
from cdcflow.sources.postgres import PostgresSource
from cdcflow.sources.sqlserver import SqlServerSource


def _engine(source_dsn: str | None) -> type[PostgresSource] | type[SqlServerSource]:
    return SqlServerSource if source_dsn and is_sqlserver_dsn(source_dsn) else PostgresSource


def open_source(settings: Settings) -> Source:
    """The source ``SOURCE_DSN`` names (not connected yet)."""
    source_dsn, _ = settings.require_dsns()
    return _engine(source_dsn).from_settings(settings)


def position_format(settings: Settings) -> Callable[[int | None], str]:
    """How the source's positions print, for code that has no source object at hand."""
    return _engine(settings.source_dsn).format_position
