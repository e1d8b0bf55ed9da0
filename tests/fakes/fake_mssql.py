"""A FAKE SQL Server with CDC, for tests only. It is not SQL Server and runs no T-SQL.

It stands in for the ``pymssql`` module (``FakeCdcServer.driver()`` has ``connect`` and
the pymssql error classes, errors carry ``args = ((number, message),)``) and implements, in
Python, the documented behaviour of what cdcflow calls:

* LSNs are 10-byte big-endian values, increasing with each commit (by uneven steps);
  ``sys.fn_cdc_increment_lsn(x)`` is the next LSN value, ``x + 1``.
* ``sys.fn_cdc_get_min_lsn(ci)``: the capture instance's ``start_lsn``; 0x00... for an
  unknown (or empty) name. ``sys.fn_cdc_get_max_lsn()``: the newest LSN in
  ``cdc.lsn_time_mapping`` (harvested transactions, plus the capture job's idle-scan marks).
* A transaction's changes share its commit LSN (``__$start_lsn``). ``__$command_id``
  numbers the row operations of a transaction in the order they ran; an UPDATE is two
  change rows, op 3 (before) and op 4 (after), with the same seqval and command id;
  ``N'all'`` returns op 4 only, ``N'all update old'`` both.
* A *split update* (:meth:`FakeTransaction.split_update`: MERGE, an update of a
  unique-index column, a row moving in the clustered index) is recorded as a delete (op 1)
  and an insert (op 2) of the row, the insert with the LOWER ``__$seqval`` (KB 3030352,
  https://support.microsoft.com/help/3030352) but the delete with the lower
  ``__$command_id``. The change-table page says ``__$seqval`` must not be used to order
  changes inside a transaction, ``__$command_id`` must
  (https://learn.microsoft.com/sql/relational-databases/system-tables/cdc-capture-instance-ct-transact-sql).
* ``cdc.fn_cdc_get_all_changes_<ci>`` returns no ``__$command_id`` and orders by
  ``__$seqval``; the change table ``cdc.<ci>_CT`` can be read directly, with
  ``__$command_id``, and (a table, not the function) never raises error 313.
* ``cdc.fn_cdc_get_all_changes_<ci>(from, to, filter)`` raises error 313 when
  ``from < min_lsn(ci)``, ``to > max_lsn()`` or ``from > to``.
* The cleanup job (``cleanup``, or ``sys.sp_cdc_cleanup_change_table``) removes changes
  below a low water mark and raises the capture instance's ``start_lsn`` to it.
* The cleanup job can also run in the middle of a read
  (:meth:`FakeCdcServer.cleanup_during_next_read`): the rest of the read sees only the
  rows left, and nothing raises an error (the function checks its range once, at the
  start: sys.fn_cdc_get_min_lsn's page says to check the range against the min LSN
  because cleanup moves it, https://learn.microsoft.com/sql/relational-databases/system-functions/sys-fn-cdc-get-min-lsn-transact-sql).
* Column types as ``sys.columns`` and ``sys.types`` describe them: the CLR types
  (geography, geometry, hierarchyid) share ``system_type_id`` 240 and are told apart only
  by ``user_type_id`` (:data:`SYS_TYPES`).
* ``cdc.change_tables.start_lsn`` is NULL (and the min LSN 0x00...) until the capture job
  first processes a new capture instance. A login outside the instance's gating role also
  gets 0x00... (sys.fn_cdc_get_min_lsn page). A stopped capture job
  (:meth:`FakeCdcServer.stop_capture_job`) freezes max_lsn and the last log scan session
  of ``sys.dm_cdc_log_scan_sessions``. ``SERVERPROPERTY`` answers ``version`` (12..16)
  and ``engine_edition`` (5: Azure SQL Database, which reports 12).
* DDL does not reach a capture instance (:meth:`FakeCdcServer.add_column`,
  :meth:`FakeCdcServer.drop_column`): its captured columns stay those of its creation,
  so an added column is not captured and a dropped one stays, NULL from then on; each DDL
  is a row of ``cdc.ddl_history`` per capture instance
  (https://learn.microsoft.com/sql/relational-databases/system-tables/cdc-ddl-history-transact-sql).
* The capture job can lag (``auto_harvest = False``): a commit changes the table at once
  but reaches the change table and ``max_lsn`` only at :meth:`FakeCdcServer.harvest`.

Statements are recognised by matching their text against the named blocks in
``cdcflow/sql/sqlserver/*.sql`` (an unknown statement is an error), so the Python side's
queries, parameters and identifier quoting are checked; the T-SQL's own meaning is
checked only by a real server (tests/integration/test_source_contract.py).
"""

from __future__ import annotations

import datetime as dt
import random
import re
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

from cdcflow import sqlfiles
from cdcflow.sources import mssql_support as ms
from tests.fakes.fake_mssql_model import (  # noqa: F401 - the fake's public names, importable from here
    CLR_SYSTEM_TYPE_ID,
    DEMO_TABLES,
    LSN_START,
    SYS_TYPES,
    ZERO,
    DatabaseError,
    Error,
    FakeCapture,
    FakeChange,
    FakeColumn,
    FakeDdl,
    FakeTable,
    InterfaceError,
    OperationalError,
    ProgrammingError,
    _now,
    _type_name,
    error_313,
    lsn_bytes,
    lsn_int,
)
from tests.fakes.fake_mssql_session import FakeConnection, FakeCursor, FakeTransaction  # noqa: F401


class FakeCdcServer:
    """One fake database with CDC enabled. See the module docstring."""

    def __init__(
        self, *, seed: int = 0, snapshot_isolation: bool = True, version: int = 16, engine_edition: int = 3
    ) -> None:
        self.rng = random.Random(seed)
        # SERVERPROPERTY('ProductMajorVersion') and ('EngineEdition'): 13..16 are SQL Server
        # 2016..2022 (edition 2 Standard, 3 Enterprise/Developer); Azure SQL Database
        # (edition 5) and Managed Instance (8) report 12.
        self.version = version
        self.engine_edition = engine_edition
        # Change tables gained __$command_id in the cumulative updates of KB 3030352 (SQL
        # Server 2012 SP1 CU and later, 2014, 2016): a server without them answers error 207.
        self.command_id_column = True
        self.role_members: dict[str, set[str]] = {}  # database role -> users in it
        self.capture_job_running = True
        self.ddl_history: list[FakeDdl] = []  # cdc.ddl_history
        self.last_scan = _now()  # when the capture job last ended a log scan session
        self.last_lsn = LSN_START
        self.mapping: dict[int, dt.datetime] = {}  # cdc.lsn_time_mapping
        self.tables: dict[tuple[str, str], FakeTable] = {}
        self.captures: dict[str, FakeCapture] = {}
        self.pending: list[tuple[int, list[tuple[str, FakeChange]]]] = []
        self.auto_harvest = True
        self.snapshot_isolation = snapshot_isolation
        self.down = False
        self.statements: list[str] = []
        self._fail_next: Error | None = None
        self._cleanup_mid_read: tuple[str, int, int | None] | None = None
        self._current_text = ""
        self._seq = 0
        self._patterns = _patterns()

    # -- administration (what DDL, the capture job and the cleanup job do) -------

    def create_table(self, schema: str, name: str, columns: list[FakeColumn]) -> FakeTable:
        table = self.tables.setdefault((schema, name), FakeTable(schema, name, list(columns)))
        return table

    def create_demo_tables(self) -> None:
        for name, cols in DEMO_TABLES.items():
            self.create_table("dbo", name, [FakeColumn(*c) for c in cols])

    def enable_table(
        self, schema: str, name: str, capture_instance: str | None = None, role_name: str | None = None
    ) -> FakeCapture:
        """sys.sp_cdc_enable_table. The instance's start_lsn stays NULL until the capture job
        processes it (at once with ``auto_harvest``, else at the next :meth:`harvest`)."""
        instance = capture_instance or f"{schema}_{name}"
        if instance not in self.captures:
            table = self.tables[(schema, name)]
            self.captures[instance] = FakeCapture(
                instance, table, None, role_name=role_name, columns=list(table.columns)
            )
            if self.auto_harvest:
                self._start_new_instances()
        return self.captures[instance]

    def disable_table(self, instance: str) -> None:
        """sys.sp_cdc_disable_table for one capture instance: its change table, captured
        columns and ddl_history rows are dropped; a table may have two instances at once."""
        del self.captures[instance]
        self.ddl_history = [d for d in self.ddl_history if d.instance != instance]

    def _start_new_instances(self) -> None:
        for cap in self.captures.values():
            if cap.start_lsn is None:
                cap.start_lsn = self._next_lsn()
                self.mapping[cap.start_lsn] = _now()

    def add_column(self, schema: str, name: str, column: FakeColumn) -> int:
        """ALTER TABLE ... ADD: the table gains the column (NULL in existing rows); no capture
        instance captures it; cdc.ddl_history records the DDL. Returns its LSN."""
        table = self.tables[(schema, name)]
        table.columns.append(column)
        table.rows = {k: (*r, None) for k, r in table.rows.items()}
        return self._record_ddl(table, f"ALTER TABLE [{schema}].[{name}] ADD [{column.name}] {column.type_name}")

    def drop_column(self, schema: str, name: str, column: str) -> int:
        """ALTER TABLE ... DROP COLUMN: gone from the table, still in every capture instance
        (NULL in later changes); cdc.ddl_history records the DDL. Returns its LSN."""
        table = self.tables[(schema, name)]
        i = next(i for i, c in enumerate(table.columns) if c.name == column)
        del table.columns[i]
        table.rows = {k: r[:i] + r[i + 1 :] for k, r in table.rows.items()}
        return self._record_ddl(table, f"ALTER TABLE [{schema}].[{name}] DROP COLUMN [{column}]")

    def _record_ddl(self, table: FakeTable, command: str) -> int:
        lsn = self._next_lsn()
        self.mapping[lsn] = _now()
        for cap in self.captures.values():
            if cap.table is table:
                self.ddl_history.append(FakeDdl(cap.instance, lsn, command))
        return lsn

    def stop_capture_job(self, seconds_ago: float = 600) -> None:
        """The capture job (SQL Server Agent) stopped ``seconds_ago``: nothing more reaches
        the change tables or max_lsn, and sys.dm_cdc_log_scan_sessions shows no new session."""
        self.capture_job_running = False
        self.auto_harvest = False
        self.last_scan = _now() - dt.timedelta(seconds=seconds_ago)

    def _next_lsn(self) -> int:
        self.last_lsn += self.rng.randint(1, 40)
        return self.last_lsn

    def transaction(self) -> FakeTransaction:
        return FakeTransaction(self)

    def harvest(self) -> None:
        """The capture job: move committed changes into change tables and the LSN map."""
        if not self.capture_job_running:
            return
        self.last_scan = _now()
        self._start_new_instances()
        for lsn, changes in self.pending:
            self.mapping[lsn] = _now()
            for instance, change in changes:
                self.captures[instance].changes.append(change)
        self.pending = []

    def idle_scan(self) -> int:
        """The capture job's end-of-scan mark with no changes: max LSN advances."""
        if not self.capture_job_running:
            return self.max_lsn()
        self.last_scan = _now()
        lsn = self._next_lsn()
        self.mapping[lsn] = _now()
        return lsn

    def cleanup(self, instance: str, low_water_mark: int | None = None) -> int:
        """sys.sp_cdc_cleanup_change_table: drop changes below the mark, raise start_lsn."""
        cap = self.captures[instance]
        mark = self.max_lsn() if low_water_mark is None else low_water_mark
        if mark not in self.mapping:
            raise OperationalError(22964, b"LSN is not in cdc.lsn_time_mapping")
        cap.changes = [c for c in cap.changes if c.lsn >= mark]
        cap.start_lsn = max(cap.start_lsn or 0, mark)
        return cap.start_lsn

    def fail_next(self, number: int, message: str = "injected failure") -> None:
        self._fail_next = OperationalError(number, message.encode())

    # -- the documented functions ---------------------------------------------------

    def min_lsn(self, instance: str, user: str | None = None) -> int:
        """0 when the instance does not exist, has not been processed yet, or when ``user``
        may not read its changes: not in its gating role (sys.fn_cdc_get_min_lsn page)."""
        cap = self.captures.get(instance) if instance else None
        if cap is None or cap.start_lsn is None or not self.may_read(cap, user):
            return 0
        return cap.start_lsn

    def may_read(self, cap: FakeCapture, user: str | None) -> bool:
        return cap.role_name is None or user is None or user in self.role_members.get(cap.role_name, set())

    def max_lsn(self) -> int:
        return max(self.mapping, default=0)

    @staticmethod
    def increment_lsn(lsn: int) -> int:
        return lsn + 1

    def all_changes(self, instance: str, from_lsn: int, to_lsn: int, row_filter: str = "all") -> list[FakeChange]:
        cap = self.captures.get(instance)
        if cap is None:
            raise ProgrammingError(208, f"Invalid object name 'cdc.fn_cdc_get_all_changes_{instance}'.".encode())
        if from_lsn < (cap.start_lsn or 0) or to_lsn > self.max_lsn() or from_lsn > to_lsn:
            raise error_313(instance)
        rows = [c for c in cap.changes if from_lsn <= c.lsn <= to_lsn and (c.op != 3 or row_filter != "all")]
        return sorted(rows, key=lambda c: (c.lsn, c.seqval, c.op))

    # -- the driver --------------------------------------------------------------

    def driver(self) -> SimpleNamespace:
        return SimpleNamespace(
            connect=self.connect,
            Error=Error,
            InterfaceError=InterfaceError,
            DatabaseError=DatabaseError,
            OperationalError=OperationalError,
            ProgrammingError=ProgrammingError,
        )

    def connect(self, **kwargs: Any) -> FakeConnection:
        if self.down:
            raise OperationalError(20009, b"DB-Lib error message 20009, severity 9: Unable to connect")
        return FakeConnection(self, kwargs)

    def execute(self, conn: FakeConnection, text: str, params: dict | None) -> tuple[list[str] | None, list[tuple]]:
        self.statements.append(text)
        if self.down:
            raise OperationalError(20006, b"DB-Lib error message 20006: Write to the server failed")
        if self._fail_next is not None:
            err, self._fail_next = self._fail_next, None
            raise err
        self._current_text = text
        for name, pattern in self._patterns:
            m = pattern.fullmatch(text.strip())
            if m:
                return getattr(self, "_q_" + name)(conn, m.groupdict(), params or {})
        raise ProgrammingError(102, f"fake SQL Server does not know this statement: {text[:200]}".encode())

    # -- statement handlers (one per named block) -----------------------------------

    def _q_server_info(self, conn, idents, p):
        names = ["major_version", "database_name", "is_cdc_enabled", "snapshot_isolation_state"]
        row: tuple = (self.version, "fakedb", True, 1 if self.snapshot_isolation else 0)
        if "EngineEdition" in self._current_text:
            names, row = [*names, "engine_edition"], (*row, self.engine_edition)
        return names, [row]

    def _q_capture_state(self, conn, idents, p):
        cap = self.captures.get(p["capture"])
        user = conn.kwargs.get("user")
        if cap is None:
            return ["start_lsn", "role_name", "in_role"], []
        rows = [(cap.start_lsn and lsn_bytes(cap.start_lsn), cap.role_name, self.may_read(cap, user))]
        return ["start_lsn", "role_name", "in_role"], rows

    def _q_capture_job_scan(self, conn, idents, p):
        return ["seconds_since_scan"], [(int((_now() - self.last_scan).total_seconds()),)]

    def _q_capture_instances(self, conn, idents, p):
        rows = [
            (c.instance, c.start_lsn and lsn_bytes(c.start_lsn))
            for c in self.captures.values()
            if (c.table.schema, c.table.name) == (p["schema"], p["table"])
        ]
        return ["capture_instance", "start_lsn"], rows[::-1]

    def _q_capture_columns(self, conn, idents, p):
        """Captured columns joined to sys.columns: a dropped one is left out, types are the source's now."""
        cap = self.captures.get(p["capture"])
        source = {c.name: c for c in cap.table.columns} if cap else {}
        cols = [source[c.name] for c in cap.columns if c.name in source] if cap else []
        joins_types = "sys.types" in self._current_text
        return ["column_name", "type_name", "precision", "scale", "is_key"], [
            (c.name, _type_name(c.type_name, joins_types), c.precision, c.scale, c.is_key) for c in cols
        ]

    def _q_source_columns(self, conn, idents, p):
        table = self.tables.get((p["schema"], p["table"]))
        cols = table.columns if table else []
        return ["column_name", "type_name"], [(c.name, _type_name(c.type_name, True)) for c in cols]

    def _q_captured_columns(self, conn, idents, p):
        cap = self.captures.get(p["capture"])
        return ["column_name", "column_type"], [(c.name, c.type_name) for c in (cap.columns if cap else [])]

    def _q_ddl_history(self, conn, idents, p):
        lo, hi = lsn_int(p["after_lsn"]), lsn_int(p["to_lsn"])
        rows = sorted(
            (d.lsn, d.command, d.required_column_update)
            for d in self.ddl_history
            if d.instance == p["capture"] and lo < d.lsn <= hi
        )
        return ["ddl_lsn", "ddl_command", "required_column_update"], [(lsn_bytes(a), b, c) for a, b, c in rows[:1]]

    def _q_lsn_bounds(self, conn, idents, p):
        low = self.min_lsn(p["capture"], conn.kwargs.get("user"))
        return ["min_lsn", "max_lsn"], [(lsn_bytes(low), lsn_bytes(self.max_lsn()))]

    def _q_max_lsn(self, conn, idents, p):
        return ["max_lsn"], [(lsn_bytes(self.max_lsn()),)]

    def _q_read_window(self, conn, idents, p):
        inc = self.increment_lsn(lsn_int(p["after_lsn"]))
        return ["min_lsn", "max_lsn", "from_lsn"], [
            (lsn_bytes(self.min_lsn(p["capture"], conn.kwargs.get("user"))), lsn_bytes(self.max_lsn()), lsn_bytes(inc))
        ]

    def change_table(self, instance: str, from_lsn: int, to_lsn: int) -> list[FakeChange]:
        """``cdc.<ci>_CT`` read directly: every operation, in the documented order
        ``(__$start_lsn, __$command_id, __$seqval, __$operation)``; no range check."""
        cap = self.captures.get(instance)
        if cap is None:
            raise ProgrammingError(208, f"Invalid object name 'cdc.{instance}_CT'.".encode())
        rows = [c for c in cap.changes if from_lsn <= c.lsn <= to_lsn]
        return sorted(rows, key=lambda c: (c.lsn, c.command_id, c.seqval, c.op))

    def _q_changes(self, conn, idents, p):
        if "change_table" in idents:
            if not self.command_id_column:
                raise ProgrammingError(207, b"Invalid column name '__$command_id'.")
            m = re.fullmatch(r"\[cdc\]\.\[((?:[^\]]|\]\])+)_CT\]", idents["change_table"])
            assert m, f"change table not bracket-quoted: {idents['change_table']}"
            instance = m.group(1).replace("]]", "]")
            changes = self.change_table(instance, lsn_int(p["from_lsn"]), lsn_int(p["to_lsn"]))
        else:  # the function, as cdcflow read it before it read the change table
            m = re.fullmatch(r"\[cdc\]\.\[fn_cdc_get_all_changes_((?:[^\]]|\]\])+)\]", idents["changes_fn"])
            assert m, f"changes function not bracket-quoted: {idents['changes_fn']}"
            instance = m.group(1).replace("]]", "]")
            changes = self.all_changes(instance, lsn_int(p["from_lsn"]), lsn_int(p["to_lsn"]), "all")
        n = int(p["max_rows"])
        if len(changes) > n:  # TOP (n) WITH TIES ... ORDER BY __$start_lsn
            last = changes[n - 1].lsn
            changes = [c for c in changes if c.lsn <= last]
        captured = self.captures[instance].columns
        picks = _column_picks(idents["columns"], captured, alias="c")
        with_command = "change_table" in idents
        names = ["__$start_lsn", "__$seqval", "__$operation"] + (["__$command_id"] if with_command else [])
        names += ["commit_time"] + [captured[i].name for i in picks]
        return names, self._change_rows(instance, changes, picks, with_command)

    def cleanup_during_next_read(self, instance: str, after_rows: int, low_water_mark: int | None = None) -> None:
        """The cleanup job running while the next change read is under way: after that read
        has returned ``after_rows`` rows, :meth:`cleanup` runs, and the rest of the read sees
        only the rows left. Neither the function (it reads with NOLOCK and checks its range
        once, at the start) nor a table read raises an error for it."""
        self._cleanup_mid_read = (instance, after_rows, low_water_mark)

    def _change_rows(
        self, instance: str, changes: list[FakeChange], picks: list[int], with_command: bool
    ) -> Iterator[tuple]:
        pending, self._cleanup_mid_read = self._cleanup_mid_read, None
        cap = self.captures[instance]
        for n, c in enumerate(changes):
            if pending is not None and pending[0] == instance and n == pending[1]:
                self.cleanup(instance, pending[2])
                pending = None
            if not any(c is kept for kept in cap.changes):
                continue  # removed by the cleanup after the read began
            head = (lsn_bytes(c.lsn), lsn_bytes(c.seqval), c.op) + ((c.command_id,) if with_command else ())
            yield head + (self.mapping.get(c.lsn),) + tuple(c.values[i] for i in picks)

    def _q_begin_snapshot_read(self, conn, idents, p):
        if not self.snapshot_isolation:
            raise OperationalError(3952, b"Snapshot isolation transaction failed accessing database")
        conn.view = {k: dict(t.rows) for k, t in self.tables.items()}
        return None, []

    def _q_begin_read_committed(self, conn, idents, p):
        conn.view = None
        return None, []

    def _q_snapshot_rows(self, conn, idents, p):
        m = re.fullmatch(r"\[((?:[^\]]|\]\])+)\]\.\[((?:[^\]]|\]\])+)\]", idents["table"])
        assert m, f"table not bracket-quoted: {idents['table']}"
        key = (m.group(1).replace("]]", "]"), m.group(2).replace("]]", "]"))
        table = self.tables[key]
        rows = conn.view[key] if conn.view is not None else table.rows
        picks = _column_picks(idents["columns"], table.columns, alias=None)
        return [table.columns[i].name for i in picks], [tuple(r[i] for i in picks) for r in rows.values()]

    def _q_end_snapshot_read(self, conn, idents, p):
        conn.view = None
        return None, []

    def _q_enable_table(self, conn, idents, p):
        self.enable_table(p["schema"], p["table"], p["capture"])
        return None, []

    def _q_cleanup_change_table(self, conn, idents, p):
        self.cleanup(p["capture"], lsn_int(p["low_water_mark"]))
        return None, []

    def _q_bootstrap_10_schema(self, conn, idents, p):
        self.create_demo_tables()
        return None, []

    def _q_bootstrap_20_seed(self, conn, idents, p):
        if not self.tables[("dbo", "customers")].rows:
            with self.transaction() as tx:
                for seg in ("ENTERPRISE", "SMB", "CONSUMER", "SMB", "CONSUMER"):
                    tx.insert("customers", segment=seg, is_active=True, updated_at=_now())
        return None, []

    def _q_bootstrap_noop(self, conn, idents, p):
        return None, []


def _column_picks(text: str, columns: list[FakeColumn], alias: str | None) -> list[int]:
    prefix = rf"\[{alias}\]\." if alias else ""
    names = [m.replace("]]", "]") for m in re.findall(prefix + r"\[((?:[^\]]|\]\])+)\]", text)]
    by_name = {c.name: i for i, c in enumerate(columns)}
    assert names, f"unquoted columns: {text}"
    for n in names:
        if n not in by_name:
            raise ProgrammingError(207, f"Invalid column name '{n}'.".encode())
    return [by_name[n] for n in names]


def _patterns() -> list[tuple[str, re.Pattern[str]]]:
    """Regexes for every statement cdcflow may send: the named blocks, and bootstrap batches."""
    out = []
    for path in (ms.QUERIES, "sqlserver/enable_cdc.sql"):
        for name, text in sqlfiles.queries(path).items():
            pattern = re.sub(r"\\\{([a-z_]+)\\\}", r"(?P<\1>.+?)", re.escape(text))
            out.append((name, re.compile(pattern, re.S)))
    for script, batches in ms.bootstrap_scripts(demo=True):
        handler = {"10_schema.sql": "bootstrap_10_schema", "20_seed.sql": "bootstrap_20_seed"}.get(script)
        for i, batch in enumerate(batches):
            # The schema script creates all tables in its first batch's handler; the rest are no-ops.
            name = handler if handler and i == 0 else "bootstrap_noop"
            out.append((name, re.compile(re.escape(batch), re.S)))
    return out


def demo_server(seed: int, dsn: str) -> FakeCdcServer:
    """A fake server with the demo schema created and CDC enabled on it, as ``cdcflow
    bootstrap --demo`` leaves a real one."""
    from cdcflow.sources.sqlserver import SqlServerSource

    srv = FakeCdcServer(seed=seed)
    source = SqlServerSource(dsn, ("public.customers", "public.orders", "public.payments"), driver=srv.driver())
    source.prepare(demo=True)
    source.close()
    return srv
