"""What an incremental projection keeps in the serving database, and the SQL that keeps it.

For a projection ``proj_x``:

- ``proj_x``: the result. A grouped query's table also holds, in columns named ``__...``,
  the aggregate state of each group (``__count``: its input rows; ``__n<i>``: the
  non-NULL values of argument i; ``__s<i>``: their sum) and GROUP BY keys that are not
  output columns (``__g<i>``); a query without GROUP BY has ``__source_lsn`` (the commit
  position of the version of the driving table's row each result row shows). A unique
  index (NULLS NOT DISTINCT) on the key.
- ``pst_x__<capture>``, one per table read: the latest live version of each of its rows,
  with only the columns the query uses, indexed on the key and on every join column.
- ``pst_x__v<i>``: for MIN, MAX, COUNT(DISTINCT), BOOL_AND, BOOL_OR of argument i, how
  many input rows of each group have each value.
- ``pst_x__groups``: with HAVING, the aggregate state of every group (the result then
  holds only the groups HAVING keeps).

Output values of a grouped query are computed in PostgreSQL from the aggregate state
(:mod:`.aggstate`); the tables' names and CREATE statements are in :mod:`.pgtables`.
"""

from __future__ import annotations

from psycopg import sql
from sqlglot import exp

from cdcflow.projections.aggstate import AggregateState
from cdcflow.projections.pgsql import quote
from cdcflow.projections.pgtables import (
    FILLFACTOR_GROUPS,
    FILLFACTOR_ROWS,
    Column,
    bounded_name,
    column_names,
    create_table,
    create_temp,
    groups_table,
    state_table,
    temp_name,
    value_table,
)
from cdcflow.projections.plan import Arg, Plan, TableUse

LSN_TYPE = "numeric(25,0)"


class Layout:
    """The tables of one plan and the statements over them."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.name = plan.name
        self.having = plan.aggregated and plan.having is not None
        self.state = AggregateState(plan)
        self.values = plan.value_args()
        self.key_columns = list(plan.key)
        self._built: dict[tuple, list[sql.Composed]] = {}

    def _once(self, key: tuple, build) -> list[sql.Composed]:  # type: ignore[no-untyped-def]
        """Statements depend on the plan and the NULL pattern only: each is built once."""
        if key not in self._built:
            self._built[key] = build()
        return self._built[key]

    # tables -----------------------------------------------------------------------

    def state_columns(self, use: TableUse) -> list[Column]:
        cols = [Column(c, use.types[c]) for c in use.columns]
        if use.lsn:
            cols.append(Column("__lsn", LSN_TYPE))
        return cols

    def hidden_keys(self) -> list[Column]:
        outputs = {o.name for o in self.plan.outputs}
        return [Column(g.column, g.pg_type) for g in self.plan.group_keys if g.column not in outputs]

    def projection_columns(self) -> list[Column]:
        cols = [Column(o.name, o.pg_type) for o in self.plan.outputs] + self.hidden_keys()
        if not self.plan.aggregated:
            cols.append(Column("__source_lsn", LSN_TYPE))
        elif not self.having:
            cols += self.state.part_columns()
        return cols

    def key_types(self) -> list[Column]:
        by_name = {c.name: c for c in self.projection_columns()}
        return [by_name[k] for k in self.key_columns]

    def ddl(self) -> list[sql.Composed]:
        """CREATE statements for every table of the projection."""
        out: list[sql.Composed] = []
        grouped = self.plan.aggregated and not self.having
        out += create_table(
            self.name,
            self.projection_columns(),
            unique=self.key_columns,
            fillfactor=FILLFACTOR_GROUPS if grouped else FILLFACTOR_ROWS,
        )
        for use in self.plan.tables.values():
            table = state_table(self.name, use.table.capture)
            out += create_table(table, self.state_columns(use), primary=list(use.table.key))
            for i, cols in enumerate(sorted(use.lookups)):
                if list(cols) != list(use.table.key)[: len(cols)]:
                    out.append(
                        sql.SQL("CREATE INDEX {} ON {} ({})").format(
                            sql.Identifier(bounded_name(f"{table}_j{i}")), sql.Identifier(table), column_names(cols)
                        )
                    )
        for arg in self.values:
            value_cols = [Column(f"__g{g.index}", g.pg_type) for g in self.plan.group_keys]
            value_cols += [Column("__v", arg.pg_type), Column("__cnt", "bigint")]
            out += create_table(value_table(self.name, arg), value_cols, unique=[c.name for c in value_cols[:-1]])
        if self.having:
            group_cols = [Column(f"__g{g.index}", g.pg_type) for g in self.plan.group_keys] + self.state.part_columns()
            out += create_table(
                groups_table(self.name),
                group_cols,
                unique=[c.name for c in group_cols[: len(self.plan.group_keys)]],
                fillfactor=FILLFACTOR_GROUPS,
            )
        return out

    def tables(self) -> list[str]:
        out = [self.name] + [state_table(self.name, u.table.capture) for u in self.plan.tables.values()]
        out += [value_table(self.name, a) for a in self.values]
        if self.having:
            out.append(groups_table(self.name))
        return out

    # state ------------------------------------------------------------------------

    def state_temp(self, use: TableUse) -> tuple[str, sql.Composed]:
        name = temp_name("state_", use.table.capture)
        cols = [*self.state_columns(use), Column("__deleted", "boolean")]
        return name, create_temp(name, cols)

    def write_state(self, use: TableUse, *, fresh: bool) -> list[sql.Composed]:
        """Deleted keys leave the state; changed live keys take their new version."""
        table = sql.Identifier(state_table(self.name, use.table.capture))
        tmp = sql.Identifier(temp_name("state_", use.table.capture))
        cols = self.state_columns(use)
        names = column_names(c.name for c in cols)
        if fresh:
            return [
                sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} WHERE NOT __deleted").format(table, names, names, tmp)
            ]
        key = list(use.table.key)
        match = sql.SQL(" AND ").join(sql.SQL("s.{k} = t.{k}").format(k=sql.Identifier(k)) for k in key)
        others = [c.name for c in cols if c.name not in key]
        sets = sql.SQL(", ").join(sql.SQL("{c} = t.{c}").format(c=sql.Identifier(c)) for c in others)
        values = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c.name)) for c in cols)
        merge = sql.SQL(
            "MERGE INTO {table} AS s USING (SELECT * FROM {tmp} WHERE NOT __deleted) AS t ON {match} "
            "{update}WHEN NOT MATCHED THEN INSERT ({names}) VALUES ({values})"
        ).format(
            table=table,
            tmp=tmp,
            match=match,
            names=names,
            values=values,
            update=sql.SQL("WHEN MATCHED THEN UPDATE SET {} ").format(sets) if others else sql.SQL(""),
        )
        delete = sql.SQL("DELETE FROM {table} AS s USING {tmp} AS t WHERE t.__deleted AND {match}").format(
            table=table, tmp=tmp, match=match
        )
        return [delete, merge]

    # value tables -----------------------------------------------------------------

    def value_temp(self, arg: Arg) -> tuple[str, sql.Composed]:
        name = temp_name("value_", arg.index)
        cols = [Column(f"__g{g.index}", g.pg_type) for g in self.plan.group_keys]
        cols += [Column("__v", arg.pg_type), Column("__cnt", "bigint"), Column("__nulls", "integer")]
        return name, create_temp(name, cols)

    def write_values(self, arg: Arg, masks: list[int], *, fresh: bool) -> list[sql.Composed]:
        return [
            stmt
            for mask in (masks if not fresh else [0])
            for stmt in self._once(
                ("values", arg.index, mask, fresh), lambda m=mask: self._write_values(arg, [m], fresh=fresh)
            )
        ]

    def _write_values(self, arg: Arg, masks: list[int], *, fresh: bool) -> list[sql.Composed]:
        table = sql.Identifier(value_table(self.name, arg))
        tmp = sql.Identifier(temp_name("value_", arg.index))
        keys = [f"__g{g.index}" for g in self.plan.group_keys]
        names = column_names([*keys, "__v", "__cnt"])
        if fresh:
            return [sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {}").format(table, names, names, tmp)]
        out = []
        for mask in masks:
            on = _match("v", "d", keys, mask, also=sql.Composed([sql.SQL("v.__v = d.__v")]))
            out.append(
                sql.SQL(
                    "MERGE INTO {table} AS v USING (SELECT * FROM {tmp} WHERE __nulls = {mask}) AS d ON {on} "
                    "WHEN MATCHED AND v.__cnt + d.__cnt = 0 THEN DELETE "
                    "WHEN MATCHED THEN UPDATE SET __cnt = v.__cnt + d.__cnt "
                    "WHEN NOT MATCHED THEN INSERT ({names}) VALUES ({values})"
                ).format(
                    table=table,
                    tmp=tmp,
                    mask=sql.Literal(mask),
                    on=on,
                    names=names,
                    values=column_names([*keys, "__v", "__cnt"], prefix="d"),
                )
            )
        return out

    # the result -------------------------------------------------------------------

    def diff_temp(self) -> tuple[str, sql.Composed]:
        """Grouped: the change of each touched group's state; rows: the new rows."""
        name = temp_name("diff")
        if self.plan.aggregated:
            cols = [Column(f"__g{g.index}", g.pg_type) for g in self.plan.group_keys] + self.state.part_columns()
        else:
            cols = [c for c in self.projection_columns()]
        return name, create_temp(name, [*cols, Column("__nulls", "integer")])

    def deleted_temp(self) -> tuple[str, sql.Composed]:
        name = temp_name("deleted")
        return name, create_temp(name, [*self.key_types(), Column("__nulls", "integer")])

    def write_rows(self, masks_upsert: list[int], masks_delete: list[int], *, fresh: bool) -> list[sql.Composed]:
        """A query without GROUP BY: rows that left go, new and changed rows are written."""
        table, tmp = sql.Identifier(self.name), sql.Identifier(temp_name("diff"))
        cols = [c.name for c in self.projection_columns()]
        names = column_names(cols)
        if fresh:
            return [sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {}").format(table, names, names, tmp)]
        out: list[sql.Composed] = []
        deleted = sql.Identifier(temp_name("deleted"))
        for mask in masks_delete:
            out.append(
                sql.SQL("DELETE FROM {} AS p USING (SELECT * FROM {} WHERE __nulls = {}) AS d WHERE {}").format(
                    table, deleted, sql.Literal(mask), _match("p", "d", self.key_columns, mask)
                )
            )
        others = [c for c in cols if c not in self.key_columns]
        sets = sql.SQL(", ").join(sql.SQL("{c} = d.{c}").format(c=sql.Identifier(c)) for c in others)
        for mask in masks_upsert:
            out.append(
                sql.SQL(
                    "MERGE INTO {table} AS p USING (SELECT * FROM {tmp} WHERE __nulls = {mask}) AS d ON {on} "
                    "WHEN MATCHED THEN UPDATE SET {sets} WHEN NOT MATCHED THEN INSERT ({names}) VALUES ({values})"
                ).format(
                    table=table,
                    tmp=tmp,
                    mask=sql.Literal(mask),
                    on=_match("p", "d", self.key_columns, mask),
                    sets=sets,
                    names=names,
                    values=column_names(cols, prefix="d"),
                )
            )
        return out

    def write_groups(self, masks: list[int], *, fresh: bool) -> list[sql.Composed]:
        """A grouped query: each touched group's state plus its change; the outputs from that."""
        return [
            stmt
            for mask in masks
            for stmt in self._once(("groups", mask, fresh), lambda m=mask: self._write_groups([m], fresh=fresh))
        ]

    def _write_groups(self, masks: list[int], *, fresh: bool) -> list[sql.Composed]:
        keys = [f"__g{g.index}" for g in self.plan.group_keys]
        parts = [c.name for c in self.state.part_columns()]
        tmp = sql.Identifier(temp_name("diff"))
        target = groups_table(self.name) if self.having else self.name
        target_keys = keys if self.having else [g.column for g in self.plan.group_keys]
        out: list[sql.Composed] = []
        for mask in masks:
            source = sql.SQL("(SELECT * FROM {} WHERE __nulls = {}) AS d").format(tmp, sql.Literal(mask))
            on = _match("p", "d", target_keys, mask, source_keys=keys)
            added = {p: f"(p.{quote(p)} + d.{quote(p)})" for p in parts}
            inserted = {p: f"d.{quote(p)}" for p in parts}
            if self.having:
                update_cols, insert_cols = parts, [*keys, *parts]
                update_values = [added[p] for p in parts]
                insert_values = [f"d.{quote(k)}" for k in keys] + [inserted[p] for p in parts]
            else:
                outputs = self.output_columns()
                update_cols = parts + [c for c, _ in outputs]
                update_values = [added[p] for p in parts] + [
                    self.state.render(e, added.get, "d", mask) for _, e in outputs
                ]
                insert_cols = [*target_keys, *parts, *(c for c, _ in outputs)]
                insert_values = (
                    [f"d.{quote(k)}" for k in keys]
                    + [inserted[p] for p in parts]
                    + [self.state.render(e, inserted.get, "d", mask) for _, e in outputs]
                )
            delete = (
                sql.SQL("WHEN MATCHED AND p.__count + d.__count = 0 THEN DELETE ")
                if self.plan.group_keys
                else sql.SQL("")
            )
            if fresh:
                out.append(
                    sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {}").format(
                        sql.Identifier(target), column_names(insert_cols), sql.SQL(", ".join(insert_values)), source
                    )
                )
                continue
            out.append(
                sql.SQL(
                    "MERGE INTO {target} AS p USING {source} ON {on} {delete}"
                    "WHEN MATCHED THEN UPDATE SET {sets} WHEN NOT MATCHED THEN INSERT ({cols}) VALUES ({vals})"
                ).format(
                    target=sql.Identifier(target),
                    source=source,
                    on=on,
                    delete=delete,
                    sets=sql.SQL(", ").join(
                        sql.SQL("{} = {}").format(sql.Identifier(c), sql.SQL(v))  # type: ignore[arg-type]
                        for c, v in zip(update_cols, update_values, strict=True)
                    ),
                    cols=column_names(insert_cols),
                    vals=sql.SQL(", ".join(insert_values)),  # type: ignore[arg-type]
                )
            )
        if self.having:
            out += self.having_rows(masks)
        return out

    def having_rows(self, masks: list[int]) -> list[sql.Composed]:
        """With HAVING: the touched groups' result rows, rewritten from their state."""
        keys = [f"__g{g.index}" for g in self.plan.group_keys]
        table, tmp, groups = sql.Identifier(self.name), sql.Identifier(temp_name("diff")), groups_table(self.name)
        by_column = {g.column: g for g in self.plan.group_keys}
        cols = [c.name for c in self.projection_columns()]
        exprs = {o.name: o.expr for o in self.plan.outputs}
        out: list[sql.Composed] = []
        for mask in masks:
            source = sql.SQL("(SELECT * FROM {} WHERE __nulls = {}) AS d").format(tmp, sql.Literal(mask))
            out.append(
                sql.SQL("DELETE FROM {} AS p USING {} WHERE {}").format(
                    table, source, _match("p", "d", self.key_columns, mask, source_keys=keys)
                )
            )
            part = {c.name: f"g.{quote(c.name)}" for c in self.state.part_columns()}
            values = [
                f"g.{quote(f'__g{by_column[c].index}')}"
                if c in by_column
                else self.state.render(exprs[c], part.get, "g", mask)
                for c in cols
            ]
            having = self.state.render(self.plan.having, part.get, "g", mask)  # type: ignore[arg-type]
            out.append(
                sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} AS g JOIN {} ON {} WHERE {}").format(
                    table,
                    column_names(cols),
                    sql.SQL(", ".join(values)),
                    sql.Identifier(groups),
                    source,  # type: ignore[arg-type]
                    _match("g", "d", keys, mask),
                    sql.SQL(having),
                )
            )  # type: ignore[arg-type]
        return out

    def output_columns(self) -> list[tuple[str, exp.Expr]]:
        """Output columns that are not GROUP BY keys, with their expressions."""
        keys = {g.column for g in self.plan.group_keys}
        return [(o.name, o.expr) for o in self.plan.outputs if o.name not in keys]


def _match(
    target: str,
    source: str,
    keys: list[str],
    mask: int,
    also: sql.Composed | None = None,
    source_keys: list[str] | None = None,
) -> sql.Composed:
    """``target`` row matches ``source`` row on ``keys``: equality, or both NULL where the
    mask says the source's key is NULL (index-friendly: no IS NOT DISTINCT FROM)."""
    parts: list[sql.Composed] = []
    for n, (k, sk) in enumerate(zip(keys, source_keys or keys, strict=True)):
        if mask & (1 << n):
            parts.append(sql.SQL(target + ".{} IS NULL").format(sql.Identifier(k)))
        else:
            parts.append(sql.SQL(target + ".{} = " + source + ".{}").format(sql.Identifier(k), sql.Identifier(sk)))
    if also is not None:
        parts.append(also)
    return sql.SQL(" AND ").join(parts) if parts else sql.Composed([sql.SQL("TRUE")])
