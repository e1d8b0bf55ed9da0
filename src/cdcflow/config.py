"""Environment -> typed settings, validated once, at the CLI edge.

The names and defaults are the seed's (``SOURCE_DSN``, ``POLL_INTERVAL_SECONDS`` ...);
the rest are cdcflow's additions. Every other module receives a :class:`Settings`
object and never reads ``os.environ``. A bad value raises :class:`ConfigError` with one
line naming the variable, the value and what is expected.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from cdcflow.errors import ConfigError
from cdcflow.redact import redact_dsn

_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_TABLE_RE = re.compile(r"^(?:([A-Za-z_][A-Za-z0-9_]*)\.)?([A-Za-z_][A-Za-z0-9_]*)$")


def _bool(raw: str) -> bool:
    low = raw.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _int_range(lo: int, hi: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError(f"expected a whole number from {lo} to {hi}") from None
        if not lo <= value <= hi:
            raise ValueError(f"expected a whole number from {lo} to {hi}")
        return value

    return parse


def _float_range(lo: float, hi: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError(f"expected a number of seconds from {lo:g} to {hi:g}") from None
        if not lo <= value <= hi:
            raise ValueError(f"expected a number of seconds from {lo:g} to {hi:g}")
        return value

    return parse


def _choice(*options: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise ValueError("expected one of " + ", ".join(options))
        return value

    return parse


def _ident(raw: str) -> str:
    value = raw.strip()
    if not _IDENT_RE.match(value):
        raise ValueError("expected a name of letters, digits and _ (at most 63, not starting with a digit)")
    return value


def _tables(raw: str) -> tuple[str, ...]:
    out: list[str] = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        m = _TABLE_RE.match(part)
        if not m:
            raise ValueError(f"expected a comma-separated list of [schema.]table names, {part!r} is not one")
        qualified = f"{m.group(1) or 'public'}.{m.group(2)}"
        if qualified in out:
            raise ValueError(f"table {qualified} is listed twice")
        out.append(qualified)
    if not out:
        raise ValueError("expected at least one table")
    return tuple(out)


def _dsn(raw: str) -> str:
    value = raw.strip()
    if not value:
        raise ValueError("expected a connection string")
    return value


_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _duration(raw: str) -> float:
    """Seconds from ``90``, ``90s``, ``30m``, ``24h``, ``7d`` or ``2w``; at most 365 days."""
    m = _DURATION_RE.match(raw.strip().lower())
    if not m:
        raise ValueError("expected a duration such as 3600, 30m, 24h or 7d")
    value = float(m.group(1)) * _DURATION_UNITS[m.group(2) or "s"]
    if value > 365 * 86400:
        raise ValueError("expected a duration such as 3600, 30m, 24h or 7d, at most 365d")
    return value


def _folder(raw: str) -> str:
    from pathlib import Path

    value = raw.strip()
    if not Path(value).is_dir():
        raise ValueError("expected an existing folder of .sql projection definitions")
    return value


_HOST_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})$")


def _address(raw: str) -> str:
    import ipaddress

    value = raw.strip()
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if not _HOST_RE.match(value):
        raise ValueError("expected an IP address to listen on, such as 127.0.0.1 or 0.0.0.0, or a host name")
    return value


_TOKEN_RE = re.compile(r"^[A-Za-z0-9._~-]{16,256}$")  # safe in a URL as it is


def _token(raw: str) -> str:
    value = raw.strip()
    if not _TOKEN_RE.match(value):
        raise ValueError("expected 16 to 256 letters, digits or ._~- (e.g. from 'openssl rand -hex 24')")
    return value


def _opt(default: Any, env: str, parse: Callable[[str], Any], doc: str) -> Any:
    return field(default=default, metadata={"env": env, "parse": parse, "doc": doc})


@dataclass(frozen=True)
class Settings:
    """cdcflow's configuration. Each field's ``doc`` is its documentation."""

    source_dsn: str | None = _opt(
        None,
        "SOURCE_DSN",
        _dsn,
        "Source database. PostgreSQL: a libpq DSN or URI (postgresql://user:pw@host/db).",
    )
    serving_dsn: str | None = _opt(
        None,
        "SERVING_DSN",
        _dsn,
        "Serving PostgreSQL database that receives staging, control and projection tables.",
    )
    source_name: str = _opt(
        "source1",
        "SOURCE_NAME",
        _ident,
        "Name of this source in the control tables; also names the slot and publication.",
    )
    poll_interval_seconds: float = _opt(
        5.0,
        "POLL_INTERVAL_SECONDS",
        _float_range(0.01, 3600),
        "Longest an idle ingestion worker waits before it looks again (an upper bound).",
    )
    cdc_batch_max_rows: int = _opt(
        5000,
        "CDC_BATCH_MAX_ROWS",
        _int_range(1, 10_000_000),
        "Rows after which a batch ends at the next transaction boundary.",
    )
    snapshot_chunk_rows: int = _opt(
        1_000_000,
        "SNAPSHOT_CHUNK_ROWS",
        _int_range(1_000, 1_000_000_000),
        "About how many rows a snapshot or backfill copies per chunk; each chunk commits, and a copy that stops"
        " resumes from the chunks done.",
    )
    snapshot_workers: int = _opt(
        1,
        "SNAPSHOT_WORKERS",
        _int_range(1, 64),
        "Connections that copy a table's chunks side by side from one snapshot (each a source and a serving"
        " connection).",
    )
    projection_interval_seconds: float = _opt(
        15.0,
        "PROJECTION_INTERVAL_SECONDS",
        _float_range(0.01, 86400),
        "Longest a projection waits when nothing signals new data (an upper bound).",
    )
    projection_recompute_window_minutes: int = _opt(
        15,
        "PROJECTION_RECOMPUTE_WINDOW_MINUTES",
        _int_range(0, 525_600),
        "The seed's recompute window; the self-check compares whole projections, so only 0 (off) changes it.",
    )
    projection_self_check_seconds: float = _opt(
        60.0,
        "PROJECTION_SELF_CHECK_SECONDS",
        _float_range(0, 86400),
        "How often each incremental projection's self-check compares it with its query over its state (0: off).",
    )
    projection_parallel_reads: bool = _opt(
        True,
        "PROJECTION_PARALLEL_READS",
        _bool,
        "A projection cycle reads the stored state it needs on a second connection while it writes the new state"
        " (shorter cycles; the cycle then uses two cores at once).",
    )
    enable_proj_orders_kpi: bool = _opt(
        True, "ENABLE_PROJ_ORDERS_KPI", _bool, "Maintain proj_orders_kpi_by_minute_segment."
    )
    enable_proj_orders_latest: bool = _opt(False, "ENABLE_PROJ_ORDERS_LATEST", _bool, "Maintain proj_orders_latest.")
    projections_dir: str | None = _opt(
        None,
        "PROJECTIONS_DIR",
        _folder,
        "Folder of projection definitions: each <name>.sql file is a query over captured tables, kept in"
        " table proj_<name> (docs/projections.md).",
    )
    log_level: str = _opt("info", "LOG_LEVEL", _choice("debug", "info", "warning", "error"), "Log verbosity.")
    log_format: str = _opt("text", "LOG_FORMAT", _choice("text", "json"), "Log line format: text or json.")
    capture_tables: tuple[str, ...] = _opt(
        ("public.customers", "public.orders", "public.payments"),
        "CAPTURE_TABLES",
        _tables,
        "Comma-separated [schema.]table list to capture; staging is stg_cdc_<table>.",
    )
    startup_wait_seconds: float = _opt(
        60.0,
        "STARTUP_WAIT_SECONDS",
        _float_range(0, 86400),
        "How long start-up waits for the source and serving databases to answer.",
    )
    lease_seconds: float = _opt(
        10.0,
        "LEASE_SECONDS",
        _float_range(1, 3600),
        "Lease time for multi-instance runs: a dead owner's work is taken over after at most this long.",
    )
    slot_name: str | None = _opt(
        None,
        "SOURCE_SLOT_NAME",
        _ident,
        "PostgreSQL logical replication slot (default cdcflow_<SOURCE_NAME>).",
    )
    publication_name: str | None = _opt(
        None,
        "SOURCE_PUBLICATION",
        _ident,
        "PostgreSQL publication (default cdcflow_<SOURCE_NAME>).",
    )
    metrics_address: str = _opt(
        "127.0.0.1",
        "METRICS_ADDRESS",
        _address,
        "Address the /metrics and /healthz HTTP endpoint listens on (0.0.0.0 exposes it to the network).",
    )
    metrics_port: int = _opt(
        9466,
        "METRICS_PORT",
        _int_range(0, 65535),
        "Port of the /metrics and /healthz HTTP endpoint (0 turns the endpoint off).",
    )
    console_enabled: bool = _opt(
        True,
        "CONSOLE_ENABLED",
        _bool,
        "Serve the web console (/) on the /metrics listener; false serves /metrics and /healthz alone.",
    )
    console_token: str | None = _opt(
        None,
        "CONSOLE_TOKEN",
        _token,
        "Token viewers of the console must present (open /?token=...); required when METRICS_ADDRESS is not"
        " a loopback address.",
    )
    health_max_freshness_seconds: float = _opt(
        120.0,
        "HEALTH_MAX_FRESHNESS_SECONDS",
        _float_range(0.1, 604800),
        "/healthz fails while a projection is further behind the source than this "
        "(keep it above PROJECTION_INTERVAL_SECONDS + POLL_INTERVAL_SECONDS).",
    )
    staging_retention: float = _opt(
        86400.0,
        "STAGING_RETENTION",
        _duration,
        "Staged history older than this (seconds, or 30m, 24h, 7d) and already read by every projection "
        "is compacted to the latest row per key; 0 compacts as soon as every projection has read it.",
    )
    compaction_interval_seconds: float = _opt(
        300.0,
        "COMPACTION_INTERVAL_SECONDS",
        _float_range(0, 86400),
        "How often the compaction worker of 'cdcflow run' compacts staging (0 turns it off).",
    )
    compaction_batch_rows: int = _opt(
        5000,
        "COMPACTION_BATCH_ROWS",
        _int_range(100, 1_000_000),
        "Staged rows examined per compaction transaction (short transactions never hold up ingestion).",
    )

    @property
    def slot(self) -> str:
        return self.slot_name or f"cdcflow_{self.source_name}"

    @property
    def publication(self) -> str:
        return self.publication_name or f"cdcflow_{self.source_name}"

    def require_dsns(self) -> tuple[str, str]:
        """Both DSNs, or a ConfigError saying which is missing."""
        for name, value in (("SOURCE_DSN", self.source_dsn), ("SERVING_DSN", self.serving_dsn)):
            if not value:
                raise ConfigError(
                    f"{name} is not set: expected a PostgreSQL connection string such as "
                    f"postgresql://user@host:5432/dbname (or try 'cdcflow demo')"
                )
        assert self.source_dsn and self.serving_dsn
        return self.source_dsn, self.serving_dsn

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = f.metadata["env"]
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            try:
                values[f.name] = f.metadata["parse"](raw)
            except ValueError as exc:
                shown = redact_dsn(raw) if "DSN" in name else "***" if "TOKEN" in name else raw
                raise ConfigError(f"{name}={shown!r} is not valid: {exc}") from None
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data.update(changes)
        return Settings(**data)


def documented_variables() -> dict[str, str]:
    """Environment variable -> its documentation (used by docs and their test)."""
    return {f.metadata["env"]: f.metadata["doc"] for f in fields(Settings)}
