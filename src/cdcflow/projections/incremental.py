"""A projection defined by a SQL query, kept exactly and incrementally.

One cycle (inside the lifecycle of :mod:`.base`: lock, cutoff, one transaction):

1. read the delta of each table: the latest version per key in ``(checkpoint, cutoff]``;
2. read the stored rows the delta touches, closed under the joins (:mod:`.closure`); with
   a reader connection (``PROJECTION_PARALLEL_READS``) this runs in a thread, on the state
   as committed before the cycle, while this connection writes the new state (step 3);
3. write the new state rows of each table (deleted keys go, changed keys are replaced);
4. in DuckDB, the query over the loaded rows before and after the delta, and the exact
   change between them (:mod:`.duckplan`);
5. write that change: the touched groups' aggregate state and output values, computed in
   PostgreSQL from the state (:mod:`.storage`), or the rows that changed and left.

A rebuild is the same path from empty state with all of staging as the delta.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable, Iterator, Mapping
from concurrent import futures

import duckdb
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql

from cdcflow.config import Settings
from cdcflow.errors import DefinitionError, UncarriedValue
from cdcflow.projections import base
from cdcflow.projections.arrowio import write_arrow
from cdcflow.projections.closure import Closure, read_delta, state_schema
from cdcflow.projections.duckplan import DuckQueries, registered
from cdcflow.projections.pgtables import prefix
from cdcflow.projections.plan import Plan
from cdcflow.projections.selfcheck import SelfCheck
from cdcflow.projections.storage import Layout

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _registered(duck: duckdb.DuckDBPyConnection, tables: Mapping[str, pa.Table]) -> Iterator[None]:
    for name, table in tables.items():
        duck.register(name, table)
    try:
        yield
    finally:
        for name in tables:
            duck.unregister(name)


def _for_duckdb(table: pa.Table) -> pa.Table:
    """``real`` columns as doubles (each holding a float's exact value): arithmetic then runs
    in double precision as PostgreSQL's does where it mixes real with other types, and a real
    result is rounded back to a float's value (translate.pg_f4)."""
    for i, f in enumerate(table.schema):
        if f.type == pa.float32():
            table = table.set_column(i, f.name, table.column(i).cast(pa.float64()))
    return table


def _masks(table: pa.Table) -> list[int]:
    if table.num_rows == 0:
        return []
    return sorted(int(m) for m in pc.unique(table.column("__nulls")).to_pylist())


class SqlProjection(base.Projection):
    """An incremental projection of one definition (see the module docstring)."""

    has_self_check = True
    uses_reader = True
    mode = "incremental"

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.definition = plan.definition
        self.name = plan.name
        self.digest = plan.definition.digest
        self.layout = Layout(plan)
        self.duckq = DuckQueries(plan, self.layout)
        self.captures = tuple(sorted({u.table.capture for u in plan.tables.values()}))
        self.checker = SelfCheck(plan, self.layout)
        #: Called after each apply with what it read and wrote, by kind ("delta", "state_rows",
        #: "written"): the projection benchmark reports it. The counts are logged at DEBUG too.
        self.on_applied: Callable[[dict[str, int]], None] | None = None

    # tables -----------------------------------------------------------------------

    def layout_signature(self) -> str:
        text = ";".join(s.as_string(None) for s in self.layout.ddl())  # type: ignore[arg-type]
        return "cdcflow layout " + hashlib.sha256(text.encode()).hexdigest()[:16]

    def prepare(self, conn: psycopg.Connection) -> None:
        """Create the projection's tables as its plan lays them out. State tables are made
        anew (a rebuild refills them); the result table is kept when its layout is the
        same, so that what depends on it (views, grants) stays."""
        signature = self.layout_signature()
        current = conn.execute("SELECT obj_description(to_regclass(%s), 'pg_class')", (self.name,)).fetchone()
        for (table,) in conn.execute(
            "SELECT relname FROM pg_class WHERE relkind = 'r' AND relnamespace = current_schema()::regnamespace "
            "AND starts_with(relname, %s)",
            (prefix(self.name),),
        ).fetchall():
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table)))
        keep = current is not None and current[0] == signature
        if not keep:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(self.name)))
        for stmt in self.layout.ddl():
            if keep and _creates(stmt, self.name):
                continue
            conn.execute(stmt)
        conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(sql.Identifier(self.name), sql.Literal(signature)))

    def clear(self, conn: psycopg.Connection) -> None:
        for table in self.layout.tables():
            conn.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(table)))

    # the self-check ---------------------------------------------------------------

    def find_suspects(
        self, conn: psycopg.Connection, settings: Settings, pause: Callable[[float], bool] | None = None
    ) -> list:
        """The keys whose rows differ from the query over the state, on one snapshot of
        ``conn`` (outside any cycle)."""
        try:
            return self.checker.suspects(conn)
        finally:
            conn.rollback()

    def self_check(self, ctx: base.Context, keys: list | None = None) -> int:
        """Restate what is still wrong among ``keys`` (from :meth:`find_suspects`; None: check
        the whole projection now), under the cycle's lock."""
        keys = self.checker.suspects(ctx.conn) if keys is None else list(keys)
        restated = self.checker.restate(ctx.conn, keys)
        if restated:
            log.warning(
                "%s: self-check restated %d rows that differed from the query over the state",
                self.name,
                restated,
                extra={"action": "restate", "projection": self.name},
            )
        return restated

    # one cycle --------------------------------------------------------------------

    def _closure_on_reader(self, reader: psycopg.Connection, deltas: dict[str, pa.Table]) -> dict[str, pa.Table]:
        try:
            return Closure(self.plan, self.layout).load(reader, deltas)
        finally:
            reader.rollback()

    def apply(self, ctx: base.Context) -> int:
        conn, duck = ctx.conn, ctx.duck
        uses = list(self.plan.tables.values())
        deltas = {
            u.table.source_table: read_delta(conn, self.layout, u, ctx.after(u.table.capture), ctx.cutoff) for u in uses
        }
        state: dict[str, pa.Table] | None = None
        pending: futures.Future[dict[str, pa.Table]] | None = None
        closure = Closure(self.plan, self.layout)
        if ctx.fresh:
            state = {u.table.source_table: state_schema(self.layout, u).empty_table() for u in uses}
        elif ctx.reader is not None:
            pending = base.in_thread(f"{self.name}:state", self._closure_on_reader, ctx.reader, deltas)
        else:
            state = closure.load(conn, deltas)  # before this connection writes any state
        try:
            for u in uses:
                name, ddl = self.layout.state_temp(u)
                conn.execute(ddl)
                write_arrow(conn, name, deltas[u.table.source_table], analyze=False)
            if not ctx.fresh:
                base.index_plans(conn)
            for u in uses:
                for stmt in self.layout.write_state(u, fresh=ctx.fresh):
                    conn.execute(stmt)
            if pending is not None:
                state, pending = pending.result(), None
        finally:
            if pending is not None:  # this side failed: let the reads end before the reader is reused
                futures.wait([pending])
        assert state is not None
        inputs: dict[str, pa.Table] = {}
        for u in uses:
            inputs[registered("s", u)] = _for_duckdb(state[u.table.source_table])
            inputs[registered("d", u)] = _for_duckdb(deltas[u.table.source_table])
        with _registered(duck, inputs):
            for view in self.duckq.views():
                duck.execute(view)
            try:
                changed = self._write_groups(ctx) if self.plan.aggregated else self._write_rows(ctx)
            except duckdb.OutOfRangeException as exc:
                raise UncarriedValue(
                    f"projection {self.name}: {exc} (DuckDB's decimals have at most 38 digits, PostgreSQL's "
                    "numeric has no such bound: add '-- mode: full' to compute this projection in PostgreSQL)"
                ) from None
        if not ctx.fresh:
            base.index_plans(conn, on=False)
        touched = {
            "delta": sum(d.num_rows for d in deltas.values()),
            "state_rows": sum(s.num_rows for s in state.values()),
            "written": changed,
        }
        log.debug("%s: %s", self.name, touched)
        if self.on_applied is not None:
            self.on_applied(touched)
        return changed

    def _write_groups(self, ctx: base.Context) -> int:
        conn, duck, layout = ctx.conn, ctx.duck, self.layout
        duck.execute(self.duckq.signed())
        try:
            for arg in layout.values:
                duck.execute(self.duckq.values(arg.index))
                values = duck.sql(f"SELECT * FROM __v{arg.index}").to_arrow_table()
                name, ddl = layout.value_temp(arg)
                conn.execute(ddl)
                write_arrow(conn, name, values, analyze=False)
                for stmt in layout.write_values(arg, _masks(values), fresh=ctx.fresh):
                    conn.execute(stmt)
            diff = duck.sql(self.duckq.groups_diff()).to_arrow_table()
        finally:
            duck.execute("DROP TABLE IF EXISTS __t")
            for arg in layout.values:
                duck.execute(f"DROP TABLE IF EXISTS __v{arg.index}")
        name, ddl = layout.diff_temp()
        conn.execute(ddl)
        write_arrow(conn, name, diff, analyze=False)
        for stmt in layout.write_groups(_masks(diff), fresh=ctx.fresh):
            conn.execute(stmt)
        return diff.num_rows

    def _write_rows(self, ctx: base.Context) -> int:
        conn, duck, layout = ctx.conn, ctx.duck, self.layout
        try:
            for statement in self.duckq.rows():
                duck.execute(statement)
            dup = duck.sql(self.duckq.duplicate_key()).fetchall()
            if dup:
                *key, n = dup[0]
                raise DefinitionError(
                    f"projection {self.name}: key ({', '.join(self.plan.key)}) is not unique in the result: "
                    f"{tuple(key)} is in {n} rows; declare a key that identifies a row ('-- key:')"
                )
            written = duck.sql(self.duckq.rows_written()).to_arrow_table()
            deleted = duck.sql(self.duckq.rows_deleted()).to_arrow_table()
        finally:
            duck.execute("DROP TABLE IF EXISTS __old")
            duck.execute("DROP TABLE IF EXISTS __new")
        name, ddl = layout.diff_temp()
        conn.execute(ddl)
        write_arrow(conn, name, written, analyze=False)
        gone, ddl = layout.deleted_temp()
        conn.execute(ddl)
        write_arrow(conn, gone, deleted, analyze=False)
        for stmt in layout.write_rows(_masks(written), _masks(deleted), fresh=ctx.fresh):
            conn.execute(stmt)
        return written.num_rows + deleted.num_rows


def _creates(stmt: sql.Composable, table: str) -> bool:
    """Whether ``stmt`` (from Layout.ddl) creates ``table`` or its key index."""
    text = stmt.as_string(None)  # type: ignore[arg-type]
    return text.startswith((f'CREATE TABLE "{table}" ', f'CREATE UNIQUE INDEX "{table}_key" '))
