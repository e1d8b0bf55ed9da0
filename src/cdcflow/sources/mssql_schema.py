"""Schema changes on a captured SQL Server table.

DDL on a source table does not change its capture instance: the instance keeps the columns
it was created with (``cdc.captured_columns``). A column added to the table is not
captured; a dropped column stays in the change table, NULL from then on; each such DDL is
a row of ``cdc.ddl_history``
(https://learn.microsoft.com/sql/relational-databases/track-changes/about-change-data-capture-sql-server,
"Handling changes to source tables";
https://learn.microsoft.com/sql/relational-databases/system-tables/cdc-ddl-history-transact-sql).

* :func:`warn_uncaptured` (at start-up): columns of the table (``sys.columns``) the capture
  instance does not capture, one warning line each: they are not staged.
* :class:`DdlWatch` (every read): a DDL in ``cdc.ddl_history`` inside the read's window that
  dropped or retyped a captured column stops the read just before it, and the next read
  raises :class:`~cdcflow.errors.SchemaDriftError` (the capture is PAUSED, every change
  before the DDL staged), instead of staging NULLs. An additive DDL is a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from cdcflow.errors import SchemaDriftError
from cdcflow.positions import format_mssql_lsn, mssql_lsn_to_bytes
from cdcflow.sources import mssql_support as ms
from cdcflow.sources.mssql_changes import lsn

log = logging.getLogger(__name__)

Run = Callable[..., list[tuple]]
SWITCH_DOC = "docs/sqlserver.md#schema-changes"


@dataclass
class Drift:
    added: list[str] = field(default_factory=list)  # in the table, not captured
    dropped: list[str] = field(default_factory=list)  # captured, gone from the table
    retyped: list[tuple[str, str, str]] = field(default_factory=list)  # (column, captured type, type now)

    @property
    def destructive(self) -> bool:
        return bool(self.dropped or self.retyped)


def drift(run: Run, schema: str, table: str, instance: str) -> Drift:
    """sys.columns of the table against cdc.captured_columns of the capture instance."""
    source = dict(run("reading sys.columns", ms.query("source_columns"), {"schema": schema, "table": table}))
    captured = dict(run("reading cdc.captured_columns", ms.query("captured_columns"), {"capture": instance}))
    out = Drift(added=[c for c in source if c not in captured])
    for name, was in captured.items():
        if name not in source:
            out.dropped.append(name)
        elif str(was).lower() != str(source[name]).lower():
            out.retyped.append((name, str(was), str(source[name])))
    return out


def warn_uncaptured(run: Run, schema: str, table: str, instance: str) -> Drift:
    """Log one line per column of the table that the capture instance does not capture."""
    found = drift(run, schema, table, instance)
    for name in found.added:
        log.warning(
            "column %s.%s.%s is not captured by capture instance %s (added to the table after it was created): "
            "it is not staged (%s)",
            schema,
            table,
            name,
            instance,
            SWITCH_DOC,
        )
    return found


class DdlWatch:
    """Where a read must stop for DDL on its table (see the module docstring)."""

    def __init__(self, run: Run) -> None:
        self._run = run
        self._warned: set[int] = set()

    def read_until(self, schema: str, table: str, capture: str, instance: str, after: int, to: int) -> int:
        """``to``, or the LSN just before a destructive DDL in ``(after, to]``; raises
        SchemaDriftError when that DDL is the next LSN after ``after``."""
        rows = self._run(
            "reading cdc.ddl_history",
            ms.query("ddl_history"),
            {"capture": instance, "after_lsn": mssql_lsn_to_bytes(after), "to_lsn": mssql_lsn_to_bytes(to)},
        )
        if not rows:
            return to
        ddl_lsn, command = lsn(rows[0][0]), " ".join(str(rows[0][1]).split())
        found = drift(self._run, schema, table, instance)
        if not found.destructive:
            if ddl_lsn not in self._warned:
                self._warned.add(ddl_lsn)
                warn_uncaptured(self._run, schema, table, instance)
            return to
        if ddl_lsn > after + 1:
            return ddl_lsn - 1  # stage everything before the DDL first
        raise SchemaDriftError(_drift_message(schema, table, capture, instance, ddl_lsn, command, found))


def _drift_message(schema: str, table: str, capture: str, instance: str, ddl_lsn: int, command: str, d: Drift) -> str:
    what = [f"{c} dropped" for c in d.dropped] + [f"{c} retyped {was} -> {now}" for c, was, now in d.retyped]
    return (
        f"{schema}.{table} changed at {format_mssql_lsn(ddl_lsn)} ({'; '.join(what)}; cdc.ddl_history: {command!r}), "
        f"and capture instance {instance} still has the old columns (a dropped one reads as NULL); capture "
        f"{capture} is paused with every change before it staged: move to a capture instance with the table's "
        f"columns now, drop a dropped column from the staging table too, and run 'cdcflow resync' ({SWITCH_DOC})"
    )


def successor(run: Run, schema: str, table: str, gone: str, from_lsn: int, columns: tuple[str, ...]) -> str | None:
    """The table's other capture instance that can take over from ``gone`` (disabled) at
    ``from_lsn`` without a gap: it has been processed, starts at or before ``from_lsn`` (it
    holds every change from its start on), and captures every staged column. None if none.

    This is the second half of Microsoft's switch for a changed table: create a second
    capture instance, let readers reach its start, then disable the first.
    """
    rows = run("reading cdc.change_tables", ms.query("capture_instances"), {"schema": schema, "table": table})
    for name, start in rows:  # newest first
        if name == gone or start is None or lsn(start) > from_lsn:
            continue
        captured = {r[0] for r in run("reading cdc.captured_columns", ms.query("captured_columns"), {"capture": name})}
        missing = [c for c in columns if c not in captured]
        if missing:
            log.warning(
                "capture instance %s of %s.%s cannot take over from %s: it does not capture %s",
                name,
                schema,
                table,
                gone,
                ", ".join(missing),
            )
            continue
        return ms.check_capture_instance(name)
    return None
