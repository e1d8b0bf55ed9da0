"""Reading a cycle's input: the delta of each table, and the stored rows it touches.

The delta of a table is the latest version of each key changed in ``(checkpoint,
cutoff]`` (a range scan on the staging primary key), typed from the staging catalog.

The closure starts from the changed rows, old versions (read from the state by key) and
new ones, and follows the join edges of every branch, reading the state by index: a row
reached over an edge sends its join values on along the *other* edges of its alias; back
along the same edge too when its side of that join is preserved (an outer join), since
whether it is NULL-extended depends on its matches. Starting rows send along every
edge. It stops when no edge has a value it has not sent. Every result row that involves a
changed row is then made only of loaded rows, and every loaded row of a preserved side
has its matches loaded, before and after (``docs/projections.md`` has the argument).

Sending back along a join whose ON is just the equalities of the edge, one unchanged match
per value is enough (a *witness*): with it loaded, the preserved row is not NULL-extended
before nor after, and every row it joins stands in both runs and cancels out. So an order
added to a customer with 10,000 orders (``customers LEFT JOIN orders``) reads one of them,
not all. A witness is loaded but sends nothing on.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql

from cdcflow.projections.arrowio import read_arrow
from cdcflow.projections.pgtables import state_table
from cdcflow.projections.pgtypes import LSN, array_literal, arrow_type
from cdcflow.projections.plan import Edge, Plan, TableUse
from cdcflow.projections.storage import Layout

_SEP = "\x1f"


def state_schema(layout: Layout, use: TableUse) -> pa.Schema:
    return pa.schema([(c.name, LSN if c.name == "__lsn" else arrow_type(c.type)) for c in layout.state_columns(use)])


def delta_schema(layout: Layout, use: TableUse) -> pa.Schema:
    return state_schema(layout, use).append(pa.field("__deleted", pa.bool_()))


def read_delta(conn: psycopg.Connection, layout: Layout, use: TableUse, after: int, upto: int) -> pa.Table:
    """The latest change of each key of ``use``'s table in ``(after, upto]``, with ``__deleted``."""
    cols = [c.name for c in layout.state_columns(use)]
    key = sql.SQL(", ").join(sql.Identifier(k) for k in use.table.key)
    query = sql.SQL(
        "SELECT DISTINCT ON ({key}) {cols}, __op = 1 AS __deleted FROM {table} "
        "WHERE __lsn > %(after)s AND __lsn <= %(upto)s AND __op <> 3 ORDER BY {key}, __lsn DESC, __seqval DESC"
    ).format(key=key, cols=sql.SQL(", ").join(sql.Identifier(c) for c in cols), table=sql.Identifier(use.table.staging))
    return read_arrow(conn, query, delta_schema(layout, use), {"after": after, "upto": upto})


def key_of(table: pa.Table, cols: tuple[str, ...], types: list[pa.DataType] | None = None) -> pa.Array:
    """One comparable value per row for ``cols`` (NULL when any is NULL): the column itself,
    or the columns' texts joined. ``types``: cast each column first (to compare across types)."""
    arrays = []
    for i, c in enumerate(cols):
        column = table.column(c).combine_chunks() if table.num_rows else pa.array([], table.schema.field(c).type)
        if types is not None and column.type != types[i]:
            column = pc.cast(column, types[i], safe=False)
        arrays.append(column)
    if len(arrays) == 1:
        return arrays[0]
    return pc.binary_join_element_wise(*(pc.cast(a, pa.string()) for a in arrays), _SEP)


@dataclass(frozen=True)
class Direction:
    """One way along an edge: rows of ``source`` send their ``source_cols`` to ``target``."""

    edge: Edge
    source: tuple[int, str]  # (branch, alias)
    source_cols: tuple[str, ...]
    target: tuple[int, str]
    target_cols: tuple[str, ...]
    target_table: str
    back: bool  # rows reached this way also send back along the same edge (preserved side)


class Closure:
    """Loads, per table, the stored rows a delta touches (see the module docstring)."""

    def __init__(self, plan: Plan, layout: Layout) -> None:
        self.plan = plan
        self.layout = layout
        self.tables = {a.table.source_table: plan.tables[a.table.source_table] for a in plan.aliases()}
        self.alias_table = {(a.branch, a.name): a.table.source_table for a in plan.aliases()}
        self.outgoing: dict[tuple[int, str], list[Direction]] = defaultdict(list)
        for branch in plan.branches:
            for edge in branch.edges:
                for source, source_cols, target, target_cols, back in edge.directions():
                    direction = Direction(
                        edge,
                        (branch.index, source),
                        source_cols,
                        (branch.index, target),
                        target_cols,
                        branch.alias(target).table.source_table,
                        back,
                    )
                    self.outgoing[(branch.index, source)].append(direction)
        self.rows_read = 0
        self.queries = 0

    def _fetch(self, conn: psycopg.Connection, table: str, lookups: list[tuple[tuple[str, ...], pa.Table]]) -> pa.Table:
        use = self.tables[table]
        conds: list[sql.Composable] = []
        params: list[str] = []
        for cols, values in lookups:
            types = [use.types[c] for c in cols]
            if len(cols) == 1:
                conds.append(sql.SQL("{} = ANY(%s::{}[])").format(sql.Identifier(cols[0]), sql.SQL(types[0])))
            else:
                conds.append(
                    sql.SQL("({}) IN (SELECT * FROM unnest({}))").format(
                        sql.SQL(", ").join(sql.Identifier(c) for c in cols),
                        sql.SQL(", ").join(sql.SQL("%s::{}[]").format(sql.SQL(t)) for t in types),
                    )
                )
            params.extend(array_literal(values.column(c)) for c in cols)
        state_cols = sql.SQL(", ").join(sql.Identifier(c.name) for c in self.layout.state_columns(use))
        query = sql.SQL("SELECT {} FROM {} WHERE {}").format(
            state_cols, sql.Identifier(state_table(self.plan.name, use.table.capture)), sql.SQL(" OR ").join(conds)
        )
        self.queries += 1
        return read_arrow(conn, query, state_schema(self.layout, use), params)

    def _witnesses(
        self, conn: psycopg.Connection, table: str, cols: tuple[str, ...], values: pa.Table, changed: pa.Table | None
    ) -> pa.Table:
        """One unchanged stored row per value of ``cols`` (none where no row has it)."""
        use = self.tables[table]
        key = list(use.table.key)
        types = [use.types[c] for c in cols]
        params = [array_literal(values.column(c)) for c in cols]
        unnest = sql.SQL(", ").join(sql.SQL("%s::{}[]").format(sql.SQL(t)) for t in types)
        value_names = sql.SQL(", ").join(sql.Identifier(f"v{i}") for i in range(len(cols)))
        match = [sql.SQL("s.{} = v.{}").format(sql.Identifier(c), sql.Identifier(f"v{i}")) for i, c in enumerate(cols)]
        if changed is not None and changed.num_rows:
            match.append(
                sql.SQL("NOT (({}) IN (SELECT * FROM unnest({})))").format(
                    sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(k)) for k in key),
                    sql.SQL(", ").join(sql.SQL("%s::{}[]").format(sql.SQL(use.types[k])) for k in key),
                )
            )
            params.extend(array_literal(changed.column(k)) for k in key)
        state_cols = sql.SQL(", ").join(
            sql.SQL("s.{}").format(sql.Identifier(c.name)) for c in self.layout.state_columns(use)
        )
        query = sql.SQL(
            "SELECT w.* FROM unnest({unnest}) AS v({v}) CROSS JOIN LATERAL "
            "(SELECT {cols} FROM {table} AS s WHERE {match} LIMIT 1) AS w"
        ).format(
            unnest=unnest,
            v=value_names,
            cols=state_cols,
            match=sql.SQL(" AND ").join(match),
            table=sql.Identifier(state_table(self.plan.name, use.table.capture)),
        )
        self.queries += 1
        return read_arrow(conn, query, state_schema(self.layout, use), params)

    def load(self, conn: psycopg.Connection, deltas: dict[str, pa.Table]) -> dict[str, pa.Table]:
        """Stored rows (old versions) of every table, closed under the joins, from ``deltas``.

        Round by round, one query per table: the first reads the old versions of the changed
        keys together with the rows the new versions join with."""
        loaded = _Loaded(self)
        pending: dict[Direction, list[pa.Table]] = defaultdict(list)
        witness: dict[Direction, list[pa.Table]] = defaultdict(list)
        looked: dict[tuple[str, tuple[str, ...]], pa.Array] = {}
        changed: dict[str, pa.Table] = {}  # table -> its changed keys, whose old versions the first round reads
        for table, delta in deltas.items():
            if table not in self.tables or delta.num_rows == 0:
                continue
            changed[table] = _unique(delta, tuple(self.tables[table].table.key))
            live = delta.filter(pc.invert(delta.column("__deleted"))).drop_columns(["__deleted"])
            if live.num_rows:
                self._send_from(table, live.cast(loaded.rows[table].schema), pending)
        sent: dict[Direction, pa.Array] = {}
        while pending or witness or changed:
            self._load_witnesses(conn, witness, deltas, looked, loaded.add)
            witness = defaultdict(list)
            requests = self._requests(pending, sent)
            pending = defaultdict(list)
            for table, lookups in self._lookups(changed, requests, looked).items():
                loaded.add(table, self._fetch(conn, table, lookups))
            for table, keys in changed.items():  # old versions start from here, along every edge
                key = tuple(self.tables[table].table.key)
                have = loaded.rows[table]
                old = have.filter(pc.is_in(key_of(have, key), value_set=key_of(keys, key)))
                if old.num_rows:
                    self._send_from(table, old, pending)
            changed = {}
            self._send_arrived(requests, loaded.rows, pending, witness)
        return loaded.rows

    def _send_from(self, table: str, rows: pa.Table, pending: dict[Direction, list[pa.Table]]) -> None:
        """Rows of ``table`` send along every edge of every alias of it."""
        for alias in self._aliases_of(table):
            for direction in self.outgoing[alias]:
                pending[direction].append(rows)

    def _lookups(
        self,
        changed: dict[str, pa.Table],
        requests: dict[tuple[str, tuple[str, ...]], list[tuple[Direction, pa.Table]]],
        looked: dict[tuple[str, tuple[str, ...]], pa.Array],
    ) -> dict[str, list[tuple[tuple[str, ...], pa.Table]]]:
        """This round's (columns, values) to read by, per table: the changed keys, and the
        requested values not looked up before (``looked`` records both)."""
        by_table: dict[str, list[tuple[tuple[str, ...], pa.Table]]] = defaultdict(list)
        for table, keys in changed.items():
            key = tuple(self.tables[table].table.key)
            looked[(table, key)] = key_of(keys, key)
            by_table[table].append((key, keys))
        for (table, cols), entries in requests.items():
            values = _unique(pa.concat_tables([v for _, v in entries]), cols)
            if (table, cols) in looked:
                values = values.filter(pc.invert(pc.is_in(key_of(values, cols), value_set=looked[(table, cols)])))
            if values.num_rows:
                new_keys = key_of(values, cols)
                looked[(table, cols)] = (
                    new_keys if (table, cols) not in looked else pa.concat_arrays([looked[(table, cols)], new_keys])
                )
                by_table[table].append((cols, values))
        return by_table

    def _send_arrived(
        self,
        requests: dict[tuple[str, tuple[str, ...]], list[tuple[Direction, pa.Table]]],
        loaded: dict[str, pa.Table],
        pending: dict[Direction, list[pa.Table]],
        witness: dict[Direction, list[pa.Table]],
    ) -> None:
        """Rows reached over a direction send on along the other edges of their alias; back
        along the same edge only when that side is preserved, as witnesses for a sole join."""
        for (table, cols), entries in requests.items():
            have = loaded[table]
            if have.num_rows == 0:
                continue
            have_key = key_of(have, cols)
            for came, values in entries:
                arrived = have.filter(pc.is_in(have_key, value_set=key_of(values, cols)))
                if arrived.num_rows == 0:
                    continue
                for onward in self.outgoing[came.target]:
                    if onward.edge is came.edge and onward.target == came.source:
                        if not came.back:
                            continue
                        if onward.edge.sole:
                            witness[onward].append(arrived)
                            continue
                    pending[onward].append(arrived)

    def _aliases_of(self, table: str) -> list[tuple[int, str]]:
        return [alias for alias, t in self.alias_table.items() if t == table]

    def _requests(
        self, pending: dict[Direction, list[pa.Table]], sent: dict[Direction, pa.Array]
    ) -> dict[tuple[str, tuple[str, ...]], list[tuple[Direction, pa.Table]]]:
        """The values each direction has not sent yet, by the (table, columns) they look up."""
        requests: dict[tuple[str, tuple[str, ...]], list[tuple[Direction, pa.Table]]] = defaultdict(list)
        for direction, sources in pending.items():
            values = self._values_sent(direction, sources)
            if direction in sent and values.num_rows:
                values = values.filter(
                    pc.invert(pc.is_in(key_of(values, direction.target_cols), value_set=sent[direction]))
                )
            if values.num_rows == 0:
                continue
            new_keys = key_of(values, direction.target_cols)
            sent[direction] = new_keys if direction not in sent else pa.concat_arrays([sent[direction], new_keys])
            requests[(direction.target_table, direction.target_cols)].append((direction, values))
        return requests

    def _values_sent(self, direction: Direction, sources: list[pa.Table]) -> pa.Table:
        """The distinct values rows of ``sources`` send along ``direction``, named and typed
        as the target's columns."""
        target = self.tables[direction.target_table]
        types = [arrow_type(target.types[c]) for c in direction.target_cols]
        return _unique(
            pa.concat_tables([rows.select(list(direction.source_cols)) for rows in sources]),
            direction.source_cols,
            rename=direction.target_cols,
            types=types,
        )

    def _load_witnesses(self, conn, witness, deltas, looked, add) -> None:
        """For rows sent back along a sole-equality join: a witness per value not yet read in full."""
        by_target: dict[tuple[str, tuple[str, ...]], list[pa.Table]] = defaultdict(list)
        for direction, sources in witness.items():
            by_target[(direction.target_table, direction.target_cols)].append(self._values_sent(direction, sources))
        for (table, cols), parts in by_target.items():
            values = _unique(pa.concat_tables(parts), cols)
            if (table, cols) in looked:
                values = values.filter(pc.invert(pc.is_in(key_of(values, cols), value_set=looked[(table, cols)])))
            if values.num_rows:
                key = tuple(self.tables[table].table.key)
                changed = _unique(deltas[table], key) if table in deltas else None
                add(table, self._witnesses(conn, table, cols, values, changed))


class _Loaded:
    """The stored rows one :meth:`Closure.load` has read, per table, each key once."""

    def __init__(self, closure: Closure) -> None:
        self.closure = closure
        self.rows = {t: state_schema(closure.layout, u).empty_table() for t, u in closure.tables.items()}
        self.keys: dict[str, list[pa.Array]] = defaultdict(list)

    def add(self, table: str, rows: pa.Table) -> None:
        key = tuple(self.closure.tables[table].table.key)
        if self.keys[table] and rows.num_rows:
            known = pa.chunked_array(self.keys[table])
            rows = rows.filter(pc.invert(pc.is_in(key_of(rows, key), value_set=known)))
        if rows.num_rows:
            self.closure.rows_read += rows.num_rows
            self.rows[table] = pa.concat_tables([self.rows[table], rows])
            self.keys[table].append(key_of(rows, key))


def _fits(value: object, to: pa.DataType) -> bool:
    """Whether ``value`` converts to ``to`` without loss."""
    if value is None:
        return True
    try:
        pa.array([value]).cast(to)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return False
    return True


def _unique(
    table: pa.Table,
    cols: tuple[str, ...],
    rename: tuple[str, ...] | None = None,
    types: list[pa.DataType] | None = None,
) -> pa.Table:
    """The distinct non-NULL value tuples of ``cols`` (renamed and cast to ``types``).

    A value the cast cannot represent (a bigint beyond an integer's range, 100 for a
    numeric(3,1), 1.25 for a numeric(3,1)) equals no value of the type it is cast to: its
    tuple is dropped, where the cast would wrap or round it (or PostgreSQL's refuse it)."""
    tuples = table.select(list(cols))
    if rename:
        tuples = tuples.rename_columns(list(rename))
        cols = rename
    if types is not None:
        kept = None
        columns = {}
        for i, c in enumerate(cols):
            have = tuples.column(c)
            if have.type == types[i]:
                columns[c] = have
                continue
            try:
                columns[c] = pc.cast(have, types[i])
                continue
            except pa.ArrowInvalid:
                pass
            fits = pa.array([_fits(v, types[i]) for v in have.to_pylist()], pa.bool_())
            kept = fits if kept is None else pc.and_(kept, fits)
            columns[c] = pc.cast(pc.if_else(fits, have, pa.scalar(None, have.type)), types[i])
        tuples = pa.table(columns)
        if kept is not None:
            tuples = tuples.filter(kept)  # NULL (a NULL value) drops the tuple too
    for c in cols:
        tuples = tuples.filter(pc.is_valid(tuples.column(c)))
    if tuples.num_rows == 0:
        return tuples
    return tuples.group_by(list(cols)).aggregate([])
