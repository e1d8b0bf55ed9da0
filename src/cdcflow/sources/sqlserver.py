"""SQL Server source: native CDC (the ``sys.fn_cdc_*`` LSN functions, the change tables), gap-safe.

One ingestor per capture instance: :meth:`SqlServerSource.streams` (and
:meth:`SqlServerSource.per_capture`) give one source object per captured table, and only
such a single-capture object reads changes. Positions are the 10-byte LSNs as ints (``cdcflow.positions``).

Per read, for watermark ``W`` (every change with ``__$start_lsn <= W`` is staged):

* ``min = sys.fn_cdc_get_min_lsn(<capture instance>)`` (the name is never empty),
  ``max = sys.fn_cdc_get_max_lsn()``, ``from = sys.fn_cdc_increment_lsn(W)``.
* ``from < min``: the cleanup job (or a re-created capture instance) removed changes we
  have not staged. That is a :class:`GapError` (capture state ``GAP`` with the range),
  never "no rows".
* ``from > max``: nothing new; wait (at most ``wait_seconds``) for the capture job.
* Otherwise read the change table ``cdc.<ci>_CT`` for ``[from, max]`` in
  ``(__$start_lsn, __$command_id, __$seqval, __$operation)`` order
  (:mod:`cdcflow.sources.mssql_changes` says why and how seqvals are staged) with
  ``TOP (n) WITH TIES`` on ``__$start_lsn``: the row cap never splits an LSN. Fewer than
  ``n`` rows means the whole window was read, so the new watermark is ``max`` even with no
  rows: an idle capture advances. ``n`` rows or more: the watermark is the last row's LSN.
* After the read, ``min`` is read again: a table read checks no range, so a cleanup that
  ran during the read is seen only there (``min > from``: a gap, and the batch is not
  committed).

Snapshots: :meth:`SqlServerSource.snapshot` (the method and why it is consistent are in
its docstring); :mod:`cdcflow.sources.mssql_snapshot` stages one into serving with the
watermark, and with ``repair=True`` is the resync after a GAP. The reader holds no stream and frees
nothing: retention is the CDC cleanup job's, so :meth:`confirm` does nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterable
from types import ModuleType
from typing import TYPE_CHECKING, Any

from cdcflow import db, sqlfiles
from cdcflow.errors import CdcflowError, GapError, SourceConfigError, TerminalError, TransientError
from cdcflow.positions import format_mssql_lsn, mssql_lsn_from_bytes, mssql_lsn_to_bytes
from cdcflow.sources import mssql_schema as mschema
from cdcflow.sources import mssql_snapshot
from cdcflow.sources import mssql_state as mstate
from cdcflow.sources import mssql_support as ms
from cdcflow.sources.base import OP_SNAPSHOT, BatchResult, ChangeSink, Column, SourceFacts, Stream, TableSpec, copy_line
from cdcflow.sources.mssql_changes import ChangeStager
from cdcflow.sources.mssql_snapshot import stage_initial_snapshot, stage_snapshot

if TYPE_CHECKING:
    import psycopg

    from cdcflow.config import Settings

__all__ = ["SqlServerSource", "sqlserver_table", "stage_initial_snapshot", "stage_snapshot"]

log = logging.getLogger(__name__)

#: How often an idle read asks for a new max LSN while it waits.
IDLE_POLL_SECONDS = 0.25
_ZERO_LSN = 0


def _lsn(raw: Any) -> int:
    """binary(10) from the driver -> int; NULL -> 0 (what the functions answer for "none")."""
    if raw is None:
        return _ZERO_LSN
    return mssql_lsn_from_bytes(bytes(raw))


def sqlserver_table(qualified: str) -> tuple[str, str]:
    """``schema.table`` -> parts; cdcflow's default schema ``public`` means ``dbo`` here."""
    schema, _, table = qualified.partition(".")
    if not table:
        schema, table = "dbo", schema
    return ("dbo" if schema == "public" else schema), table


class SqlServerSource:
    """The SQL Server implementation of :class:`cdcflow.sources.base.Source`."""

    engine = "sqlserver"

    def __init__(
        self,
        dsn: str,
        tables: Iterable[str],
        *,
        driver: ModuleType | Any | None = None,
        sleep=time.sleep,
    ) -> None:
        self.dsn = dsn
        self.params = ms.parse_dsn(dsn)  # registers the password with the redactor
        self.tables = tuple(sqlserver_table(t) for t in tables)
        self._driver = driver
        self._sleep = sleep
        self._conn: Any = None
        self._specs: list[TableSpec] | None = None
        self._instances: dict[str, str] = {}  # spec.capture -> the capture instance's real name
        self.skip_captures: set[str] = set()
        self._job_watch = mstate.CaptureJobWatch(self._run)
        self._ddl = mschema.DdlWatch(self._run)
        #: Unused: one capture per instance, so its stream starts at its own watermark.
        self.floors: dict[str, int] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> SqlServerSource:
        source_dsn, _ = settings.require_dsns()
        return cls(source_dsn, settings.capture_tables)

    # -- connection -------------------------------------------------------------

    def driver(self) -> Any:
        if self._driver is None:
            self._driver = ms.load_driver()
        return self._driver

    def conn(self) -> Any:
        if self._conn is None:
            drv = self.driver()
            try:
                self._conn = drv.connect(**self.params.connect_kwargs())
            except drv.Error as exc:
                raise ms.wrap_connect_error(self.params.describe(), exc) from None
        return self._conn

    def _run(self, what: str, sql: str, params: dict | None = None) -> list[tuple]:
        """Run one statement and fetch its rows (if it has any)."""
        drv = self.driver()
        try:
            cur = self.conn().cursor()
            try:
                cur.execute(sql, params) if params is not None else cur.execute(sql)
                return list(cur.fetchall()) if cur.description else []
            finally:
                cur.close()
        except drv.Error as exc:
            err = ms.wrap_error(what, exc)
            if isinstance(err, TransientError):
                self.close()
            raise err from None

    def check(self) -> None:
        """CDC is enabled on the database; else one line on how to fix it."""
        rows = self._run("reading server settings", ms.query("server_info"))
        if not rows:
            raise SourceConfigError("cannot read sys.databases for the source database")
        major, database, cdc_enabled, _, engine_edition = rows[0]
        mstate.check_version(major, engine_edition)
        if not cdc_enabled:
            raise SourceConfigError(
                f"change data capture is not enabled on database {database!r}: run 'cdcflow bootstrap' as "
                "a sysadmin (it runs sys.sp_cdc_enable_db), or EXEC sys.sp_cdc_enable_db yourself"
            )

    def privilege_problems(self, settings: Settings) -> list[str]:
        """Not checked ahead: enabling CDC (sysadmin, db_owner) fails with SQL Server's own message."""
        return []

    def prepare(self, *, demo: bool = False) -> None:
        """Idempotent: enable CDC on the database (and, for the demo, create the demo tables
        and their rows), then enable CDC on each captured table."""
        for name, batches in ms.bootstrap_scripts(demo):
            log.info("source: running sqlserver/bootstrap/%s", name)
            for batch in batches:
                self._run(f"running sqlserver/bootstrap/{name}", batch)
        enable = sqlfiles.queries("sqlserver/enable_cdc.sql")["enable_table"]
        for schema, table in self.tables:
            capture = ms.check_capture_instance(f"{schema}_{table}")
            params = {"schema": schema, "table": table, "capture": capture}
            self._run(f"enabling CDC on {schema}.{table}", enable, params)

    # -- metadata ---------------------------------------------------------------

    def _capture_instance(self, schema: str, table: str) -> str:
        rows = self._run("reading cdc.change_tables", ms.query("capture_instances"), {"schema": schema, "table": table})
        default = f"{schema}_{table}"
        names = [r[0] for r in rows]
        if not names:
            raise SourceConfigError(
                f"table {schema}.{table} has no CDC capture instance (or it does not exist): run 'cdcflow "
                f"bootstrap', or EXEC sys.sp_cdc_enable_table @source_schema=N'{schema}', @source_name=N'{table}', "
                "@role_name=NULL"
            )
        name = default if default in names else names[0]  # newest first
        return ms.check_capture_instance(name)

    def describe_tables(self) -> list[TableSpec]:
        if self._specs is not None:
            return self._specs
        specs = []
        for schema, table in self.tables:
            instance = self._capture_instance(schema, table)
            rows = self._run("reading captured columns", ms.query("capture_columns"), {"capture": instance})
            columns = []
            for name, type_name, precision, scale, is_key in rows:
                type_sql = ms.pg_type(type_name, precision, scale) if type_name else None
                if type_sql is None:
                    raise SourceConfigError(
                        ms.unsupported_type_message(f"{schema}.{table}.{name}", type_name, instance)
                    )
                columns.append(Column(name, type_sql, bool(is_key)))
            if not any(c.is_key for c in columns):
                raise SourceConfigError(
                    f"capture instance {instance} of {schema}.{table} has no key columns: give the table a "
                    "primary key (or @index_name when enabling CDC) so cdcflow can keep each row's latest state"
                )
            mschema.warn_uncaptured(self._run, schema, table, instance)
            spec = TableSpec(schema, table, tuple(columns))
            self._instances[spec.capture] = instance
            specs.append(spec)
        self._specs = specs
        return specs

    def use_specs(self, specs: list[TableSpec]) -> None:
        """Stage these (reconciled with staging) column lists instead of the catalog's."""
        self.describe_tables()  # the capture instance names
        unknown = [s.capture for s in specs if s.capture not in self._instances]
        if unknown:
            raise TerminalError(f"use_specs: {unknown[0]} is not a capture of this source")
        self._specs = list(specs)

    def per_capture(self) -> list[SqlServerSource]:
        """One source per captured table: each capture instance has its own position and ingestor."""
        out = []
        for schema, table in self.tables:
            one = SqlServerSource(self.dsn, [f"{schema}.{table}"], driver=self._driver, sleep=self._sleep)
            out.append(one)
        return out

    def streams(self) -> list[Stream]:
        """One stream per capture instance, each under a lease of its own."""
        return [Stream(one, f"{one.tables[0][0]}_{one.tables[0][1]}") for one in self.per_capture()]

    def use_serving_version(self, version: int) -> None:
        """Rows are read as Python values and staged as text, whatever the serving version."""

    def _single(self) -> tuple[TableSpec, str]:
        specs = self.describe_tables()
        if len(specs) != 1:
            raise TerminalError(
                f"a SQL Server source reads one capture instance per ingestor, this one has {len(specs)}: "
                "build one ingestion worker per SqlServerSource.per_capture() item"
            )
        return specs[0], self._instances[specs[0].capture]

    # -- positions --------------------------------------------------------------

    def bounds(self) -> tuple[int, int]:
        """(min LSN of this source's capture instance, max LSN of the database)."""
        _, instance = self._single()
        rows = self._run("reading CDC LSN bounds", ms.query("lsn_bounds"), {"capture": instance})
        return _lsn(rows[0][0]), _lsn(rows[0][1])

    def current_lsn(self) -> int:
        """The newest LSN harvested by the capture job (any capture instance)."""
        return _lsn(self._run("reading the max LSN", ms.query("max_lsn"))[0][0])

    def sample_position(self) -> tuple[int, int | None]:
        """The newest LSN; SQL Server keeps its log for CDC without a per-reader figure."""
        return self.current_lsn(), None

    @staticmethod
    def format_position(value: int | None) -> str:
        """``0x`` and the 10-byte LSN in hex, as SQL Server prints it; ``-`` for none."""
        return "-" if value is None else format_mssql_lsn(value)

    def status_facts(self) -> SourceFacts:
        """No slot: positions come from the capture instances."""
        return SourceFacts()

    def _window(self, instance: str, after_lsn: int) -> tuple[int, int, int]:
        rows = self._run(
            "reading the CDC window",
            ms.query("read_window"),
            {"capture": instance, "after_lsn": mssql_lsn_to_bytes(after_lsn)},
        )
        return _lsn(rows[0][0]), _lsn(rows[0][1]), _lsn(rows[0][2])

    def _take_over(self, spec: TableSpec, instance: str, from_lsn: int) -> str:
        """``instance`` answers a min LSN of 0: read the table's other capture instance if it
        can take over without a gap (the two-instance switch), else raise why."""
        rows = self._run("reading cdc.change_tables", ms.query("capture_state"), {"capture": instance})
        if not rows:  # disabled: a successor may take over
            names = spec.column_names
            new = mschema.successor(self._run, spec.schema, spec.name, instance, from_lsn, names)
            if new is not None:
                log.warning("capture instance %s of %s is gone: reading %s from here on", instance, spec.qualified, new)
                self._instances[spec.capture] = new
                return new
        raise self._zero_min_lsn(spec, instance)

    def _zero_min_lsn(self, spec: TableSpec, instance: str) -> CdcflowError:
        return mstate.zero_min_lsn_error(self._run, instance, spec.schema, spec.name, self.params.user)

    def _gap(self, spec: TableSpec, instance: str, after_lsn: int, min_lsn: int | None, why: str) -> GapError:
        since = format_mssql_lsn(min_lsn) if min_lsn else "unknown"
        return GapError(
            f"capture instance {instance} ({spec.qualified}) no longer holds the changes after our watermark "
            f"{format_mssql_lsn(after_lsn)}: {why}; it starts at {since}. Run 'cdcflow resync' to take a fresh "
            "snapshot (and raise the CDC cleanup retention if this repeats)",
            after_lsn,
            min_lsn or None,
        )

    # -- reading ----------------------------------------------------------------

    def read_batch(self, after_lsn: int, max_rows: int, sink: ChangeSink, wait_seconds: float) -> BatchResult:
        """Hand whole LSNs after ``after_lsn`` to ``sink`` (see the module docstring)."""
        spec, instance = self._single()
        if spec.capture in self.skip_captures:
            return BatchResult(end_lsn=after_lsn)
        deadline = time.monotonic() + wait_seconds
        while True:
            min_lsn, max_lsn, from_lsn = self._window(instance, after_lsn)
            if min_lsn == _ZERO_LSN:
                instance = self._take_over(spec, instance, from_lsn)
                continue
            if from_lsn < min_lsn:
                why = "it has never been snapshotted" if after_lsn == 0 else "the CDC cleanup job removed them"
                raise self._gap(spec, instance, after_lsn, min_lsn, why)
            if from_lsn <= max_lsn:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                self._job_watch.check()  # caught up, or is the capture job stopped?
                return BatchResult(end_lsn=after_lsn)
            self._sleep(min(IDLE_POLL_SECONDS, left))
        # DDL that dropped or retyped a captured column: read up to it, then pause (mssql_schema).
        to_lsn = self._ddl.read_until(spec.schema, spec.name, spec.capture, instance, after_lsn, max_lsn)
        result = self._read_window(spec, instance, after_lsn, from_lsn, to_lsn, max(1, max_rows), sink)
        # A table read checks no range: the cleanup job may have removed rows of the window
        # while it was read. The window is whole only if the min LSN is still at or below it.
        min_after = self.bounds()[0]
        if min_after == _ZERO_LSN or min_after > from_lsn:
            raise self._gap(
                spec, instance, after_lsn, min_after, "the CDC cleanup job removed changes while they were read"
            )
        return result

    def _read_window(
        self,
        spec: TableSpec,
        instance: str,
        after_lsn: int,
        from_lsn: int,
        to_lsn: int,
        max_rows: int,
        sink: ChangeSink,
    ) -> BatchResult:
        """Stage the changes of ``[from_lsn, to_lsn]`` (whole LSNs, at most about ``max_rows``);
        order and staged seqvals: :mod:`cdcflow.sources.mssql_changes`."""
        drv = self.driver()
        sql = ms.query(
            "changes", columns=ms.column_list(spec.column_names, alias="c"), change_table=ms.change_table(instance)
        )
        params = {"max_rows": max_rows, "from_lsn": mssql_lsn_to_bytes(from_lsn), "to_lsn": mssql_lsn_to_bytes(to_lsn)}
        keys = tuple(i for i, c in enumerate(spec.columns) if c.is_key)
        stager = ChangeStager(spec.capture, sink, after_lsn, keys)
        try:
            cur = self.conn().cursor()
            try:
                cur.execute(sql, params)
                for row in cur:
                    stager.add(row)
            finally:
                cur.close()
        except drv.Error as exc:
            if ms.error_number(exc) == ms.ERROR_INVALID_COLUMN and "__$command_id" in ms.describe(exc):
                raise SourceConfigError(
                    f"the change table cdc.{instance}_CT has no __$command_id column, which cdcflow orders a "
                    "transaction's changes by: this SQL Server lacks the cumulative update of KB 3030352; install "
                    "the server's latest cumulative update"
                ) from None
            err = ms.wrap_error(f"reading changes of {instance} (cdc.{instance}_CT)", exc)
            if isinstance(err, TransientError):
                self.close()
            raise err from None
        stats = stager.finish()
        if stats.fetched >= max_rows and stats.last_lsn < to_lsn:
            end, more = stats.last_lsn, True  # capped: the last LSN came whole (WITH TIES)
        else:
            end, more = to_lsn, False  # the whole window was read: advance to it, rows or not
        last_time = stats.last_time
        if last_time is not None and last_time.tzinfo is None:
            last_time = last_time.replace(tzinfo=dt.UTC)
        return BatchResult(
            end_lsn=end,
            rows=stats.rows,
            transactions=stats.transactions,
            rows_by_capture={spec.capture: stats.rows} if stats.rows else {},
            last_commit_time=last_time,
            more_pending=more,
        )

    # -- initial snapshot -------------------------------------------------------

    def snapshot(self, sink: ChangeSink, seqval_base: int = 0) -> BatchResult:
        """Hand every current row of the captured table to ``sink`` as op 5 at ``lsn = W``.

        Method (why not Microsoft's "mark initial load start/end" of the SSIS CDC
        components: that needs the loaded range replayed with special merge rules; this
        gives the same guarantee with plain staging): read ``W = sys.fn_cdc_get_max_lsn()``
        first, in its own statement, *then* read the table in a ``SNAPSHOT`` isolation
        transaction (``READ COMMITTED`` if the database does not allow SNAPSHOT). Every
        change with LSN <= W was committed before W was read, so the table read sees it.
        Changes after W are streamed from W; some of them (committed before the read but
        not yet harvested by the capture job) are already visible in the snapshot and are
        staged again as changes. That overlap is harmless: each CDC row carries the full
        row image and is ordered after the snapshot row, so the latest state per key is
        exact. The returned ``end_lsn`` is W: commit it as the capture's watermark together
        with the rows. Raises TransientError while the capture instance has not started
        at or before W (the capture job is behind): changes before its start do not exist.
        Seqvals are ``seqval_base + row number`` (a second snapshot at the same W sorts after
        the first).
        """
        return self.snapshot_rows(sink, self.snapshot_position(), seqval_base)

    def snapshot_position(self) -> int:
        """W for a snapshot read that starts now (see :meth:`snapshot`)."""
        spec, instance = self._single()
        min_lsn, w = self.bounds()
        if min_lsn == _ZERO_LSN:
            raise self._zero_min_lsn(spec, instance)
        if w == _ZERO_LSN:
            raise TransientError(
                f"capture instance {instance} has no LSN range yet: the capture job (SQL Server Agent) has "
                "not processed it; retrying"
            )
        start = self._window(instance, w)[2]  # W + 1 in LSN terms, as the stream will start
        if start < min_lsn:
            raise TransientError(
                f"capture instance {instance} starts at {format_mssql_lsn(min_lsn)}, after the newest harvested "
                f"LSN {format_mssql_lsn(w)}: the capture job is behind; retrying"
            )
        return w

    def snapshot_rows(self, sink: ChangeSink, w: int, seqval_base: int = 0) -> BatchResult:
        """Read the table now (after :meth:`snapshot_position` gave ``w``) as op 5 at ``w``."""
        spec, _ = self._single()
        info = self._run("reading server settings", ms.query("server_info"))
        snapshot_allowed = bool(info) and info[0][3] == 1  # 1 = ON (2 and 3 are transitions)
        begin = "begin_snapshot_read" if snapshot_allowed else "begin_read_committed"
        if not snapshot_allowed:
            log.warning(
                "database does not allow SNAPSHOT isolation: snapshot of %s reads under READ COMMITTED", spec.qualified
            )
        table = ms.Quoted(ms.quote_ident(spec.schema) + "." + ms.quote_ident(spec.name))
        drv = self.driver()
        n = 0
        self._run("starting the snapshot transaction", ms.query(begin))
        try:
            cur = self.conn().cursor()
            try:
                cur.execute(ms.query("snapshot_rows", columns=ms.column_list(spec.column_names), table=table))
                for row in cur:
                    n += 1
                    sink.add_line(spec.capture, copy_line(w, seqval_base + n, OP_SNAPSHOT, None, row))
            finally:
                cur.close()
        except drv.Error as exc:
            self.close()
            raise ms.wrap_error(f"snapshot of {spec.qualified}", exc) from None
        self._run("ending the snapshot transaction", ms.query("end_snapshot_read"))
        log.info("snapshot of %s: %d rows at %s", spec.qualified, n, format_mssql_lsn(w))
        return BatchResult(
            end_lsn=w, rows=n, transactions=1 if n else 0, rows_by_capture={spec.capture: n} if n else {}
        )

    def initial_snapshot(self, serving: psycopg.Connection, settings: Settings) -> None:
        """Snapshot each capture still INIT, alone (:mod:`cdcflow.sources.mssql_snapshot`)."""
        mssql_snapshot.initial_snapshots(self, serving, settings.source_name)

    def resync(self, serving: psycopg.Connection, settings: Settings, captures: list[str] | None) -> int:
        """Each capture instance has its own position: only the named ones (default: every
        capture not OK) are re-snapshotted."""
        return mssql_snapshot.resync(self, serving, settings.source_name, captures)

    def forget(self) -> str | None:
        """Nothing is held for the reader: the next run snapshots the captures reset to INIT."""
        return None

    # -- lifecycle --------------------------------------------------------------

    def confirm(self, lsn: int) -> None:
        """Nothing to free: the CDC cleanup job, not the reader, decides retention."""

    def close_stream(self) -> None:
        """No stream is held between reads."""

    def close(self) -> None:
        db.close_quietly(self._conn)
        self._conn = None
