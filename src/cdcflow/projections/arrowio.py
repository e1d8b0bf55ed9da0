"""Moving rows between the serving PostgreSQL and Arrow (hence DuckDB) with COPY.

Reads run ``COPY (query) TO STDOUT (FORMAT csv)`` and parse with pyarrow's CSV reader
into a schema made from the columns' PostgreSQL types (:mod:`.pgtypes`); writes render
Arrow as CSV and ``COPY ... FROM STDIN``. CSV keeps NULL (unquoted empty) apart from the
empty string (quoted), and numeric values travel as text, so ``numeric(18,2)`` stays
exact end to end. The connection's TimeZone must be
UTC (:func:`cdcflow.projections.base.open_connection` sets it).
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
from psycopg import sql

from cdcflow.errors import UncarriedValue


def read_arrow(
    conn: psycopg.Connection,
    query: sql.Composable,
    schema: pa.Schema,
    params: Mapping[str, Any] | Sequence[Any] | None = None,
) -> pa.Table:
    """The result of ``query`` (its columns in ``schema``'s order) as an Arrow table."""
    stmt = sql.SQL("COPY ({}) TO STDOUT (FORMAT csv)").format(query)
    buf = io.BytesIO()
    with conn.cursor() as cur:
        with cur.copy(stmt, params) as copy:
            for chunk in copy:
                buf.write(chunk)
    if buf.tell() == 0:
        return schema.empty_table()
    buf.seek(0)
    try:
        return _parse(buf, schema)
    except pa.ArrowInvalid as exc:
        raise uncarried(exc, schema) from None


def uncarried(exc: pa.ArrowInvalid, schema: pa.Schema) -> UncarriedValue:
    """The error of a value PostgreSQL holds that its column's Arrow type cannot: numeric
    NaN and ±Infinity, timestamps and dates at ±infinity or before year 1."""
    found = re.search(r"CSV column #(\d+)", str(exc))
    where = f"column {schema.names[int(found.group(1))]!r}" if found else "a column"
    detail = re.sub(r"^In CSV column #\d+: ", "", str(exc))
    return UncarriedValue(
        f"{where} holds a value the incremental engine cannot carry ({detail}): numeric NaN or Infinity, an "
        "infinite timestamp or date, or one before year 1 have no DuckDB form; change the value at the source "
        "or add '-- mode: full' to compute this projection in PostgreSQL"
    )


def _parse(buf: io.BytesIO, schema: pa.Schema) -> pa.Table:
    return pacsv.read_csv(
        buf,
        read_options=pacsv.ReadOptions(column_names=schema.names, block_size=64 << 20),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types={f.name: f.type for f in schema},
            # Only an unquoted empty field is NULL: not 'NULL', 'NaN', 'N/A' (pyarrow's default list).
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
            true_values=["t"],
            false_values=["f"],
        ),
    ).cast(schema)


def write_arrow(conn: psycopg.Connection, table: str, data: pa.Table, *, analyze: bool = True) -> int:
    """COPY ``data`` into ``table`` (columns by name). Returns the number of rows.

    ``analyze``: gather planner statistics afterwards, for a table that is then joined
    with another (a table only read whole into another one does not need them)."""
    if data.num_rows == 0:
        return 0
    for i, f in enumerate(data.schema):
        if pa.types.is_timestamp(f.type) and f.type.tz is not None:
            # The same UTC instants without the zone: rendered ~6x faster, read back as
            # UTC by the session (TimeZone = UTC).
            data = data.set_column(i, f.name, data.column(i).cast(pa.timestamp(f.type.unit)))
    out = io.BytesIO()
    pacsv.write_csv(data, out, write_options=pacsv.WriteOptions(include_header=False, quoting_style="all_valid"))
    cols = sql.SQL(", ").join(sql.Identifier(n) for n in data.schema.names)
    stmt = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(sql.Identifier(table), cols)
    with conn.cursor() as cur:
        with cur.copy(stmt) as copy:
            copy.write(out.getvalue())
        if analyze:
            # Planner statistics: without them a join with this (temporary) table may seq-scan
            # the big table it is joined with.
            cur.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))
    return data.num_rows
